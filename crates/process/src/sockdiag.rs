//! TCP LISTEN sockets of this network namespace via `NETLINK_SOCK_DIAG` (what `ss -tl` uses).
//!
//! Reading `/proc/net/tcp` walks every bucket of the established-connection hash even when it is empty,
//! which costs milliseconds per read on large machines; a sock_diag dump filtered to LISTEN only walks the
//! listening hash. The request and reply are fixed C layouts from `linux/inet_diag.h`, built and parsed
//! here by byte offset so no `unsafe` is needed.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// `SOCK_DIAG_BY_FAMILY` message type.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const DUMP_FLAGS: u16 = 0x001 | 0x300;
/// `NLMSG_ERROR` and `NLMSG_DONE` message types.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `1 << TCP_LISTEN`.
const LISTEN_STATE_MASK: u32 = 1 << 10;
/// Address families as numbered on Linux.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDR: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`.
const REQ_LEN: usize = 56;
/// `sizeof(struct inet_diag_msg)`.
const MSG_LEN: usize = 72;
/// Receive buffer: dump datagrams are at most 32 KiB (kernel `netlink_dump` cap); twice that is safe.
const RECV_BUF: usize = 64 * 1024;
/// The kernel answers a dump at once; this bounds a wedged reply.
const RECV_TIMEOUT_SECS: i64 = 2;

/// Every TCP socket in LISTEN state in the caller's network namespace, by socket inode.
pub(crate) fn listen_sockets() -> io::Result<HashMap<u64, SocketAddr>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::new(RECV_TIMEOUT_SECS, 0),
    )?;
    let kernel = NetlinkAddr::new(0, 0);
    let mut out = HashMap::new();
    let mut buf = vec![0u8; RECV_BUF];
    for (seq, family) in [(1u32, AF_INET), (2, AF_INET6)] {
        sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &request(seq, family),
            &kernel,
            MsgFlags::empty(),
        )?;
        'dump: loop {
            let n = recv(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &mut buf,
                MsgFlags::empty(),
            )?;
            if n == 0 {
                break;
            }
            let mut off = 0;
            while off + NLMSG_HDR <= n {
                let len = u32_at(&buf, off) as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if len < NLMSG_HDR || off + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated sock_diag reply",
                    ));
                }
                match kind {
                    NLMSG_DONE => break 'dump,
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(u32_at(&buf, off + NLMSG_HDR).to_ne_bytes());
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some((inode, addr)) = parse_msg(&buf[off + NLMSG_HDR..off + len]) {
                            out.insert(inode, addr);
                        }
                    }
                    _ => {}
                }
                off += (len + 3) & !3;
            }
        }
    }
    Ok(out)
}

fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
}

/// `nlmsghdr` + `inet_diag_req_v2` asking for TCP sockets of `family` in LISTEN.
fn request(seq: u32, family: u8) -> [u8; NLMSG_HDR + REQ_LEN] {
    let mut r = [0u8; NLMSG_HDR + REQ_LEN];
    r[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r[6..8].copy_from_slice(&DUMP_FLAGS.to_ne_bytes());
    r[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: addressed to the kernel.
    r[16] = family;
    r[17] = 6; // IPPROTO_TCP
    r[20..24].copy_from_slice(&LISTEN_STATE_MASK.to_ne_bytes());
    // The socket id (48 bytes) stays zero: no filter on addresses or cookie.
    r
}

/// Parse one `inet_diag_msg` into (inode, bound address).
fn parse_msg(m: &[u8]) -> Option<(u64, SocketAddr)> {
    if m.len() < MSG_LEN {
        return None;
    }
    let family = m[0];
    let port = u16::from_be_bytes([m[4], m[5]]);
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(m[8], m[9], m[10], m[11])),
        AF_INET6 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&m[8..24]);
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    let inode = u64::from(u32_at(m, 68));
    Some((inode, SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_listener_of_this_process_with_its_inode() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let socks = listen_sockets().unwrap();
        let (inode, _) = socks
            .iter()
            .find(|(_, a)| **a == addr)
            .expect("listener in dump");
        // The inode matches the fd link of our listener; the connected client socket is not listed.
        let link = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&l)
        ))
        .unwrap();
        assert_eq!(link.to_string_lossy(), format!("socket:[{inode}]"));
        assert!(!socks.values().any(|a| *a == c.local_addr().unwrap()));
    }

    #[test]
    fn sees_ipv6_listeners() {
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(listen_sockets().unwrap().values().any(|a| *a == addr));
    }

    #[test]
    fn short_messages_are_ignored() {
        assert!(parse_msg(&[2; 10]).is_none());
        let mut m = [0u8; MSG_LEN];
        m[0] = 99;
        assert!(parse_msg(&m).is_none());
    }
}
