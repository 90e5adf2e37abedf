//! Pushes N traffic events (default 100,000) through cwproxy's CloudWatch sink to the endpoint in
//! `AWS_ENDPOINT_URL` (moto on loopback, started by `bench/cloudwatch/run`) and prints events/s,
//! bytes and events per batch, and the process's peak RSS.
//!
//! The producer keeps the queue below its bound (it waits when 90 % full), so the figure is the
//! sink's sustained delivery rate, not how fast events can be dropped.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cwproxy::cloudwatch::{self, Activation, Kind, Sinks, Target, QUEUE_EVENTS};
use telemetry::diag::Diag;
use telemetry::entry::Category;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn event(i: usize) -> Vec<u8> {
    // A typical traffic line: summary, request/response with headers and a small JSON body, EMF.
    format!(
        concat!(
            r#"{{"_q":"bench GET /items/{i} 200 1.234ms","_t":"TRAFFIC","app_name":"bench","global_hash":"a1b2c3","delay":1.234,"#,
            r#""request":{{"time":1700000000000,"host":"localhost","port":8081,"path":"/items/{i}","method":"GET","url":"localhost:8081/items/{i}?page=2","queries":{{"page":"2"}},"queries_hash":"0f0f0f","cookies":{{}},"headers":{{"Accept":"application/json","User-Agent":"bench/1.0"}},"body":null}},"#,
            r#""response":{{"time":1700000000001,"status":200,"headers":{{"Content-Length":"96","Content-Type":"application/json"}},"set_cookies":{{}},"body":{{"id":{i},"name":"item-{i}","tags":["a","b","c"],"price":12.5,"stock":true}},"body_raw":"{{\"id\":{i},\"name\":\"item-{i}\",\"tags\":[\"a\",\"b\",\"c\"],\"price\":12.5,\"stock\":true}}","body_hash":"d4e5f6"}},"#,
            r#""AppName":"bench","Endpoint":"/items/{i}","Method":"GET","2XXStatusCode":1,"Latency":1.234,"RequestBodySize":0,"RequestCount":1,"ResponseBodySize":96,"#,
            r#""_aws":{{"Timestamp":1700000000001,"CloudWatchMetrics":[{{"Namespace":"app/traffic","Dimensions":[["AppName"],["AppName","Endpoint","Method"]],"Metrics":[{{"Name":"Latency","Unit":"Milliseconds"}},{{"Name":"RequestCount","Unit":"Count"}}]}}]}}}}"#
        ),
        i = i
    )
    .into_bytes()
}

fn main() {
    let n: usize = std::env::var("CW_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (sinks, mut activator, router) = Sinks::new(Diag::new("cw-bench"));
        let client = cloudwatch::load_client("us-east-1", false)
            .await
            .expect("bench credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
        activator.activate(
            Kind::Traffic,
            Activation {
                client,
                target: Target {
                    group: "/bench/traffic".into(),
                    stream: format!("bench-{}", std::process::id()),
                },
            },
        );
        drop(activator);
        let stats = sinks.stats(Kind::Traffic).unwrap();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let sample = event(0).len();
        let started = Instant::now();
        let high_water = (QUEUE_EVENTS * 9 / 10) as u64;
        for i in 0..n {
            loop {
                let s = &stats;
                let in_flight = s.accepted.load(Ordering::Relaxed)
                    - s.delivered.load(Ordering::Relaxed)
                    - s.failed.load(Ordering::Relaxed);
                if in_flight < high_water {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let ev = event(i);
            // `deliver` runs on the telemetry thread in cwproxy; here on a runtime thread.
            router.deliver(Category::Traffic, now_ms + (i % 1000) as i64, &ev);
        }
        let produced = started.elapsed();
        let closed = sinks.close(Duration::from_secs(600)).await;
        let elapsed = started.elapsed();
        let delivered = stats.delivered.load(Ordering::Relaxed);
        let batches = stats.batches.load(Ordering::Relaxed).max(1);
        let bytes = stats.batch_bytes.load(Ordering::Relaxed);
        println!("| metric | value |");
        println!("|---|---|");
        println!("| events sent | {n} (≈{sample} B each) |");
        println!(
            "| delivered / failed / dropped | {delivered} / {} / {} |",
            stats.failed.load(Ordering::Relaxed),
            stats.dropped.load(Ordering::Relaxed)
        );
        println!("| all delivered within close budget | {closed} |");
        println!(
            "| time (enqueue done / all delivered) | {:.2} s / {:.2} s |",
            produced.as_secs_f64(),
            elapsed.as_secs_f64()
        );
        println!(
            "| events/s (delivered) | {:.0} |",
            delivered as f64 / elapsed.as_secs_f64()
        );
        println!("| batches | {batches} |");
        println!(
            "| events per batch (avg) | {:.0} |",
            delivered as f64 / batches as f64
        );
        println!(
            "| bytes per batch (avg, incl. 26/event) | {:.0} |",
            bytes as f64 / batches as f64
        );
        println!(
            "| retried batches | {} |",
            stats.retries.load(Ordering::Relaxed)
        );
        println!("| peak RSS (VmHWM) | {} KiB |", peak_rss_kib());
        assert_eq!(delivered, n as u64, "not every event was delivered");
    });
}
