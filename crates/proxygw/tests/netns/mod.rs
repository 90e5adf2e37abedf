//! Network-namespace fixtures for the kernel tests: client ⇄ gateway ⇄ backend over veth (IPv4 + IPv6), a
//! backend that reports the peer it sees, and the daemon as a child process. Everything is removed on drop,
//! also when the test panics. Needs root, `ip`, `nft`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proxygw::protocol::{Codec, StatusResponse};

pub const GW4: &str = "10.99.1.1";
pub const CLIENT4: &str = "10.99.1.2";
pub const GW4_BACK: &str = "10.99.2.1";
pub const BACKEND4: &str = "10.99.2.2";
pub const GW6: &str = "fd99:1::1";
pub const CLIENT6: &str = "fd99:1::2";
pub const BACKEND6: &str = "fd99:2::2";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// True when this process may create namespaces (root with the tools). Without them the tests fail, unless
/// `PROXYGW_SKIP_KERNEL_TESTS=1` asks to skip them (developer machines without root).
pub fn can_run() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective uid.
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let tools = ["ip", "nft"]
        .iter()
        .all(|t| Command::new(t).arg("-V").output().is_ok());
    if root && tools {
        return true;
    }
    if std::env::var_os("PROXYGW_SKIP_KERNEL_TESTS").is_some() {
        eprintln!("SKIPPED: kernel tests need root, ip and nft");
        return false;
    }
    panic!("kernel tests need root, ip and nft (set PROXYGW_SKIP_KERNEL_TESTS=1 to skip them)");
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output of a command run inside `ns`.
pub fn ns_output(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A test's config file, ctl socket and daemon log in a temporary directory (removed on drop).
pub struct Env {
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
}

/// Writes a config of `body` (targets and frontends; it may begin with more `plugins:` entries, indented two
/// spaces) after a header with DEBUG logging and the ctl plugin on a JSON socket in the directory.
pub fn env(body: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let cfg = dir.path().join("proxygw.yaml");
    let log = dir.path().join("proxygw.log");
    let text = format!(
        "version: v1\nlog:\n  output: stderr\n  level: DEBUG\nplugins:\n  ctl:\n    socket: {}\n    codec: json\n{body}",
        sock.display()
    );
    std::fs::write(&cfg, text).unwrap();
    Env {
        dir,
        cfg,
        sock,
        log,
    }
}

/// Starts the daemon of `e` in the gateway namespace and waits until every frontend listens.
pub fn start_daemon(t: &Topo, e: &Env) -> Daemon {
    let d = Daemon::start(&t.gw, &e.cfg, &e.log);
    wait_ready(&d, &e.sock, Duration::from_secs(10));
    d
}

/// Three namespaces joined by veth pairs; removed on drop.
pub struct Topo {
    pub client: String,
    pub gw: String,
    pub backend: String,
}

impl Topo {
    pub fn new() -> Self {
        let id = format!(
            "pgw{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        // The guard exists before the first namespace, so a failing step still deletes what was made.
        let t = Topo {
            client: format!("{id}c"),
            gw: format!("{id}g"),
            backend: format!("{id}b"),
        };
        for ns in [&t.client, &t.gw, &t.backend] {
            run(&["ip", "netns", "add", ns]);
        }
        let (c, g, b) = (t.client.as_str(), t.gw.as_str(), t.backend.as_str());
        run(&[
            "ip", "-n", g, "link", "add", "g0", "type", "veth", "peer", "name", "c0", "netns", c,
        ]);
        run(&[
            "ip", "-n", g, "link", "add", "g1", "type", "veth", "peer", "name", "b0", "netns", b,
        ]);
        for (ns, dev, a4, a6) in [
            (g, "g0", "10.99.1.1/24", "fd99:1::1/64"),
            (g, "g1", "10.99.2.1/24", "fd99:2::1/64"),
            (c, "c0", "10.99.1.2/24", "fd99:1::2/64"),
            (b, "b0", "10.99.2.2/24", "fd99:2::2/64"),
        ] {
            run(&["ip", "-n", ns, "addr", "add", a4, "dev", dev]);
            run(&["ip", "-n", ns, "addr", "add", a6, "dev", dev, "nodad"]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run(&["ip", "-n", c, "route", "add", "default", "via", GW4]);
        run(&["ip", "-n", c, "-6", "route", "add", "default", "via", GW6]);
        run(&["ip", "-n", b, "route", "add", "default", "via", GW4_BACK]);
        run(&[
            "ip",
            "-n",
            b,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd99:2::1",
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            g,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            g,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.forwarding=1",
        ]);
        t
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.client, &self.gw, &self.backend] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (sockets it creates stay in `ns`).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A TCP server in a namespace that answers `peer=<addr it sees>`; `/hold` keeps the connection open until the
/// client closes it.
pub struct Backend {
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    pub fn start(ns: &str, addr: &str) -> Self {
        let addr: SocketAddr = addr.parse().unwrap();
        let l = in_ns(ns, move || TcpListener::bind(addr).unwrap());
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, peer)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        let s = s.clone();
                        std::thread::spawn(move || serve(c, peer, s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Backend {
            stop,
            accepted,
            thread: Some(thread),
        }
    }
}

fn serve(mut c: TcpStream, peer: SocketAddr, stop: Arc<AtomicBool>) {
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
    }
    let hold = head.starts_with(b"GET /hold");
    let _ = c
        .write_all(format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npeer={peer}\n").as_bytes());
    if hold {
        // Until the client closes (bounded, so nothing outlives the test by much).
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            if let Ok(0) = c.read(&mut buf) {
                break;
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from namespace `ns`.
pub fn connect(ns: &str, addr: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = in_ns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// `GET path` from namespace `ns`; returns the whole response (read to EOF).
pub fn get(ns: &str, addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = connect(ns, addr)?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Reads until `needle` shows up (bounded by the socket's read timeout).
pub fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n = s.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "read before {needle:?}: {e} (got {:?})",
                String::from_utf8_lossy(&out)
            )
        });
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The daemon running in the gateway namespace; SIGKILLed on drop if still running.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(gw: &str, config: &Path, log: &Path) -> Self {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        // The runtime directory (instance lock, backend records) sits next to the config, so daemons of one
        // test share it and tests do not leave files in /run.
        let run_dir = config.parent().unwrap().join("run");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                gw,
                env!("CARGO_BIN_EXE_proxygw"),
                "--config",
            ])
            .arg(config)
            .env("RUNTIME_DIRECTORY", run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Daemon {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for exit (bounded); returns the exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One status request over the ctl socket.
pub fn status(sock: &Path) -> Result<StatusResponse, String> {
    block_on(async {
        let mut c =
            proxygw::client::Client::dial(sock, Codec::Json, Duration::from_secs(5)).await?;
        c.status().await
    })
}

/// Warm through ctl.
pub fn warm(sock: &Path, target: &str) {
    block_on(async {
        let mut c = proxygw::client::Client::dial(sock, Codec::Json, Duration::from_secs(5))
            .await
            .unwrap();
        c.warm(target).await.unwrap();
    })
}

/// State of a target, or "" while the daemon is not answering yet.
pub fn state(sock: &Path, target: &str) -> String {
    status(sock)
        .ok()
        .and_then(|s| s.targets.into_iter().find(|t| t.name == target))
        .map(|t| t.state)
        .unwrap_or_default()
}

/// Polls until the target reaches `want`; panics after `limit` with the daemon log.
pub fn wait_state(d: &Daemon, sock: &Path, target: &str, want: &str, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if state(sock, target) == want {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "target {target} not {want} within {limit:?}; status {:?}\nlog:\n{}",
            status(sock),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Polls until the daemon is up and every frontend is listening; panics after `limit` with the log.
///
/// A target is `inactive` from the moment it is registered, but its frontends bind in the
/// background: a client that connects on the target's state alone can meet a refused port.
pub fn wait_ready(d: &Daemon, sock: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let st = status(sock);
        if let Ok(s) = &st {
            if !s.frontends.is_empty() && s.frontends.iter().all(|f| f.state == "running") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "frontends not all running within {limit:?}; status {st:?}\nlog:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Count of `inet proxygw` tables in a namespace.
pub fn proxygw_tables(ns: &str) -> usize {
    ns_output(ns, &["nft", "list", "tables"])
        .lines()
        .filter(|l| l.trim() == "table inet proxygw")
        .count()
}

/// A UDP server in a namespace that counts datagrams and answers `peer=<addr>`.
pub struct UdpBackend {
    stop: Arc<AtomicBool>,
    pub received: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpBackend {
    pub fn start(ns: &str, addr: &str) -> Self {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = in_ns(ns, move || std::net::UdpSocket::bind(addr).unwrap());
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let (st, r) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = s.recv_from(&mut buf) {
                    r.fetch_add(1, Ordering::SeqCst);
                    let _ = s.send_to(format!("peer={peer}").as_bytes(), peer);
                }
            }
        });
        UdpBackend {
            stop,
            received,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client that keeps sending from one UDP source port (one conntrack 5-tuple) every 50 ms.
pub struct UdpPinger {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpPinger {
    pub fn start(ns: &str, to: &str) -> Self {
        let to: SocketAddr = to.parse().unwrap();
        let s = in_ns(ns, || std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let _ = s.send_to(b"ping", to);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        UdpPinger {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpPinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Drain and frontend stop through ctl.
pub fn ctl(sock: &Path, what: &str, name: &str) {
    block_on(async {
        let mut c = proxygw::client::Client::dial(sock, Codec::Json, Duration::from_secs(5))
            .await
            .unwrap();
        match what {
            "drain" => c.drain(name).await.unwrap(),
            "stop" => c.stop(name).await.unwrap(),
            "start" => c.start(name).await.unwrap(),
            _ => c.warm(name).await.unwrap(),
        }
    })
}

/// Waits until `f` is true (bounded).
pub fn eventually(limit: Duration, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP counter of namespace `ns` from /proc/net/snmp (`Tcp`) or /proc/net/netstat (`TcpExt`), e.g.
/// `("Tcp", "RetransSegs")`, `("TcpExt", "TCPSynRetrans")`.
pub fn tcp_counter(ns: &str, group: &str, name: &str) -> u64 {
    let file = if group == "Tcp" {
        "/proc/net/snmp"
    } else {
        "/proc/net/netstat"
    };
    let text = ns_output(ns, &["cat", file]);
    let prefix = format!("{group}:");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    // Each group is a header line of names followed by a line of values.
    let (names, values) = (rows[0], rows[1]);
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no {group} {name} in {file}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}
