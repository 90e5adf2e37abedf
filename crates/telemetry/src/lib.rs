//! Telemetry shared by the waygate binaries: turns an HTTP exchange or a health probe into one
//! JSON access-log line with CloudWatch EMF metrics, byte-compatible with the Go cwproxy, and
//! delivers lines to stdout (and further sinks) without ever blocking the caller.
//!
//! - [`record`]: what a proxy hands over ([`Exchange`], [`HealthProbe`]), cheap to build.
//! - [`entry`]: the TRAFFIC/HEALTH entry in the original's member order, and its metric sets.
//! - [`json`]: a writer reproducing Go `encoding/json` byte for byte.
//! - [`parse`], [`value`], [`multimap`]: body parsing (JSON, form, XML) and value normalisation.
//! - [`hash`]: structural signatures and 6-character hashes.
//! - [`emf`]: Embedded Metric Format assembly (dimension sets, 100-metric split).
//! - [`pipeline`]: the bounded queue and writer thread; [`diag`]: Go-format stderr diagnostics.
//! - [`meta`]: the `aws_meta` object.
//! - [`output`]: what the line contains beyond the original's format: [`redact`]ion, [`route`]
//!   templates and their cap, [`decode`]d bodies, the line bound ([`trim`]) and binary bodies.

pub mod capture;
pub mod decode;
pub mod diag;
pub mod emf;
pub mod entry;
pub mod hash;
pub mod json;
pub mod meta;
pub mod multimap;
pub mod observe;
pub mod output;
pub mod parse;
pub mod pipeline;
pub mod record;
pub mod redact;
pub mod route;
pub mod trim;
pub mod value;

pub use capture::Capture;
pub use record::{Exchange, HealthProbe};
