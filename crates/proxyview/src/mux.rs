//! Multiplexing: HTTP/2 over the WebSocket byte stream, with the roles reversed (the server is the
//! HTTP/2 *client*, the agent the HTTP/2 *server*).
//!
//! # Why HTTP/2 and not yamux or an own frame protocol
//!
//! The tunnel carries HTTP, so HTTP/2 carries it natively: request and response heads are HPACK
//! header blocks (no own encoding of methods, statuses, header lists), each request is a stream
//! with its own flow-control window, PING gives the heartbeat, RST_STREAM gives cancellation when
//! a caller goes away, and RFC 8441 extended CONNECT turns a stream into a raw byte pipe for
//! WebSocket pass-through. hyper's `client::conn::http2` / `server::conn::http2` give all of that
//! on any `AsyncRead + AsyncWrite`, here [`crate::wsio::WsIo`]. A yamux stream would still need an
//! HTTP/1 codec per stream on both ends, and a home-made frame protocol would need its own
//! windows, which is where tunnels like ferrotunnel lose to rathole.
//!
//! Flow control: each stream gets [`STREAM_WINDOW`] of credit and the session
//! [`CONNECTION_WINDOW`]. hyper returns credit only when the body consumer takes a chunk, so a
//! caller that reads slowly stops *its* stream once its window is full while the other streams
//! keep the rest of the connection window. Memory per session is therefore bounded by the
//! connection window plus one frame per stream, whatever the callers do
//! (tests `slow_caller_does_not_stall_a_fast_one`, `big_bodies_stream_both_ways_with_flat_rss`).
//!
//! # Measurement (why these window sizes)
//!
//! 20 MB download through the tunnel, release build, 2 vCPU, agent ↔ server through a relay
//! adding 10 ms each way (20 ms RTT), two runs each:
//!
//! | windows (stream / connection), max frame | MB/s |
//! |---|---|
//! | 64 KiB / 64 KiB, 16 KiB frames (HTTP/2 defaults) | 2.98, 2.87 |
//! | 1 MiB / 8 MiB, 64 KiB frames (ours) | 36.2, 37.8 |
//!
//! A stream moves at most one window per round trip, so the defaults cap every request at
//! ~3 MB/s on a 20 ms path; 1 MiB lifts that twelve-fold while a caller that stops reading still
//! parks at most 1 MiB (and one session at most 8 MiB) in the tunnel. On plain loopback (no RTT)
//! both settings give the same ~300 MB/s, so the larger window costs nothing there. The 100 MB
//! loopback comparison with rathole is in `bench/proxyview/README.md`; `bench/proxyview/rtt.sh`
//! reproduces the RTT figure for the current build (the first row was measured by setting the
//! three constants in `protocol.rs` to the HTTP/2 defaults).

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::protocol::{
    CONNECTION_WINDOW, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE, MAX_HEADER_LIST, STREAM_WINDOW,
};

/// Heartbeat settings shared by both ends of a session.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// PING interval.
    pub interval: Duration,
    /// Time to wait for the PING answer before the connection fails.
    pub timeout: Duration,
}

/// HTTP/2 client settings used by the server on each agent session.
pub fn client_builder(hb: Heartbeat) -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buf_size(STREAM_WINDOW as usize)
        .keep_alive_interval(hb.interval)
        .keep_alive_timeout(hb.timeout)
        .keep_alive_while_idle(true);
    b
}

/// HTTP/2 server settings used by the agent on its session.
pub fn server_builder(hb: Heartbeat) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buf_size(STREAM_WINDOW as usize)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(hb.interval)
        .keep_alive_timeout(hb.timeout)
        .enable_connect_protocol();
    b
}
