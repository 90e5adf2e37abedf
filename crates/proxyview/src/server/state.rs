//! The server's shared state: the one type both ports work on. Its methods live with the port
//! they serve (`server.rs` for startup and the agents' port, `caller` for the callers' port), so
//! each of those modules depends on this one and neither on the other's internals.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::access_log::AccessSink;
use crate::config::ServerConfig;
use crate::router::Router;

/// Shared server state.
pub struct Server {
    pub(super) cfg: ServerConfig,
    /// Shared with the cluster's tasks, which hold it weakly and end when the server drops it.
    pub(super) router: Arc<Router>,
    pub(super) sink: Option<Arc<dyn AccessSink>>,
    pub(super) next_session: AtomicU64,
    pub(super) stopping: tokio::sync::watch::Sender<bool>,
    pub(super) connections: tokio_util::task::TaskTracker,
    /// `cluster:` (None: the single-node server).
    pub(super) cluster: Option<Arc<crate::cluster::Cluster>>,
}
