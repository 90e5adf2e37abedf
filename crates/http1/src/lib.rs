//! One HTTP/1.1 codec for the workspace (the shape of pingora's `protocols/http/v1`): the
//! pieces a proxy needs to read and write HTTP/1.1 on a byte stream, and nothing about what is
//! on the other side of it — no tunnel types, no telemetry types. A proxy plugs its own
//! transport in through [`body::BodySink`] and [`body::BodySource`].
//!
//! - [`head`]: parsing heads with `httparse` (a small table first, the full one only when a head
//!   overflows it), the framing and connection fields of a head in one pass ([`HeadFields`]),
//!   writing field lines, status lines and `Date`.
//! - [`rules`]: what a proxy owns in a message — the hop-by-hop set, fields named by
//!   `Connection`, and the framing checks that refuse request smuggling shapes. One place, so
//!   every proxy in the workspace treats the same bytes the same way.
//! - [`body`]: one framing enum ([`Framing`]), the body reader (length, chunked; forwarding to a
//!   sink with an idle limit) and writer (coalescing small chunks with the head).
//! - [`send_limit`]: a write side that gives up on a peer that takes no bytes for too long.
//! - [`server`]: waiting for a connection's next request head within the header and idle
//!   timeouts and a byte limit.
//! - [`client`]: a keep-alive pool of upstream connections, and reading response heads.

pub mod body;
pub mod client;
pub mod head;
pub mod rules;
pub mod send_limit;
pub mod server;

pub use body::{write_body, BodySink, BodySource, CopyError, Framing, Reader, Tap};
pub use head::{put_field, HeadError, HeadFields};
pub use send_limit::SendLimit;

/// How much is read from a socket at a time.
pub const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size line (with extensions) or trailer line accepted in a chunked body.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most header fields parsed without a heap-allocated table: most heads have a handful, and
/// initialising a large table costs more than parsing one.
pub const FEW_FIELDS: usize = 32;
