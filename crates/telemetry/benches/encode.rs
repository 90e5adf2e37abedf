//! Cost of building and serialising the spec's full example traffic line with EMF.
//!
//! Run with `bench/telemetry/run` (or `cargo bench -p telemetry --bench encode`). Prints ns and
//! heap allocations per line for: rendering alone (the telemetry worker's cost) and cloning the
//! exchange first (what the proxy pays to hand a record over), against the issue's goals.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Uri};
use telemetry::entry::{render_traffic, Context};
use telemetry::hash::{HashCache, Scratch};
use telemetry::meta::{AwsMeta, EcsMeta};
use telemetry::{Capture, Exchange};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn example() -> Exchange {
    let mut rq = HeaderMap::new();
    for (k, v) in [
        ("host", "example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("cookie", "session=abc"),
        ("content-type", "application/json"),
        ("content-length", "17"),
    ] {
        rq.append(k, HeaderValue::from_static(v));
    }
    let mut rs = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("set-cookie", "session=xyz"),
        ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("content-length", "15"),
    ] {
        rs.append(k, HeaderValue::from_static(v));
    }
    Exchange {
        start: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
        end: UNIX_EPOCH + Duration::from_millis(1_700_000_000_003),
        elapsed: Duration::from_nanos(3_412_345),
        method: Method::POST,
        uri: Uri::from_static("/api/foo?key=value"),
        tls: false,
        request_headers: rq,
        request_body: Capture::from_bytes(65536, br#"{"field":"value"}"#),
        status: 201,
        response_headers: rs,
        response_body: Some(Capture::from_bytes(65536, br#"{"result":"ok"}"#)),
        local_response_bytes: 0,
        endpoint: None,
        client_id: None,
    }
}

/// Runs `f` in rounds of `n` and returns (median ns per op, allocations per op).
fn measure(n: u64, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..n {
        f();
    }
    let mut rounds = Vec::new();
    let mut allocs = 0;
    for _ in 0..15 {
        let a0 = ALLOCS.load(Ordering::Relaxed);
        let t0 = Instant::now();
        for _ in 0..n {
            f();
        }
        rounds.push(t0.elapsed().as_nanos() as f64 / n as f64);
        allocs = ALLOCS.load(Ordering::Relaxed) - a0;
    }
    rounds.sort_by(f64::total_cmp);
    (rounds[rounds.len() / 2], allocs as f64 / n as f64)
}

fn main() {
    let meta = AwsMeta {
        ecs: Some(EcsMeta {
            cluster: "demo-cluster".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ctx = Context {
        app_name: "orders-api".into(),
        aws_meta: meta.to_json(),
    };
    let ex = example();
    let mut out = Vec::with_capacity(4096);
    let mut cold = Scratch {
        cache: HashCache::disabled(),
        ..Scratch::new()
    };
    let mut scratch = Scratch::new();
    let n: u64 = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);

    let (cold_ns, cold_allocs) = measure(n, || {
        out.clear();
        render_traffic(&ctx, black_box(&ex), &mut out, &mut cold).expect("renders");
        black_box(&out);
    });
    let (render_ns, render_allocs) = measure(n, || {
        out.clear();
        render_traffic(&ctx, black_box(&ex), &mut out, &mut scratch).expect("renders");
        black_box(&out);
    });
    let line_len = out.len();
    let (full_ns, full_allocs) = measure(n, || {
        let owned = black_box(&ex).clone();
        out.clear();
        render_traffic(&ctx, &owned, &mut out, &mut scratch).expect("renders");
        black_box(&out);
    });

    println!(
        "telemetry encode benchmark: spec §4.2 full example traffic line + EMF ({line_len} bytes)"
    );
    println!(
        "{:<48} {:>9} {:>12} {:>12} {:>12}",
        "case", "ns/line", "allocs/line", "÷ goal 5µs", "÷ goal 20"
    );
    for (case, ns, allocs) in [
        (
            "render, hash cache off (4 × SHA-256 per line)",
            cold_ns,
            cold_allocs,
        ),
        (
            "render, hash cache warm (telemetry worker)",
            render_ns,
            render_allocs,
        ),
        (
            "clone exchange + render (proxy hand-off + worker)",
            full_ns,
            full_allocs,
        ),
    ] {
        println!(
            "{case:<48} {ns:>9.0} {allocs:>12.1} {:>12.2} {:>12.2}",
            ns / 5000.0,
            allocs / 20.0
        );
    }
}
