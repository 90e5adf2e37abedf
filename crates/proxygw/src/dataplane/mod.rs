//! The dataplane seam: DNAT groups (one per target) and conntrack flows. [`nft::NftDataplane`] drives the kernel;
//! [`memory::MemoryDataplane`] records calls so the engine's state machines can be tested without it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Protocol;

/// A boxed future, for the object-safe [`FlowConsumer`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whoever consumes conntrack flow events (the engine). Declared here and implemented there, so
/// that the dataplane does not depend on the engine.
pub trait FlowConsumer: Send + Sync {
    /// Delivers one event, waiting for room; false once the consumer is gone.
    fn send(&self, ev: FlowEvent) -> BoxFuture<'_, bool>;
    /// Like [`FlowConsumer::send`], from a plain thread (the conntrack reader).
    fn blocking_send(&self, ev: FlowEvent) -> bool;
}

/// Feeds [`FlowEvent`]s to their consumer; cheap to clone.
#[derive(Clone)]
pub struct FlowSink(Arc<dyn FlowConsumer>);

impl FlowSink {
    /// A sink delivering to `consumer`.
    pub fn new(consumer: Arc<dyn FlowConsumer>) -> Self {
        Self(consumer)
    }

    /// Delivers one event; false once the consumer is gone.
    pub async fn send(&self, ev: FlowEvent) -> bool {
        self.0.send(ev).await
    }

    /// Like [`FlowSink::send`], from a plain thread (the conntrack reader).
    pub fn blocking_send(&self, ev: FlowEvent) -> bool {
        self.0.blocking_send(ev)
    }
}

impl std::fmt::Debug for FlowSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowSink")
    }
}

/// Asks the engine to compare its dataplane with the kernel (see [`Dataplane::heal`]); cheap to
/// clone.
#[derive(Clone)]
pub struct HealSink(Arc<dyn Fn() -> bool + Send + Sync>);

impl HealSink {
    /// A sink that calls `request`, which returns false once the engine is gone.
    pub fn new(request: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(request))
    }

    /// From a plain thread; false once the engine is gone.
    pub fn blocking_send(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for HealSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealSink")
    }
}

pub mod conntrack;
pub mod memory;
pub mod monitor;
pub mod nft;

/// True when a netlink read ended at the socket's read timeout with nothing to read: the event
/// threads read with a timeout so that they notice shutdown, and simply read again.
fn read_timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// One frontend's DNAT: new flows to `listen` go to `backend`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// tcp/udp.
    pub protocol: Protocol,
    /// Frontend listen address; an unspecified IP means "any local address of this family".
    pub listen: SocketAddr,
    /// Target endpoint address.
    pub backend: SocketAddr,
    /// ct timeout of host-bound flows to `listen` (the original's `flow_timeout` policy).
    pub flow_timeout: Duration,
    /// Source-NAT the DNATed flows (for backends whose return path bypasses the gateway).
    pub masquerade: bool,
}

impl Mapping {
    /// True if `flow` was DNATed by this mapping: it was addressed to `listen` and answered by `backend`.
    pub fn owns(&self, flow: &Flow) -> bool {
        flow.protocol == self.protocol
            && flow.reply_src == self.backend
            && flow.orig_dst.port() == self.listen.port()
            && flow.orig_dst.is_ipv4() == self.listen.is_ipv4()
            && (self.listen.ip().is_unspecified() || flow.orig_dst.ip() == self.listen.ip())
    }

    /// True if `flow` was addressed to `listen` (DNATed or host-bound): what a conntrack flush removes.
    pub fn addressed(&self, flow: &Flow) -> bool {
        flow.protocol == self.protocol
            && flow.orig_dst.port() == self.listen.port()
            && flow.orig_dst.is_ipv4() == self.listen.is_ipv4()
            && (self.listen.ip().is_unspecified() || flow.orig_dst.ip() == self.listen.ip())
    }
}

/// A conntrack entry, reduced to what idle detection needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// tcp/udp.
    pub protocol: Protocol,
    /// Client address (original direction source).
    pub orig_src: SocketAddr,
    /// Address the client dialled (original direction destination, before DNAT).
    pub orig_dst: SocketAddr,
    /// Who answers (reply direction source): the backend after DNAT, else `orig_dst`.
    pub reply_src: SocketAddr,
}

/// What the conntrack subscription reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    /// A flow was confirmed.
    New(Flow),
    /// A flow ended (closed, timed out or flushed).
    Destroy(Flow),
    /// The full set of current flows (periodic dump, or after lost events).
    Resync(Vec<Flow>),
}

/// Dataplane failures; the text names the object and the kernel's or nft's message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DataplaneError {
    /// Used after close.
    #[error("closed")]
    Closed,
    /// A group name was registered twice.
    #[error("group {0:?} already registered")]
    GroupExists(String),
    /// Unknown group.
    #[error("no such group {0:?}")]
    NoGroup(String),
    /// nft or netlink refused.
    #[error("{0}")]
    Kernel(String),
}

/// What the engine needs from the kernel. Every call is one atomic change (one nft transaction).
pub trait Dataplane: Send + 'static {
    /// Registers a group with its mappings and installs their ct timeout policies; DNAT stays off.
    fn add_group(
        &mut self,
        group: &str,
        mappings: &[Mapping],
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Registers a group or replaces the mappings of an existing one, keeping its on/off state (a reload).
    fn set_group(
        &mut self,
        group: &str,
        mappings: &[Mapping],
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Removes a group with its DNAT elements and ct timeouts (a reload removed its target).
    fn remove_group(
        &mut self,
        group: &str,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Turns the group's DNAT elements on or off, all mappings in one batch; a no-op if already so.
    fn set_enabled(
        &mut self,
        group: &str,
        on: bool,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Deletes the conntrack entries addressed to the group's mappings (`udp_only` limits it to UDP).
    fn flush_flows(
        &mut self,
        group: &str,
        udp_only: bool,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;
    /// Current DNATed and host-bound flows (for rebuild after a restart and periodic resync).
    fn dump_flows(&mut self) -> impl Future<Output = Result<Vec<Flow>, DataplaneError>> + Send;
    /// Compares the kernel's state with what this dataplane has applied and, if anyone removed or changed any of
    /// it, re-applies the whole state in one transaction. Returns what was missing or changed, `None` if intact.
    fn heal(&mut self) -> impl Future<Output = Result<Option<String>, DataplaneError>> + Send {
        async { Ok(None) }
    }
    /// Removes everything this dataplane created (the nft table).
    fn close(&mut self) -> impl Future<Output = Result<(), DataplaneError>> + Send;
}
