//! Telemetry shared by the waygate binaries: turns an HTTP exchange or a health probe into one
//! JSON access-log line with CloudWatch EMF metrics, byte-compatible with the Go cwproxy, and
//! delivers lines to sinks without ever blocking the caller.

pub mod capture;
pub mod record;

pub use capture::Capture;
pub use record::{Exchange, HealthProbe};
pub mod diag;
pub mod emf;
pub mod entry;
pub mod hash;
pub mod json;
pub mod meta;
pub mod multimap;
pub mod parse;
pub mod pipeline;
pub mod value;
