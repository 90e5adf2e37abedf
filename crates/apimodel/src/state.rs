//! Saving and loading the model (`STATE_DIR`), so a restart neither relearns nor re-reports.
//!
//! The file is JSON with a format tag and the app name; a file that does not parse, has another
//! format or version, or belongs to another app is reported by the caller and ignored. Writes go
//! to a temporary file renamed over the old one, so a crash never leaves half a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Model, Route};

/// The format tag of a state file.
pub const FORMAT: &str = "waygate-apimodel";
/// The current version.
pub const VERSION: u32 = 1;
/// The file name inside `STATE_DIR`.
pub const FILE_NAME: &str = "apimodel.json";

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: String,
    version: u32,
    app_name: String,
    routes: Vec<Route>,
}

/// Why a state file was not used or not written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a state file of this format.
    #[error("{path}: not a {FORMAT} state file: {reason}")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The state file of `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

impl Model {
    /// Writes the model to `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let file = path(dir);
        let state = StateFile {
            format: FORMAT.to_owned(),
            version: VERSION,
            app_name: self.options().app_name.clone(),
            routes: self.snapshot(),
        };
        let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
        let io = |source| StateError::Io {
            path: file.clone(),
            source,
        };
        let bytes = serde_json::to_vec(&state).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &file).map_err(io)?;
        Ok(())
    }

    /// Loads `dir`'s state file into the model. `Ok(None)` when there is none; the number of
    /// routes loaded otherwise.
    pub fn load(&self, dir: &Path) -> Result<Option<usize>, StateError> {
        let file = path(dir);
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path: file, source }),
        };
        let foreign = |reason: String| StateError::Foreign {
            path: file.clone(),
            reason,
        };
        let state: StateFile =
            serde_json::from_slice(&bytes).map_err(|e| foreign(e.to_string()))?;
        if state.format != FORMAT || state.version != VERSION {
            return Err(foreign(format!(
                "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                state.format, state.version
            )));
        }
        if state.app_name != self.options().app_name {
            return Err(foreign(format!(
                "saved for APP_NAME {:?}, this is {:?}",
                state.app_name,
                self.options().app_name
            )));
        }
        let n = state.routes.len();
        self.restore(state.routes);
        Ok(Some(n))
    }
}
