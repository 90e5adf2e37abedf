//! The cgroup v2 freezer behind `static:cmd`'s `idle: freeze`: each backend runs in a cgroup of its own
//! below the daemon's (`<daemon cgroup>/proxygw-<daemon pid>-<target>`), which a drain freezes with `cgroup.freeze` and a
//! warm thaws. Unlike SIGSTOP/SIGCONT, the programs see no signal, and processes the backend forks are
//! frozen too even if they left its process group. Where there is no writable cgroup v2 hierarchy (cgroup
//! v1 only, a read-only `/sys/fs/cgroup`, a container without delegation) [`Cgroup::create`] fails and the
//! caller falls back to signals.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a freeze or thaw may take to be reported done in `cgroup.events`.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(2);
/// Poll interval of that wait.
const SETTLE_POLL: Duration = Duration::from_millis(2);

/// A backend's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dir: PathBuf,
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo` (`/sys/fs/cgroup`, or `…/unified` on hybrid hosts).
fn v2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split(' ').next()? != "cgroup2" {
            return None;
        }
        pre.split(' ').nth(4).map(PathBuf::from)
    })
}

/// This process's cgroup v2 path (the `0::` line of `/proc/self/cgroup`).
fn own_path() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_string())
}

impl Cgroup {
    /// Creates (or reuses) the cgroup for `target` below the daemon's own and checks it can be frozen.
    pub fn create(target: &str) -> Result<Self, String> {
        let mount = v2_mount().ok_or("no cgroup v2 hierarchy mounted")?;
        let own = own_path().ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
        // The daemon's pid in the name: daemons of other network namespaces may share its cgroup and their
        // target names.
        let dir = mount
            .join(own)
            .join(format!("proxygw-{}-{target}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let g = Cgroup { dir };
        if !g.file("cgroup.freeze").exists() {
            g.remove();
            return Err("cgroup.freeze not supported (kernel older than 5.2)".into());
        }
        Ok(g)
    }

    /// The directory (for [`process::SpawnOptions::cgroup`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Freezes (`true`) or thaws the cgroup and waits until the kernel reports it done, at most
    /// [`SETTLE_LIMIT`].
    pub async fn set_frozen(&self, frozen: bool) -> Result<(), String> {
        let freeze = self.file("cgroup.freeze");
        std::fs::write(&freeze, if frozen { "1" } else { "0" })
            .map_err(|e| format!("write {}: {e}", freeze.display()))?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let events = self.file("cgroup.events");
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        loop {
            let text = std::fs::read_to_string(&events)
                .map_err(|e| format!("read {}: {e}", events.display()))?;
            if text.lines().any(|l| l == want) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} not {want:?} within {SETTLE_LIMIT:?}",
                    events.display()
                ));
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Removes the cgroup once it is empty (best effort: a cgroup with processes left stays).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
