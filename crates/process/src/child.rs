//! Launching a child in its own process group and stopping that whole group.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep, timeout, Instant};

/// How long `stop` waits for the direct child after SIGKILL before giving up.
/// SIGKILL cannot be caught, so only a process stuck in uninterruptible sleep takes longer.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often `stop` checks whether the process group has emptied.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// How often [`Child::wait_group`] checks for leftover group members once the direct child has exited.
pub const GROUP_WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Where one of the child's standard streams goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stdio {
    /// Share the parent's stream (cwproxy: child output interleaves with the JSON lines).
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// A pipe the caller reads with [`Child::take_stdout`] / [`Child::take_stderr`] (gateway daemon log), or
    /// for stdin writes through [`Child::take_stdin`] (the gateway's `exec:` target requests).
    Piped,
    /// The parent's stderr (for the child's stdout: cwproxy keeps its own stdout to JSON lines).
    ParentStderr,
}

impl Stdio {
    fn to_std(self) -> io::Result<std::process::Stdio> {
        Ok(match self {
            Stdio::Inherit => std::process::Stdio::inherit(),
            Stdio::Null => std::process::Stdio::null(),
            Stdio::Piped => std::process::Stdio::piped(),
            Stdio::ParentStderr => {
                use std::os::fd::AsFd;
                std::io::stderr().as_fd().try_clone_to_owned()?.into()
            }
        })
    }
}

/// Options for [`Child::spawn`]; the default inherits everything from the parent.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// Child stdin.
    pub stdin: Stdio,
    /// Child stdout.
    pub stdout: Stdio,
    /// Child stderr.
    pub stderr: Stdio,
    /// Variables added to (or overriding) the inherited environment.
    pub envs: Vec<(OsString, OsString)>,
    /// Working directory; `None` keeps the parent's.
    pub current_dir: Option<PathBuf>,
    /// Linux: make this process a child subreaper (process-wide and permanent) and treat every other child
    /// process of it as part of this child's tree, so daemons that double-fork and `setsid` out of the
    /// group are still detected, signalled, stopped and reaped. Only for a process that supervises this
    /// one child (cwproxy). Ignored on other platforms.
    pub adopt_orphans: bool,
    /// Linux: the signal the kernel sends the child when the thread that spawned it dies, even by `kill -9`
    /// (`PR_SET_PDEATHSIG`), so a supervised child cannot outlive its supervisor. It reaches the child process
    /// only, not the rest of its group; spawn from a thread that lives as long as the supervisor (a tokio
    /// worker, not a blocking-pool thread). Ignored on other platforms.
    pub parent_death_signal: Option<Signal>,
    /// Linux: a cgroup v2 directory the child joins before it runs its program, so everything it forks is
    /// in that cgroup too (the gateway freezes a whole backend with `cgroup.freeze`). Ignored elsewhere.
    pub cgroup: Option<PathBuf>,
}

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Code(i32),
    /// It was terminated by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// True for `Code(0)`.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The code a supervising parent should exit with: the child's code, or 128+N for signal N (shell convention).
    pub fn exit_code_for_parent(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(n) => 128 + n,
        }
    }

    fn from_std(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            // Stopped/continued statuses are never returned by wait(); map defensively to a failure code.
            (None, None) => ExitStatus::Code(1),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(n) => match Signal::try_from(n) {
                Ok(sig) => write!(f, "signal {n} ({})", sig.as_str()),
                Err(_) => write!(f, "signal {n}"),
            },
        }
    }
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The command string was empty or only whitespace.
    #[error("target command is required")]
    EmptyCommand,
    /// `adopt_orphans` was asked for but `prctl(PR_SET_CHILD_SUBREAPER)` failed.
    #[error("become child subreaper for {command:?}: {source}")]
    Subreaper {
        /// The command as given.
        command: String,
        /// The OS error.
        source: io::Error,
    },
    /// The OS refused to start it (not found on PATH, not executable, ...).
    #[error("start {command:?}: {source}")]
    Start {
        /// The command as given.
        command: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Why stopping a child failed.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// Waiting for the child failed.
    #[error("wait for {command:?} (pid {pid}): {source}")]
    Wait {
        /// The command as given.
        command: String,
        /// The child's pid.
        pid: u32,
        /// The OS error.
        source: io::Error,
    },
    /// The child survived SIGKILL for [`KILL_WAIT`].
    #[error("timed out waiting for {command:?} (pid {pid}) to exit after SIGKILL")]
    KillTimeout {
        /// The command as given.
        command: String,
        /// The child's pid.
        pid: u32,
    },
}

