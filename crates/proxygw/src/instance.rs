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

/// Set by the first [`InstanceLock::acquire`]: where this instance records its backends.
static BACKENDS_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The directory of this instance's backend records; `None` in a process that holds no instance lock (the
/// engine embedded in tests), which then neither records nor reclaims backends.
pub fn backends_dir() -> Option<PathBuf> {
    BACKENDS_DIR.get().cloned()
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
        // Only the lock holder may act on backend records: they are the records of this very instance.
        let _ = BACKENDS_DIR.set(dir.join(format!("{}.backends", instance_key(table)?)));
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

    #[test]
    fn a_backend_record_matches_only_the_process_it_was_written_for() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let me = std::process::id();
        backends::record(dir, "a b/c", me).unwrap();
        assert!(backends::record_path(dir, "a b/c").ends_with("a%20b%2fc"));
        assert_eq!(backends::left_running(dir, "a b/c"), Some(me));
        // Same pid, another start time: a reused pid, never reported (and the stale record goes).
        let path = backends::record_path(dir, "a b/c");
        let started = backends::start_time(me).unwrap();
        std::fs::write(&path, format!("{me} {}\n", started + 1)).unwrap();
        assert_eq!(backends::left_running(dir, "a b/c"), None);
        assert!(!path.exists());
        backends::record(dir, "x", me).unwrap();
        backends::forget_if(dir, "x", me + 1);
        assert_eq!(backends::left_running(dir, "x"), Some(me));
        backends::forget_if(dir, "x", me);
        assert_eq!(backends::left_running(dir, "x"), None);
    }
}

/// Backends a daemon started, recorded in the runtime directory as `pid start-time` so that the next daemon can
/// stop one left running by a predecessor that died without stopping it. The start time (field 22 of
/// `/proc/<pid>/stat`, clock ticks since boot) tells a reused pid apart: a record whose pid now belongs to a
/// process started at another time is stale and only deleted.
pub mod backends {
    use std::path::{Path, PathBuf};

    use super::InstanceError;

    /// The record file of `target`: `<dir>/<target, %-escaped>`; `dir` is [`super::backends_dir`].
    pub fn record_path(dir: &Path, target: &str) -> PathBuf {
        let mut name = String::with_capacity(target.len());
        for b in target.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("%{b:02x}"));
            }
        }
        dir.join(name)
    }

    /// Start time of `pid` in clock ticks since boot, `None` if there is no such process.
    pub fn start_time(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // comm (field 2) may hold spaces and parentheses; the fields after its last ')' start at field 3.
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_ascii_whitespace().nth(19)?.parse().ok()
    }

    /// Records `pid` (a process-group leader) as `target`'s running backend.
    pub fn record(dir: &Path, target: &str, pid: u32) -> Result<(), InstanceError> {
        let path = record_path(dir, target);
        if let Some(dir) = path.parent() {
            super::create_dir(dir)?;
        }
        let io = |err| InstanceError::Io {
            what: "write backend record",
            path: path.clone(),
            err,
        };
        let started = start_time(pid).ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
        std::fs::write(&path, format!("{pid} {started}\n")).map_err(io)
    }

    /// The pid of `target`'s backend left by a previous daemon, if that very process still runs; a record of
    /// a process that is gone (or whose pid was reused) is deleted.
    pub fn left_running(dir: &Path, target: &str) -> Option<u32> {
        let path = record_path(dir, target);
        let text = std::fs::read_to_string(&path).ok()?;
        let mut it = text.split_ascii_whitespace();
        let parsed = (|| {
            Some((
                it.next()?.parse::<u32>().ok()?,
                it.next()?.parse::<u64>().ok()?,
            ))
        })();
        let alive = match parsed {
            Some((pid, started)) if pid > 1 => match start_time(pid) {
                Some(t) => (t == started).then_some(pid),
                // The leader is gone (a kill -9'd daemon's SIGKILL reached only it), but processes it forked
                // may still hold its group; the kernel reuses no pid while a group still carries it.
                None => process::ProcessGroup::new(pid).is_alive().then_some(pid),
            },
            _ => None,
        };
        if alive.is_none() {
            let _ = std::fs::remove_file(&path);
        }
        alive
    }

    /// Deletes `target`'s record if it still names `pid` (a newer backend's record is kept).
    pub fn forget_if(dir: &Path, target: &str, pid: u32) {
        let path = record_path(dir, target);
        let named = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.split_ascii_whitespace().next()?.parse::<u32>().ok());
        if named == Some(pid) {
            let _ = std::fs::remove_file(path);
        }
    }
}
