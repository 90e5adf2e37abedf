//! Cost of the API model per exchange, and its memory for 200 routes × 5 shapes.
//!
//! Run with `bench/apimodel/run`. The exchange is `bench/telemetry`'s example (a POST with a
//! small JSON body and a 201 JSON response, from the file both benches include), rendered with
//! the production output options; the model is warm (the route learned), which is its steady
//! state. Prints the time spent inside the model per exchange (timed around the observer call),
//! the render time with and without the model, allocations per exchange, and the live heap of a
//! model of 200 routes × 5 shapes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use apimodel::{Model, Options};
use telemetry::entry::{render_traffic_observed, Context};
use telemetry::hash::Scratch;
use telemetry::observe::{Observation, Observer};
use telemetry::output::OutputOptions;

#[path = "../../crates/telemetry/benches/support/example.rs"]
mod example;
use example::example_with as example;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The model, timed and allocation-counted around each update.
#[derive(Debug)]
struct Timed {
    model: Model,
    nanos: AtomicU64,
    allocs: AtomicU64,
}

impl Observer for Timed {
    fn observe(&self, o: &Observation<'_, '_>, out: &mut Vec<u8>) {
        let a0 = ALLOCS.load(Ordering::Relaxed);
        let t0 = Instant::now();
        self.model.update(o, out);
        let ns = t0.elapsed().as_nanos() as u64;
        self.nanos.fetch_add(ns, Ordering::Relaxed);
        self.allocs
            .fetch_add(ALLOCS.load(Ordering::Relaxed) - a0, Ordering::Relaxed);
    }
}

fn model() -> Timed {
    Timed {
        model: Model::new(Options {
            app_name: "orders-api".into(),
            memory_limit: apimodel::DEFAULT_MEMORY_LIMIT,
            drift_learn: Some(apimodel::DEFAULT_DRIFT_LEARN),
            examples: false,
        }),
        nanos: AtomicU64::new(0),
        allocs: AtomicU64::new(0),
    }
}

/// Median ns per render over 15 rounds of `n`.
fn measure(n: u64, mut f: impl FnMut()) -> f64 {
    for _ in 0..n {
        f();
    }
    let mut rounds = Vec::new();
    for _ in 0..15 {
        let t0 = Instant::now();
        for _ in 0..n {
            f();
        }
        rounds.push(t0.elapsed().as_nanos() as f64 / n as f64);
    }
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

fn main() {
    let n: u64 = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let ctx = Context {
        app_name: "orders-api".into(),
        aws_meta: None,
    };
    let opts = OutputOptions::recommended();
    let ex = example(
        "/api/foo?key=value",
        r#"{"field":"value"}"#,
        r#"{"result":"ok"}"#,
    );
    let mut out = Vec::with_capacity(4096);
    let mut scratch = Scratch::new();
    let timed = model();

    let without = measure(n, || {
        out.clear();
        render_traffic_observed(&ctx, &opts, black_box(&ex), &mut out, &mut scratch, None)
            .expect("renders");
        black_box(&out);
    });
    let with = measure(n, || {
        out.clear();
        render_traffic_observed(
            &ctx,
            &opts,
            black_box(&ex),
            &mut out,
            &mut scratch,
            Some(&timed),
        )
        .expect("renders");
        black_box(&out);
    });
    let calls = 16 * n;
    let inside = timed.nanos.load(Ordering::Relaxed) as f64 / calls as f64;
    let allocs = timed.allocs.load(Ordering::Relaxed) as f64 / calls as f64;
    println!("model update per exchange (warm, timed inside): {inside:.0} ns, {allocs:.2} allocations (goal ≤ 1000 ns)");
    println!(
        "render without model: {without:.0} ns; with model: {with:.0} ns (difference {:.0} ns)",
        with - without
    );

    // 200 routes × 5 shapes: five bodies with different property sets per route.
    let before = LIVE.load(Ordering::Relaxed);
    let big = model();
    for r in 0..200 {
        for s in 0..5 {
            let body = format!(
                r#"{{"id":{r},"name":"n","kind{s}":true,"nested":{{"a":[1,2],"b{s}":"x"}}}}"#
            );
            let ex = example(
                &format!("/api/r{r}/items/{s}"),
                &body,
                r#"{"result":"ok","at":"2026-12-06T10:00:00Z"}"#,
            );
            out.clear();
            render_traffic_observed(&ctx, &opts, &ex, &mut out, &mut scratch, Some(&big))
                .expect("renders");
        }
    }
    let live = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "model of {} routes × 5 shapes: {} KiB live heap ({} KiB estimated by the model)",
        big.model.len(),
        live / 1024,
        big.model.bytes() / 1024
    );
}