/// A copyable handle on a child's process group (pgid = the child's pid), for signalling from other tasks.
///
/// From [`Child::group`] with `adopt_orphans`, it also covers the processes this process adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroup {
    pgid: u32,
    adopt: bool,
}

impl ProcessGroup {
    /// Handle on an existing process group.
    pub fn new(pgid: u32) -> Self {
        ProcessGroup { pgid, adopt: false }
    }

    /// The process-group id.
    pub fn id(self) -> u32 {
        self.pgid
    }

    /// Send `sig` to every process in the group (and adopted processes). An empty group is not an error.
    pub fn signal(self, sig: Signal) -> io::Result<()> {
        let result = match killpg(self.nix_pid()?, sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        };
        if self.adopt {
            signal_adopted(self.pgid, sig);
        }
        result
    }

    /// True while some process (zombies excluded where the OS lets us tell) is still in the group, or
    /// adopted. Reaps adopted processes that have exited.
    pub fn is_alive(self) -> bool {
        let Ok(pid) = self.nix_pid() else {
            return false;
        };
        let in_group = match killpg(pid, None) {
            Err(Errno::ESRCH) => false,
            // EPERM means a member exists that we may not signal; it is alive all the same.
            Ok(()) | Err(_) => has_live_member(self.pgid),
        };
        in_group || (self.adopt && adopted_alive(self.pgid))
    }

    fn nix_pid(self) -> io::Result<Pid> {
        // pgid 0 or 1 would address our own group or every process; never let that through.
        match i32::try_from(self.pgid) {
            Ok(p) if p > 1 => Ok(Pid::from_raw(p)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("refusing to signal process group {}", self.pgid),
            )),
        }
    }
}

#[cfg(target_os = "linux")]
fn has_live_member(pgid: u32) -> bool {
    // kill(-pgid, 0) also succeeds for zombies, which an init that does not reap would keep forever.
    crate::linux::group_has_live_member(pgid).unwrap_or(true)
}

#[cfg(not(target_os = "linux"))]
fn has_live_member(_pgid: u32) -> bool {
    true
}

/// Signal every adopted process (they left the group, so `killpg` misses them).
#[cfg(target_os = "linux")]
fn signal_adopted(direct: u32, sig: Signal) {
    if let Ok((live, zombies)) = crate::linux::adopted(direct) {
        crate::linux::reap(&zombies);
        for pid in live {
            if let Ok(p) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), sig);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn signal_adopted(_direct: u32, _sig: Signal) {}

/// True while an adopted process lives; reaps the adopted ones that exited.
#[cfg(target_os = "linux")]
fn adopted_alive(direct: u32) -> bool {
    match crate::linux::adopted(direct) {
        Ok((live, zombies)) => {
            crate::linux::reap(&zombies);
            !live.is_empty()
        }
        Err(_) => false,
    }
}

#[cfg(not(target_os = "linux"))]
fn adopted_alive(_direct: u32) -> bool {
    false
}

/// A running child process placed in its own process group.
///
/// Dropping a `Child` without [`Child::stop`] sends SIGKILL to its process group (best effort: errors are
/// ignored, and tokio reaps the direct child in the background). Call `stop` for an orderly shutdown.
pub struct Child {
    inner: tokio::process::Child,
    pid: u32,
    command: String,
    status: Option<ExitStatus>,
    /// Set once `stop` has seen the group empty, so `Drop` does not signal a pgid the kernel may reuse.
    group_reaped: bool,
    /// `SpawnOptions::adopt_orphans` was set (and this is Linux).
    adopt: bool,
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.pid)
            .field("command", &self.command)
            .field("status", &self.status)
            .finish()
    }
}

