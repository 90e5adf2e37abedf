//! The stdout pipeline: one write per line, never blocking the caller, surviving a closed stdout.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, Method, Uri};
use telemetry::diag::Diag;
use telemetry::entry::{Category, Context};
use telemetry::pipeline::{EventSink, Pipeline, PipelineConfig, Record};
use telemetry::{Capture, Exchange};

fn exchange(i: usize) -> Record {
    let uri: Uri = format!("/item/{i}?n={i}").parse().expect("uri");
    Record::Traffic(Box::new(Exchange {
        start: SystemTime::now(),
        end: SystemTime::now(),
        elapsed: Duration::from_micros(250),
        method: Method::GET,
        uri,
        tls: false,
        request_headers: HeaderMap::new(),
        request_body: Capture::new(1024),
        status: 200,
        response_headers: HeaderMap::new(),
        response_body: Some(Capture::from_bytes(1024, b"ok")),
        local_response_bytes: 0,
        endpoint: None,
        client_id: None,
    }))
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_diag() -> (Diag, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    (
        Diag::with_target(
            "test",
            Arc::new(move |l: &str| sink.lock().expect("lock").push(l.to_owned())),
        ),
        lines,
    )
}

#[test]
fn writes_carry_whole_lines_only_and_every_line_is_json() {
    let rec = Recorder::default();
    let (diag, _) = captured_diag();
    let p = Pipeline::start(
        PipelineConfig::default(),
        Context {
            app_name: "t".into(),
            aws_meta: None,
        },
        Box::new(rec.clone()),
        vec![],
        diag,
    )
    .expect("start");
    let e = p.emitter();
    for i in 0..200 {
        assert!(e.emit(exchange(i)));
    }
    assert!(p.shutdown(Duration::from_secs(5)));
    let writes = rec.0.lock().expect("lock");
    // Every write carries whole lines only, so no other writer of the descriptor can split one.
    let mut lines = 0;
    for w in writes.iter() {
        assert_eq!(w.last(), Some(&b'\n'), "a write ended mid-line");
        for line in w.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("json line");
            assert_eq!(v["_t"], "TRAFFIC");
            lines += 1;
        }
    }
    assert_eq!(lines, 200);
    assert!(writes.len() <= 200);
}

/// A writer that blocks until released.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>, Recorder);

impl Gate {
    /// A pipeline of `capacity` records writing through this gate, waiting at most `timeout` for it.
    fn pipeline(&self, capacity: usize, timeout: Duration, diag: Diag) -> Pipeline {
        let cfg = PipelineConfig {
            capacity,
            max_queued_bytes: 1 << 20,
            report_interval: Duration::from_secs(3600),
            output: telemetry::output::OutputOptions {
                stdout_timeout: Some(timeout),
                ..telemetry::output::OutputOptions::ORIGINAL
            },
            ..PipelineConfig::default()
        };
        Pipeline::start(
            cfg,
            Context::default(),
            Box::new(self.clone()),
            vec![],
            diag,
        )
        .expect("start")
    }

    fn open(&self) {
        let (lock, cv) = &*self.0;
        *lock.lock().expect("lock") = true;
        cv.notify_all();
    }

    fn lines_written(&self) -> usize {
        let writes = self.1 .0.lock().expect("lock");
        writes
            .iter()
            .map(|w| w.iter().filter(|&&b| b == b'\n').count())
            .sum()
    }
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (lock, cv) = &*self.0;
        let mut open = lock.lock().expect("lock");
        while !*open {
            open = cv.wait(open).expect("wait");
        }
        self.1.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn stuck_stdout_blocks_callers_for_the_timeout_only_and_drops_are_counted_and_reported_once() {
    let gate = Gate::default();
    let (diag, reports) = captured_diag();
    let p = gate.pipeline(16, Duration::from_millis(300), diag);
    let e = p.emitter();
    let started = Instant::now();
    let total = 5000;
    let accepted = (0..total).filter(|&i| e.emit(exchange(i))).count();
    let took = started.elapsed();
    // One emitter waits the timeout; once stdout is known stuck the others drop at once.
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "emit blocked for {took:?}"
    );
    // The queue holds 16; the worker holds at most one taken-out queue, blocked in write.
    assert!(accepted <= 2 * 16, "accepted {accepted} with capacity 16");
    assert!(accepted < total / 10);
    assert_eq!(e.dropped() as usize, total - accepted);
    // Release stdout: everything accepted gets written, nothing else.
    gate.open();
    assert!(p.flush(Duration::from_secs(5)));
    assert_eq!(gate.lines_written(), accepted);
    assert_eq!(e.written() as usize, accepted);
    // A long report interval means the first drop is reported at once and the thousands after
    // it in one more report (at shutdown here), not one per drop.
    let more = (0..100).filter(|&i| !e.emit(exchange(i))).count();
    assert!(p.shutdown(Duration::from_secs(5)));
    let reports = reports.lock().expect("lock");
    let drop_reports: Vec<&String> = reports.iter().filter(|l| l.contains("dropped")).collect();
    assert!(
        (1..=2).contains(&drop_reports.len()),
        "{reports:?} (later drops: {more})"
    );
    assert!(
        drop_reports[drop_reports.len() - 1]
            .contains(&format!("total dropped: {}", total - accepted)),
        "{reports:?}"
    );
}

