//! Network policy that more than one waygate binary applies, written once so that the binaries
//! cannot disagree: which peer addresses a network or allowlist covers ([`IpNet`],
//! [`Allowlist`]) and how long to wait before trying again ([`Backoff`]).
//!
//! It depends on nothing of the workspace, so every crate can use it without a cycle.

mod allow;
mod backoff;

pub use allow::{Allowlist, IpNet, IpNetError};
pub use backoff::{Backoff, Jitter};
