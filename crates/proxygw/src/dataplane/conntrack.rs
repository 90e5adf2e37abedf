//! conntrack over netlink (NETLINK_NETFILTER): dump, delete, and the NEW/DESTROY event subscription that drives
//! idle detection. Sockets are blocking and live on their own threads or `spawn_blocking`, never on the runtime.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr as NlAddr};

use super::FlowSink;
use super::{DataplaneError, Flow, FlowEvent};
use crate::config::Protocol;
use crate::log::Logger;

/// NFNLGRP_CONNTRACK_NEW.
const GROUP_NEW: u32 = 1;
/// NFNLGRP_CONNTRACK_UPDATE: TCP state changes, so a closed connection counts as ended at FIN/RST time
/// instead of when its TIME_WAIT entry expires minutes later.
const GROUP_UPDATE: u32 = 2;
/// NFNLGRP_CONNTRACK_DESTROY.
const GROUP_DESTROY: u32 = 3;
/// Receive buffer for the event socket; large so bursts of short flows do not overflow (ENOBUFS → resync).
pub const EVENT_RCVBUF: usize = 8 << 20;
/// How often the subscription re-dumps the table as a safety net against lost events.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(60);
/// Socket read timeout, so the event thread notices shutdown.
const POLL: Duration = Duration::from_millis(500);
/// Longest a dump may take before it is abandoned.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

fn kernel(e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Kernel(format!("conntrack: {e}"))
}

pub(super) fn open(groups: &[u32]) -> Result<Socket, DataplaneError> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(kernel)?;
    s.bind_auto().map_err(kernel)?;
    s.connect(&NlAddr::new(0, 0)).map_err(kernel)?;
    for g in groups {
        s.add_membership(*g).map_err(kernel)?;
    }
    nix::sys::socket::setsockopt(
        &s.as_fd(),
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, POLL.as_micros() as i64),
    )
    .map_err(kernel)?;
    Ok(s)
}

fn send(
    s: &Socket,
    flags: u16,
    family: NetfilterProtoFamily,
    msg: ConntrackMessage,
) -> Result<(), DataplaneError> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    let mut packet = NetlinkMessage::new(
        hdr,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            msg,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    s.send(&buf, 0).map_err(kernel)?;
    Ok(())
}

/// kernel `tcp_conntrack` states in which the connection is over (both FINs seen, or reset).
const TCP_TIME_WAIT: u8 = 7;
const TCP_CLOSE: u8 = 8;

/// True if the entry is a TCP connection that has already closed (TIME_WAIT or CLOSE).
fn ended(attrs: &[ConntrackAttribute]) -> bool {
    attrs.iter().any(|a| match a {
        ConntrackAttribute::CtaProtoInfo(infos) => infos.iter().any(|i| match i {
            ProtoInfo::TCP(t) => t.iter().any(
                |x| matches!(x, ProtoInfoTCP::State(s) if *s == TCP_TIME_WAIT || *s == TCP_CLOSE),
            ),
            _ => false,
        }),
        _ => false,
    })
}

/// Extracts the flow from a conntrack message's attributes; `None` for protocols other than TCP/UDP.
fn flow_of(attrs: &[ConntrackAttribute]) -> Option<Flow> {
    fn tuple(t: &[Tuple]) -> Option<(u8, SocketAddr, SocketAddr)> {
        let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
        for part in t {
            match part {
                Tuple::Ip(ips) => {
                    for ip in ips {
                        match ip {
                            IPTuple::SourceAddress(a) => src = Some(*a),
                            IPTuple::DestinationAddress(a) => dst = Some(*a),
                            _ => {}
                        }
                    }
                }
                Tuple::Proto(ps) => {
                    for p in ps {
                        match p {
                            ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                            ProtoTuple::SourcePort(n) => sport = Some(*n),
                            ProtoTuple::DestinationPort(n) => dport = Some(*n),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let (s, d): (IpAddr, IpAddr) = (src?, dst?);
        Some((
            proto?,
            SocketAddr::new(s, sport?),
            SocketAddr::new(d, dport?),
        ))
    }
    let (mut orig, mut reply) = (None, None);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            _ => {}
        }
    }
    let (p, orig_src, orig_dst) = orig?;
    let (_, reply_src, _) = reply?;
    Some(Flow {
        protocol: Protocol::from_number(p)?,
        orig_src,
        orig_dst,
        reply_src,
    })
}

/// Every live TCP/UDP conntrack entry of this network namespace (both families); TCP entries that reached
/// TIME_WAIT or CLOSE have ended and are left out.
pub fn dump() -> Result<Vec<Flow>, DataplaneError> {
    dump_entries(false)
}

/// Like [`dump`]; `with_ended` keeps the ended TCP entries too (what a flush must remove: a client reusing its
/// source port within TIME_WAIT would otherwise still be NATed by the old entry).
fn dump_entries(with_ended: bool) -> Result<Vec<Flow>, DataplaneError> {
    let s = open(&[])?;
    let mut out = Vec::new();
    for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
        send(
            &s,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            ConntrackMessage::Get(vec![]),
        )?;
        let deadline = Instant::now() + DUMP_TIMEOUT;
        'recv: loop {
            if Instant::now() > deadline {
                return Err(kernel("dump timed out"));
            }
            let (buf, _) = match s.recv_from_full() {
                Ok(x) => x,
                Err(e) if super::read_timed_out(&e) => continue,
                Err(e) => return Err(kernel(e)),
            };
            let mut off = 0;
            while off < buf.len() {
                let msg =
                    NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..]).map_err(kernel)?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => break 'recv,
                    NetlinkPayload::Error(e) => return Err(kernel(format!("dump: {e:?}"))),
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                        ..
                    }) if with_ended || !ended(&attrs) => out.extend(flow_of(&attrs)),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
    Ok(out)
}

