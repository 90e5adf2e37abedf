//! One daemon per nftables table and network namespace, enforced before any kernel state is touched.
//!
//! The table name is per network namespace, so the lock is too: its file in the runtime directory is named after
//! the namespace's inode and the table. The lock is an `flock`, which the kernel drops when the holder dies (even
//! on `kill -9`), so a crash never leaves a stale lock; the file's contents only describe the holder for the
//! refusal message of the next daemon.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The runtime directory when systemd does not name one (`RuntimeDirectory=` sets `$RUNTIME_DIRECTORY`).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/proxygw";

/// Why this daemon may not run.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another daemon holds the lock.
    #[error("another proxygw is running in this network namespace ({holder}); lock {}", lock.display())]
    Held {
        /// What the holder wrote about itself.
        holder: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The runtime directory or lock file could not be used.
    #[error("{what} {}: {err}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        err: std::io::Error,
    },
}

/// The runtime directory: `$RUNTIME_DIRECTORY` (its first entry) if set, else [`DEFAULT_RUNTIME_DIR`].
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("RUNTIME_DIRECTORY") {
        Some(v) if !v.is_empty() => {
            let s = v.to_string_lossy().into_owned();
            PathBuf::from(s.split(':').next().unwrap_or(&s))
        }
        _ => PathBuf::from(DEFAULT_RUNTIME_DIR),
    }
}

/// `net<inode>-<table>`: names this daemon's files in the runtime directory.
pub fn instance_key(table: &str) -> Result<String, InstanceError> {
    let ns = Path::new("/proc/self/ns/net");
    let meta = std::fs::metadata(ns).map_err(|err| InstanceError::Io {
        what: "read network namespace",
        path: ns.into(),
        err,
    })?;
    Ok(format!("net{}-{table}", meta.ino()))
}

/// The held lock; dropping it (or dying) releases it.
#[derive(Debug)]
pub struct InstanceLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock for `table` in `dir` (created 0700 if missing), recording this process, `socket` and `table`;
    /// fails with [`InstanceError::Held`] naming the holder if another daemon has it.
    pub fn acquire(dir: &Path, table: &str, socket: Option<&Path>) -> Result<Self, InstanceError> {
        create_dir(dir)?;
        let path = dir.join(format!("{}.lock", instance_key(table)?));
        let io = |what, err| InstanceError::Io {
            what,
            path: path.clone(),
            err,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("open lock", e))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(InstanceError::Held {
                    holder: if holder.is_empty() {
                        "holder unknown".into()
                    } else {
                        holder.into()
                    },
                    lock: path,
                });
            }
            Err((_, e)) => return Err(io("lock", e.into())),
        };
        let socket = socket.map_or_else(|| "none".into(), |s| s.display().to_string());
        let about = format!(
            "pid {}, ctl socket {socket}, table inet {table}\n",
            std::process::id()
        );
        lock.set_len(0).map_err(|e| io("write lock", e))?;
        lock.rewind().map_err(|e| io("write lock", e))?;
        lock.write_all(about.as_bytes())
            .map_err(|e| io("write lock", e))?;
        Ok(Self { _lock: lock, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `dir` (mode 0700) and its parents if missing.
pub fn create_dir(dir: &Path) -> Result<(), InstanceError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| InstanceError::Io {
            what: "create runtime directory",
            path: dir.into(),
            err,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let sock = Path::new("/run/x.sock");
        let first = InstanceLock::acquire(dir.path(), "t1", Some(sock)).unwrap();
        let e = InstanceLock::acquire(dir.path(), "t1", None)
            .unwrap_err()
            .to_string();
        let pid = std::process::id();
        assert!(
            e.starts_with(&format!(
                "another proxygw is running in this network namespace (pid {pid}, ctl socket /run/x.sock, table inet t1); lock "
            )),
            "{e}"
        );
        // Another table is another instance.
        let other = InstanceLock::acquire(dir.path(), "t2", None).unwrap();
        drop(first);
        let again = InstanceLock::acquire(dir.path(), "t1", None).unwrap();
        assert!(again
            .path()
            .ends_with(format!("{}.lock", instance_key("t1").unwrap())));
        drop((other, again));
    }
}