#[test]
fn slow_stdout_slows_callers_and_loses_no_line() {
    let gate = Gate::default();
    let (diag, reports) = captured_diag();
    let p = gate.pipeline(16, Duration::from_secs(5), diag);
    // stdout takes nothing for 1 s, then drains.
    let opener = gate.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        opener.open();
    });
    let per_thread = 500;
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let e = p.emitter();
            std::thread::spawn(move || (0..per_thread).filter(|&i| e.emit(exchange(i))).count())
        })
        .collect();
    let accepted: usize = producers.into_iter().map(|t| t.join().expect("join")).sum();
    assert_eq!(accepted, 4 * per_thread);
    assert!(p.flush(Duration::from_secs(5)));
    assert_eq!(gate.lines_written(), accepted);
    assert_eq!(p.emitter().dropped(), 0);
    assert!(p.shutdown(Duration::from_secs(5)));
    assert!(reports.lock().expect("lock").is_empty());
}

#[test]
fn closed_stdout_does_not_panic_and_is_reported() {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] was just created by pipe() and is owned by nobody else; closing the read
    // end makes every later write fail with EPIPE (SIGPIPE is ignored by the Rust runtime).
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is a fresh descriptor owned by this File from now on.
    let write_end = unsafe { std::fs::File::from_raw_fd(fds[1]) };
    let (diag, reports) = captured_diag();
    let p = Pipeline::start(
        PipelineConfig::default(),
        Context::default(),
        Box::new(write_end),
        vec![],
        diag,
    )
    .expect("start");
    let e = p.emitter();
    for i in 0..50 {
        e.emit(exchange(i));
    }
    assert!(p.shutdown(Duration::from_secs(5)));
    assert_eq!(e.written(), 0);
    let reports = reports.lock().expect("lock");
    assert!(
        reports
            .iter()
            .any(|l| l.contains("failed to write") && l.contains("total failed: 50")),
        "{reports:?}"
    );
}

#[derive(Default)]
struct Collect(Mutex<Vec<(Category, i64, Vec<u8>)>>);

impl EventSink for Collect {
    fn deliver(&self, category: Category, timestamp_ms: i64, event: &[u8]) {
        self.0
            .lock()
            .expect("lock")
            .push((category, timestamp_ms, event.to_vec()));
    }
}

#[test]
fn sinks_get_every_event_after_stdout() {
    let sink = Arc::new(Collect::default());
    let rec = Recorder::default();
    let p = Pipeline::start(
        PipelineConfig::default(),
        Context {
            app_name: "svc".into(),
            aws_meta: None,
        },
        Box::new(rec.clone()),
        vec![sink.clone() as Arc<dyn EventSink>],
        Diag::new("test"),
    )
    .expect("start");
    for i in 0..10 {
        p.emitter().emit(exchange(i));
    }
    assert!(p.shutdown(Duration::from_secs(5)));
    let got = sink.0.lock().expect("lock");
    assert_eq!(got.len(), 10);
    let written: Vec<Vec<u8>> = rec
        .0
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|w| {
            w.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(written.len(), 10);
    for ((cat, ts, ev), line) in got.iter().zip(&written) {
        assert_eq!(*cat, Category::Traffic);
        assert!(*ts > 0);
        assert_eq!(ev, line);
    }
}

/// The CloudWatch path receives the very event written to stdout: redacted, templated and
/// bounded by the production options.
#[test]
fn sinks_get_the_redacted_templated_bounded_line() {
    let sink = Arc::new(Collect::default());
    let rec = Recorder::default();
    let cfg = PipelineConfig {
        output: telemetry::output::OutputOptions {
            line_limit: 8192,
            ..telemetry::output::OutputOptions::recommended()
        },
        ..PipelineConfig::default()
    };
    let p = Pipeline::start(
        cfg,
        Context::default(),
        Box::new(rec.clone()),
        vec![sink.clone() as Arc<dyn EventSink>],
        Diag::new("test"),
    )
    .expect("start");
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        "Bearer SinkSecret1".parse().expect("value"),
    );
    headers.insert("content-type", "text/plain".parse().expect("value"));
    let body = "x".repeat(20_000);
    p.emitter().emit(Record::Traffic(Box::new(Exchange {
        start: SystemTime::now(),
        end: SystemTime::now(),
        elapsed: Duration::from_micros(250),
        method: Method::POST,
        uri: "/users/42?token=SinkSecret2".parse().expect("uri"),
        tls: false,
        request_headers: headers,
        request_body: Capture::from_bytes(65536, body.as_bytes()),
        status: 200,
        response_headers: HeaderMap::new(),
        response_body: Some(Capture::from_bytes(1024, b"ok")),
        local_response_bytes: 0,
        endpoint: None,
        client_id: None,
    })));
    assert!(p.shutdown(Duration::from_secs(5)));
    let got = sink.0.lock().expect("lock");
    let written = rec.0.lock().expect("lock").concat();
    assert_eq!(got.len(), 1);
    let event = &got[0].2;
    assert_eq!(written, [event.as_slice(), b"\n"].concat());
    let text = String::from_utf8_lossy(event);
    assert!(event.len() <= 8192, "{}", event.len());
    assert!(!text.contains("SinkSecret"), "{text}");
    let v: serde_json::Value = serde_json::from_slice(event).expect("json");
    assert_eq!(v["Endpoint"], "/users/{userId}");
    assert_eq!(v["request"]["path"], "/users/42");
    assert!(v["request"]["body_raw"]
        .as_str()
        .expect("string")
        .ends_with("...(truncated)"));
}