impl Child {
    /// Start `command` (resolved via `PATH`) with `args`, in a new process group whose id is the child's pid.
    /// Must be called inside a tokio runtime (its signal driver reaps the child).
    pub fn spawn(
        command: &OsStr,
        args: &[OsString],
        opts: &SpawnOptions,
    ) -> Result<Child, SpawnError> {
        let display = command.to_string_lossy().trim().to_owned();
        if display.is_empty() {
            return Err(SpawnError::EmptyCommand);
        }
        // The original trims argv[1]; only a UTF-8 name can be trimmed without guessing at its encoding.
        let program = command.to_str().map_or(command, |s| OsStr::new(s.trim()));
        let start_error = |source| SpawnError::Start {
            command: display.clone(),
            source,
        };
        let stdin = opts.stdin.to_std().map_err(start_error)?;
        let stdout = opts.stdout.to_std().map_err(start_error)?;
        let stderr = opts.stderr.to_std().map_err(start_error)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(opts.envs.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        if let Some(dir) = &opts.current_dir {
            cmd.current_dir(dir);
        }
        #[cfg(target_os = "linux")]
        if let Some(sig) = opts.parent_death_signal {
            let parent = std::process::id();
            // SAFETY: between fork and exec this runs only prctl and getppid, both async-signal-safe, and
            // allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::prctl::set_pdeathsig(sig).map_err(io::Error::from)?;
                    // A parent that died before the prctl would never send the signal.
                    if std::os::unix::process::parent_id() != parent {
                        return Err(io::Error::other("parent exited during spawn"));
                    }
                    Ok(())
                });
            }
        }
        #[cfg(target_os = "linux")]
        if let Some(dir) = &opts.cgroup {
            use std::io::Write as _;
            let procs = dir.join("cgroup.procs");
            // Opened here (close-on-exec), written in the child: "0" moves the writer, before it can fork.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(|e| {
                    start_error(io::Error::other(format!(
                        "join cgroup {}: {e}",
                        procs.display()
                    )))
                })?;
            // SAFETY: between fork and exec this runs only write(2) on an fd opened before the fork, which is
            // async-signal-safe, and allocates nothing.
            unsafe {
                cmd.pre_exec(move || (&file).write_all(b"0"));
            }
        }
        let adopt = opts.adopt_orphans && cfg!(target_os = "linux");
        #[cfg(target_os = "linux")]
        if adopt {
            crate::linux::become_subreaper().map_err(|source| SpawnError::Subreaper {
                command: display.clone(),
                source,
            })?;
        }
        let inner = cmd.spawn().map_err(|source| SpawnError::Start {
            command: display.clone(),
            source,
        })?;
        let Some(pid) = inner.id() else {
            // tokio returns no id only after the child was reaped, which cannot have happened yet.
            return Err(SpawnError::Start {
                command: display,
                source: io::Error::other("child has no pid right after spawn"),
            });
        };
        Ok(Child {
            inner,
            pid,
            command: display,
            status: None,
            group_reaped: false,
            adopt,
        })
    }

    /// The child's pid (also its process-group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command as given to `spawn` (for messages).
    pub fn command(&self) -> &str {
        &self.command
    }

    /// A copyable handle on the child's process group (including adopted processes with `adopt_orphans`).
    pub fn group(&self) -> ProcessGroup {
        ProcessGroup {
            pgid: self.pid,
            adopt: self.adopt,
        }
    }

    /// The processes port discovery looks at for this child.
    pub(crate) fn scope(&self) -> crate::ports::Scope {
        crate::ports::Scope {
            root: self.pid,
            group: Some(self.pid),
            adopter: self.adopt.then(std::process::id),
        }
    }

    /// Send `sig` to the child's whole process group.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        self.group().signal(sig)
    }

    /// The exit status if the direct child has already been reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Take the write end of the child's stdin pipe (only with [`Stdio::Piped`]); dropping it closes the
    /// child's stdin.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.inner.stdin.take()
    }

    /// Take the read end of the child's stdout pipe (only with [`Stdio::Piped`]).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.inner.stdout.take()
    }

    /// Take the read end of the child's stderr pipe (only with [`Stdio::Piped`]).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.inner.stderr.take()
    }

    /// Wait for the direct child to exit. Cancel-safe; may be called again after it returns.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = ExitStatus::from_std(self.inner.wait().await?);
        self.status = Some(status);
        Ok(status)
    }

    /// Wait for the direct child, then until no live process is left in its group; returns the direct child's
    /// status. Use this to supervise a launcher that forks the real server and exits 0. Cancel-safe.
    pub async fn wait_group(&mut self) -> io::Result<ExitStatus> {
        let status = self.wait().await?;
        while self.group().is_alive() {
            sleep(GROUP_WATCH_INTERVAL).await;
        }
        Ok(status)
    }

    /// The exit status if the direct child has exited, without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.inner.try_wait()?.map(ExitStatus::from_std);
        }
        Ok(self.status)
    }

    /// SIGTERM to the group, then SIGKILL to the group once `grace` has passed; returns the direct child's status.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus, StopError> {
        self.stop_with(Signal::SIGTERM, grace).await
    }

    /// Like [`Child::stop`] with another first signal (the gateway's `static:cmd` drains with SIGINT).
    ///
    /// Returns when the direct child is reaped and no live process is left in its group, so nothing the
    /// child started in its group (background jobs, launcher-forked servers) outlives the call.
    pub async fn stop_with(
        &mut self,
        first: Signal,
        grace: Duration,
    ) -> Result<ExitStatus, StopError> {
        let group = self.group();
        let deadline = Instant::now() + grace;
        if self.status.is_none() || group.is_alive() {
            // A failure here means the group is gone or not ours; the SIGKILL path below still runs.
            let _ = group.signal(first);
        }
        let done_in_grace = self.wait_group_until(deadline).await?;
        if !done_in_grace {
            let _ = group.signal(Signal::SIGKILL);
            let status = match timeout(KILL_WAIT, self.wait()).await {
                Ok(r) => r.map_err(|source| self.wait_error(source))?,
                Err(_) => {
                    return Err(StopError::KillTimeout {
                        command: self.command.clone(),
                        pid: self.pid,
                    })
                }
            };
            // Members killed by SIGKILL vanish at once unless stuck in the kernel; don't wait forever for those.
            let until = Instant::now() + Duration::from_secs(1);
            while group.is_alive() && Instant::now() < until {
                sleep(GROUP_POLL).await;
            }
            self.group_reaped = !group.is_alive();
            return Ok(status);
        }
        self.group_reaped = true;
        self.wait().await.map_err(|source| self.wait_error(source))
    }

    /// Wait until the direct child is reaped and the group is empty, or `deadline`; true if both happened.
    async fn wait_group_until(&mut self, deadline: Instant) -> Result<bool, StopError> {
        if self.status.is_none() {
            match tokio::time::timeout_at(deadline, self.wait()).await {
                Ok(r) => {
                    r.map_err(|source| self.wait_error(source))?;
                }
                Err(_) => return Ok(false),
            }
        }
        let group = self.group();
        loop {
            if !group.is_alive() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            sleep(GROUP_POLL.min(deadline - Instant::now())).await;
        }
    }

    fn wait_error(&self, source: io::Error) -> StopError {
        StopError::Wait {
            command: self.command.clone(),
            pid: self.pid,
            source,
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.group_reaped {
            let _ = self.group().signal(Signal::SIGKILL);
        }
    }
}
