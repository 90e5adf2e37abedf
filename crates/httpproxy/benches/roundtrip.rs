//! In-process benchmark of one exchange, like Go's `BenchmarkHandlerRoundTrip`: a GET from a raw
//! keep-alive client socket through the proxy server (same runtime) to a loopback upstream
//! answering `{"ok":true}` (application/json), capture limit 4096, no-op sink; the response is
//! read to the end of its body. A counting global
//! allocator reports allocations per exchange (all threads, upstream included).
//!
//! Run: `cargo bench -p httpproxy --bench roundtrip` (optional args: iterations, e.g. `-- 50000`).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use httpproxy::{Proxy, ProxyConfig, Upstream};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are atomics
// and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";

/// A keep-alive upstream on its own thread that allocates nothing per request.
fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let mut have = 0usize;
                loop {
                    let Ok(n) = s.read(&mut buf[have..]) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        if s.write_all(RESPONSE).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

struct Figures {
    ns_per_op: f64,
    allocs_per_op: f64,
    bytes_per_op: f64,
}

/// One exchange through the proxy server from a raw keep-alive client socket: the request bytes
/// written, the response read to the end of its body (the proxy adds `Date`, so the head's
/// length is found, not assumed).
async fn run_handler(addr: SocketAddr, n: u64) -> Figures {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = b"GET /bench HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let b0 = BYTES.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for _ in 0..n {
        s.write_all(req).await.unwrap();
        let mut have = 0;
        loop {
            have += s.read(&mut buf[have..]).await.unwrap();
            if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                if have >= end + 4 + 11 {
                    assert!(buf.starts_with(b"HTTP/1.1 200"));
                    break;
                }
            }
        }
    }
    let elapsed = t0.elapsed();
    Figures {
        ns_per_op: elapsed.as_nanos() as f64 / n as f64,
        allocs_per_op: (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / n as f64,
        bytes_per_op: (BYTES.load(Ordering::Relaxed) - b0) as f64 / n as f64,
    }
}

async fn run_socket(addr: SocketAddr, n: u64) -> Figures {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let b0 = BYTES.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for _ in 0..n {
        let req = http::Request::builder()
            .uri("/bench")
            .header("host", "example.com")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 11);
    }
    let elapsed = t0.elapsed();
    Figures {
        ns_per_op: elapsed.as_nanos() as f64 / n as f64,
        allocs_per_op: (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / n as f64,
        bytes_per_op: (BYTES.load(Ordering::Relaxed) - b0) as f64 / n as f64,
    }
}

/// The floor: the same request written straight to the upstream over one keep-alive socket.
async fn run_direct(up: SocketAddr, n: u64) -> Figures {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(up).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = b"GET /bench HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let mut buf = vec![0u8; RESPONSE.len()];
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for _ in 0..n {
        s.write_all(req).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
    }
    let elapsed = t0.elapsed();
    Figures {
        ns_per_op: elapsed.as_nanos() as f64 / n as f64,
        allocs_per_op: (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / n as f64,
        bytes_per_op: 0.0,
    }
}

/// Rounds each case is split into.
const ROUNDS: u64 = 10;

fn best(mut rounds: Vec<Figures>) -> Figures {
    rounds.sort_by(|a, b| a.ns_per_op.total_cmp(&b.ns_per_op));
    rounds.swap_remove(0)
}

fn config(up: SocketAddr) -> ProxyConfig {
    let mut cfg = ProxyConfig::new(Upstream::Addr(up));
    cfg.capture_limit = 4096;
    cfg.logger = telemetry::diag::Diag::with_target("cwproxy", Arc::new(|_: &str| {}));
    cfg
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let up = upstream();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sink = Arc::new(|e: telemetry::Exchange| drop(e));
        let server = Proxy::new(config(up), sink).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            server
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
        });
        run_direct(up, 2_000).await;
        run_handler(addr, 2_000).await;
        run_socket(addr, 2_000).await;
        // Alternate short rounds and keep the best one of each: the machine is shared, and the
        // best round is the one least disturbed by other load.
        let per_round = (n / ROUNDS).max(1);
        let (mut direct, mut handler, mut socket) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            direct.push(run_direct(up, per_round).await);
            handler.push(run_handler(addr, per_round).await);
            socket.push(run_socket(addr, per_round).await);
        }
        let d = best(direct);
        let h = best(handler);
        let s = best(socket);
        let _ = stop.send(());
        let _ = serving.await;

        println!(
            "httpproxy in-process round trip ({n} iterations per case in {ROUNDS} alternating rounds, best round shown; current-thread runtime, loopback upstream)"
        );
        println!("| case | µs/op | allocs/op | bytes/op | Go µs/op | Go allocs/op | µs ratio (Go/ours) | goal |");
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| raw client → proxy → upstream (like BenchmarkHandlerRoundTrip) | {:.1} | {:.1} | {:.0} | 64.4–83.8 | 171 | {:.1}–{:.1}x | ≤ 15 µs, ≤ 40 allocs |",
            h.ns_per_op / 1000.0,
            h.allocs_per_op,
            h.bytes_per_op,
            64_399.0 / h.ns_per_op,
            83_848.0 / h.ns_per_op
        );
        println!(
            "| handler minus the bare upstream round trip | {:.1} | {:.1} | – | – | – | – | – |",
            (h.ns_per_op - d.ns_per_op) / 1000.0,
            h.allocs_per_op - d.allocs_per_op
        );
        println!(
            "| bare upstream round trip (raw socket, floor) | {:.1} | {:.1} | – | – | – | – | – |",
            d.ns_per_op / 1000.0,
            d.allocs_per_op
        );
        println!(
            "| hyper client → proxy → upstream (incl. hyper client side) | {:.1} | {:.1} | {:.0} | – | – | – | – |",
            s.ns_per_op / 1000.0,
            s.allocs_per_op,
            s.bytes_per_op
        );
    });
}
