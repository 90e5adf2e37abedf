//! proxygw: warms backend targets on first traffic and routes frontends to them with kernel DNAT (nftables),
//! draining a target once conntrack shows no flow to it for `idle_timeout`.
//!
//! Layout: [`config`] (YAML v1 + schemas), [`engine`] (one task owning all state), [`dataplane`] (nft +
//! conntrack, and an in-memory twin for tests), [`plugins`] (compile-time kinds), [`protocol`], [`client`] and [`plugins::ctl`]
//! (the Unix-socket IPC), [`log`] (slog-style text lines).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod engine;
pub mod handle;
pub mod instance;
pub mod log;
pub mod plugins;
pub mod protocol;