/// Deletes the entries for which `pick` is true; returns how many were removed.
pub fn delete_where(pick: impl Fn(&Flow) -> bool) -> Result<usize, DataplaneError> {
    let flows = dump_entries(true)?;
    let s = open(&[])?;
    let mut n = 0;
    for f in flows.iter().filter(|f| pick(f)) {
        let family = if f.orig_src.is_ipv4() {
            NetfilterProtoFamily::IPv4
        } else {
            NetfilterProtoFamily::IPv6
        };
        let tuple = vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(f.orig_src.ip()),
                IPTuple::DestinationAddress(f.orig_dst.ip()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(f.protocol.number().into()),
                ProtoTuple::SourcePort(f.orig_src.port()),
                ProtoTuple::DestinationPort(f.orig_dst.port()),
            ]),
        ];
        // No ACK requested: an entry that vanished meanwhile is not an error worth reporting.
        send(
            &s,
            NLM_F_REQUEST,
            family,
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple)]),
        )?;
        n += 1;
    }
    Ok(n)
}

/// The event subscription: a thread that forwards NEW/DESTROY events (and periodic resyncs) into the engine.
pub struct Subscription {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscription {
    /// Opens the event socket now (so failures surface at startup) and starts forwarding into `sink`.
    pub fn start(sink: FlowSink, log: Logger) -> Result<Self, DataplaneError> {
        let s = open(&[GROUP_NEW, GROUP_UPDATE, GROUP_DESTROY])?;
        // Best effort: a small buffer only means more resyncs.
        let _ = s.set_rx_buf_sz(EVENT_RCVBUF);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("conntrack-events".into())
            .spawn(move || event_loop(s, sink, log, flag))
            .map_err(kernel)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn event_loop(s: Socket, sink: FlowSink, log: Logger, stop: Arc<AtomicBool>) {
    let mut next_resync = Instant::now() + RESYNC_PERIOD;
    let mut resync_now = false;
    while !stop.load(Ordering::SeqCst) {
        if resync_now || Instant::now() >= next_resync {
            match dump() {
                Ok(flows) => {
                    if !sink.blocking_send(FlowEvent::Resync(flows)) {
                        return;
                    }
                }
                Err(e) => log.warn("conntrack resync failed", &[("err", &e)]),
            }
            resync_now = false;
            next_resync = Instant::now() + RESYNC_PERIOD;
        }
        let buf = match s.recv_from_full() {
            Ok((b, _)) => b,
            Err(e) if super::read_timed_out(&e) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Events were lost: the dump tells the truth again.
                log.warn("conntrack events lost; resyncing", &[]);
                resync_now = true;
                continue;
            }
            Err(e) => {
                log.error("conntrack event socket failed", &[("err", &e)]);
                std::thread::sleep(POLL);
                continue;
            }
        };
        let mut off = 0;
        while off < buf.len() {
            let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..]) else {
                break;
            };
            let len = msg.header.length as usize;
            let ev = match msg.payload {
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(m),
                    ..
                }) => match m {
                    // NEW and UPDATE share a message type; a TCP entry that reached TIME_WAIT/CLOSE has ended.
                    ConntrackMessage::New(a) if ended(&a) => flow_of(&a).map(FlowEvent::Destroy),
                    ConntrackMessage::New(a) => flow_of(&a).map(FlowEvent::New),
                    ConntrackMessage::Delete(a) => flow_of(&a).map(FlowEvent::Destroy),
                    _ => None,
                },
                _ => None,
            };
            if let Some(ev) = ev {
                if !sink.blocking_send(ev) {
                    return;
                }
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}
