//! The kernel dataplane: one nftables table (`inet proxygw` by default) driven through `nft -f -`, one atomic
//! transaction per change, plus conntrack over netlink. See the README for why nft and not raw netlink.
//!
//! Every string fed to nft is built from typed values (IP addresses, ports, protocol names, hex hashes), never
//! from config text, so the script cannot be injected into.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{conntrack, Dataplane, DataplaneError, Flow, Mapping};
use crate::config::Protocol;

/// The original's table name.
pub const DEFAULT_TABLE: &str = "proxygw";
/// Longest one nft transaction may take.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// `ct_%016x` of FNV-1a-64 over protocol byte, address bytes and big-endian port (the original's naming).
pub fn timeout_name(protocol: Protocol, listen: SocketAddr) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    feed(protocol.number());
    match listen.ip() {
        std::net::IpAddr::V4(a) => a.octets().into_iter().for_each(&mut feed),
        std::net::IpAddr::V6(a) => a.octets().into_iter().for_each(&mut feed),
    }
    listen.port().to_be_bytes().into_iter().for_each(&mut feed);
    format!("ct_{h:016x}")
}

fn fam(a: SocketAddr) -> (&'static str, &'static str, &'static str) {
    // (map suffix, nft address family keyword, nfproto)
    if a.is_ipv4() {
        ("4", "ip", "ipv4")
    } else {
        ("6", "ip6", "ipv6")
    }
}

/// The map element(s) of one mapping, as `add`/`delete` commands.
fn element_cmds(table: &str, verb: &str, m: &Mapping, out: &mut String) {
    let (sfx, _, _) = fam(m.listen);
    let value = format!("{} . {}", m.backend.ip(), m.backend.port());
    if m.listen.ip().is_unspecified() {
        let _ = writeln!(
            out,
            "{verb} element inet {table} dnatWildcard{sfx} {{ {} . {} : {value} }}",
            m.protocol,
            m.listen.port()
        );
    } else {
        let _ = writeln!(
            out,
            "{verb} element inet {table} dnatSpecific{sfx} {{ {} . {} . {} : {value} }}",
            m.protocol,
            m.listen.ip(),
            m.listen.port()
        );
    }
    if m.masquerade {
        let _ = writeln!(
            out,
            "{verb} element inet {table} masq{sfx} {{ {} . {} . {} }}",
            m.protocol,
            m.backend.ip(),
            m.backend.port()
        );
    }
}

/// The whole table: created empty of elements; a stale table of the same name is replaced in the same batch.
pub fn table_script(table: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {table}");
    let _ = writeln!(s, "delete table inet {table}");
    let _ = writeln!(s, "table inet {table} {{");
    for (sfx, addr) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        let _ = writeln!(s, "  map dnatSpecific{sfx} {{ type inet_proto . {addr} . inet_service : {addr} . inet_service; }}");
        let _ = writeln!(
            s,
            "  map dnatWildcard{sfx} {{ type inet_proto . inet_service : {addr} . inet_service; }}"
        );
        let _ = writeln!(
            s,
            "  set masq{sfx} {{ type inet_proto . {addr} . inet_service; }}"
        );
    }
    // Specific before wildcard; `fib daddr type local` keeps transit traffic (routed through this host to other
    // machines) out of wildcard frontends. `output` does the same for connections made on the host itself.
    let dnat_rules = |s: &mut String| {
        for (sfx, kw, nf) in [("4", "ip", "ipv4"), ("6", "ip6", "ipv6")] {
            let _ = writeln!(
                s,
                "    fib daddr type local meta nfproto {nf} dnat {kw} to meta l4proto . {kw} daddr . th dport map @dnatSpecific{sfx}"
            );
        }
        for (sfx, kw, nf) in [("4", "ip", "ipv4"), ("6", "ip6", "ipv6")] {
            let _ = writeln!(
                s,
                "    fib daddr type local meta nfproto {nf} dnat {kw} to meta l4proto . th dport map @dnatWildcard{sfx}"
            );
        }
    };
    let _ = writeln!(
        s,
        "  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;"
    );
    dnat_rules(&mut s);
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain output {{ type nat hook output priority -100; policy accept;"
    );
    dnat_rules(&mut s);
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;"
    );
    for (sfx, kw, nf) in [("4", "ip", "ipv4"), ("6", "ip6", "ipv6")] {
        let _ = writeln!(
            s,
            "    ct status dnat meta nfproto {nf} meta l4proto . {kw} daddr . th dport @masq{sfx} masquerade"
        );
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain timeouts {{ type filter hook input priority filter; policy accept; }}"
    );
    let _ = writeln!(s, "}}");
    s
}

/// ct timeout object and its rule for one mapping (host-bound flows to `listen`, spec §6.4).
fn timeout_cmds(table: &str, m: &Mapping, out: &mut String) {
    let name = timeout_name(m.protocol, m.listen);
    let (_, kw, nf) = fam(m.listen);
    let secs = m.flow_timeout.as_secs().clamp(1, u64::from(u32::MAX));
    let policy = match m.protocol {
        Protocol::Tcp => format!(
            "established: {secs}, fin_wait: {secs}, close_wait: {secs}, last_ack: {secs}, time_wait: {secs}, close: {secs}"
        ),
        Protocol::Udp => format!("unreplied: {secs}, replied: {secs}"),
    };
    let _ = writeln!(
        out,
        "add ct timeout inet {table} {name} {{ protocol {}; l3proto {kw}; policy = {{ {policy} }}; }}",
        m.protocol
    );
    let daddr = if m.listen.ip().is_unspecified() {
        String::new()
    } else {
        format!("{kw} daddr {} ", m.listen.ip())
    };
    let _ = writeln!(
        out,
        "add rule inet {table} timeouts meta nfproto {nf} meta l4proto {} {daddr}th dport {} ct timeout set \"{name}\"",
        m.protocol,
        m.listen.port()
    );
}

/// Runs one nft transaction from a script on stdin.
pub async fn run_nft(script: &str) -> Result<(), DataplaneError> {
    let fut = async {
        let mut child = tokio::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DataplaneError::Kernel(format!("run nft: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| DataplaneError::Kernel(format!("write to nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| DataplaneError::Kernel(format!("wait for nft: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err
                .lines()
                .find(|l| l.starts_with("Error"))
                .unwrap_or(err.trim());
            Err(DataplaneError::Kernel(format!("nft: {first}")))
        }
    };
    tokio::time::timeout(NFT_TIMEOUT, fut)
        .await
        .map_err(|_| DataplaneError::Kernel(format!("nft: no answer within {NFT_TIMEOUT:?}")))?
}

/// Most changed lines a heal names in its log line; the rest are counted.
const HEAL_REPORT_LINES: usize = 8;

/// `nft list table inet <table>`: `None` if the table does not exist.
async fn list_table(table: &str) -> Result<Option<String>, DataplaneError> {
    let fut = tokio::process::Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(NFT_TIMEOUT, fut)
        .await
        .map_err(|_| DataplaneError::Kernel(format!("nft list: no answer within {NFT_TIMEOUT:?}")))?
        .map_err(|e| DataplaneError::Kernel(format!("run nft list: {e}")))?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        return Ok(None);
    }
    Err(DataplaneError::Kernel(format!(
        "nft list table inet {table}: {}",
        err.lines()
            .find(|l| l.starts_with("Error"))
            .unwrap_or(err.trim())
    )))
}

/// The listing as a sorted multiset of trimmed lines, so element or object order does not count as a change.
fn listing_lines(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    v.sort_unstable();
    v
}

/// Lines of `want` that `have` lacks (both sorted), for the heal log: what someone removed or changed.
fn missing_lines(want: &[String], have: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut h = have.iter().peekable();
    for w in want {
        while h.next_if(|x| *x < w).is_some() {}
        if h.next_if(|x| *x == w).is_none() {
            out.push(w.clone());
        }
    }
    out
}

/// The nft + conntrack dataplane.
pub struct NftDataplane {
    table: String,
    groups: BTreeMap<String, (Vec<Mapping>, bool)>,
    closed: bool,
    /// The table as listed right after this dataplane's last transaction; what [`Dataplane::heal`] compares to.
    applied: Vec<String>,
}

impl NftDataplane {
    /// Creates table `table`, atomically replacing a stale one left by a crashed run.
    pub async fn new(table: &str) -> Result<Self, DataplaneError> {
        if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(DataplaneError::Kernel(format!(
                "invalid table name {table:?}"
            )));
        }
        run_nft(&table_script(table)).await?;
        let mut dp = Self {
            table: table.into(),
            groups: BTreeMap::new(),
            closed: false,
            applied: Vec::new(),
        };
        dp.record_applied().await?;
        Ok(dp)
    }

    /// Everything this dataplane wants in the kernel, as one script that replaces the table atomically:
    /// the table, every group's ct timeouts, and the DNAT elements of the enabled groups.
    fn whole_state(&self) -> String {
        let mut script = table_script(&self.table);
        for (mappings, enabled) in self.groups.values() {
            for m in mappings {
                timeout_cmds(&self.table, m, &mut script);
                if *enabled {
                    element_cmds(&self.table, "add", m, &mut script);
                }
            }
        }
        script
    }

    /// Lists the table as it is now and keeps it as the state to defend.
    async fn record_applied(&mut self) -> Result<(), DataplaneError> {
        let text = list_table(&self.table).await?.unwrap_or_default();
        self.applied = listing_lines(&text);
        Ok(())
    }

    /// Re-applies the whole state in one transaction and records it.
    async fn reapply(&mut self) -> Result<(), DataplaneError> {
        run_nft(&self.whole_state()).await?;
        self.record_applied().await
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn group(&self, name: &str) -> Result<&(Vec<Mapping>, bool), DataplaneError> {
        if self.closed {
            return Err(DataplaneError::Closed);
        }
        self.groups
            .get(name)
            .ok_or_else(|| DataplaneError::NoGroup(name.into()))
    }
}

impl Dataplane for NftDataplane {
    async fn add_group(&mut self, group: &str, mappings: &[Mapping]) -> Result<(), DataplaneError> {
        if self.closed {
            return Err(DataplaneError::Closed);
        }
        if self.groups.contains_key(group) {
            return Err(DataplaneError::GroupExists(group.into()));
        }
        let mut script = String::new();
        for m in mappings {
            timeout_cmds(&self.table, m, &mut script);
        }
        self.groups.insert(group.into(), (mappings.to_vec(), false));
        if !script.is_empty() {
            if let Err(e) = run_nft(&script).await {
                self.groups.remove(group);
                return Err(e);
            }
            self.record_applied().await?;
        }
        Ok(())
    }

    async fn set_group(&mut self, group: &str, mappings: &[Mapping]) -> Result<(), DataplaneError> {
        if self.closed {
            return Err(DataplaneError::Closed);
        }
        let old = match self.groups.get_mut(group) {
            None => return self.add_group(group, mappings).await,
            Some(g) if g.0 == mappings => return Ok(()),
            Some(g) => std::mem::replace(&mut g.0, mappings.to_vec()),
        };
        // One transaction replaces the table with the new state; conntrack keeps the NAT of established flows.
        if let Err(e) = self.reapply().await {
            if let Some(g) = self.groups.get_mut(group) {
                g.0 = old;
            }
            return Err(e);
        }
        Ok(())
    }

    async fn remove_group(&mut self, group: &str) -> Result<(), DataplaneError> {
        if self.closed {
            return Err(DataplaneError::Closed);
        }
        if self.groups.remove(group).is_some() {
            self.reapply().await?;
        }
        Ok(())
    }

    async fn set_enabled(&mut self, group: &str, on: bool) -> Result<(), DataplaneError> {
        let (mappings, enabled) = self.group(group)?;
        if *enabled == on {
            return Ok(());
        }
        let mut script = String::new();
        for m in mappings {
            element_cmds(
                &self.table,
                if on { "add" } else { "delete" },
                m,
                &mut script,
            );
        }
        if script.is_empty() {
            return Ok(());
        }
        let result = run_nft(&script).await;
        if let Some(g) = self.groups.get_mut(group) {
            g.1 = on;
        }
        match result {
            Ok(()) => self.record_applied().await,
            // Someone changed the table under us (a flushed ruleset makes every delete fail with ENOENT):
            // the whole state, with this change, is re-applied instead.
            Err(e) => self.reapply().await.map_err(|e2| {
                if let Some(g) = self.groups.get_mut(group) {
                    g.1 = !on;
                }
                DataplaneError::Kernel(format!("{e}; re-applying the whole table: {e2}"))
            }),
        }
    }

    async fn flush_flows(&mut self, group: &str, udp_only: bool) -> Result<(), DataplaneError> {
        let mappings = self.group(group)?.0.clone();
        if udp_only && mappings.iter().all(|m| m.protocol != Protocol::Udp) {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            conntrack::delete_where(|f: &Flow| {
                (!udp_only || f.protocol == Protocol::Udp)
                    && mappings.iter().any(|m| m.addressed(f) || m.owns(f))
            })
        })
        .await
        .map_err(|e| DataplaneError::Kernel(format!("conntrack flush task: {e}")))?
        .map(|_| ())
    }

    async fn dump_flows(&mut self) -> Result<Vec<Flow>, DataplaneError> {
        tokio::task::spawn_blocking(conntrack::dump)
            .await
            .map_err(|e| DataplaneError::Kernel(format!("conntrack dump task: {e}")))?
    }

    async fn heal(&mut self) -> Result<Option<String>, DataplaneError> {
        if self.closed {
            return Ok(None);
        }
        let now = list_table(&self.table).await?;
        let missing = match &now {
            None => vec![format!("table inet {}", self.table)],
            Some(text) => {
                let have = listing_lines(text);
                if have == self.applied {
                    return Ok(None);
                }
                missing_lines(&self.applied, &have)
            }
        };
        self.reapply().await?;
        let mut report = missing
            .iter()
            .take(HEAL_REPORT_LINES)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if missing.is_empty() {
            report = "nothing missing; lines added or changed".into();
        } else if missing.len() > HEAL_REPORT_LINES {
            let _ = write!(report, "; and {} more", missing.len() - HEAL_REPORT_LINES);
        }
        Ok(Some(report))
    }

    async fn close(&mut self) -> Result<(), DataplaneError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        run_nft(&format!("delete table inet {}\n", self.table)).await
    }
}

impl Drop for NftDataplane {
    fn drop(&mut self) {
        if !self.closed {
            // Last resort (e.g. a panic unwinding past the engine): never leave DNAT rules behind.
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "inet", &self.table])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(listen: &str, backend: &str, masquerade: bool) -> Mapping {
        Mapping {
            protocol: Protocol::Tcp,
            listen: listen.parse().unwrap(),
            backend: backend.parse().unwrap(),
            flow_timeout: Duration::from_secs(60),
            masquerade,
        }
    }

    #[test]
    fn elements_pick_the_right_map() {
        let mut s = String::new();
        element_cmds(
            "proxygw",
            "add",
            &m("0.0.0.0:80", "10.0.1.2:8080", false),
            &mut s,
        );
        element_cmds(
            "proxygw",
            "delete",
            &m("[fd00::1]:80", "[fd00::2]:8080", true),
            &mut s,
        );
        assert_eq!(
            s,
            "add element inet proxygw dnatWildcard4 { tcp . 80 : 10.0.1.2 . 8080 }\n\
             delete element inet proxygw dnatSpecific6 { tcp . fd00::1 . 80 : fd00::2 . 8080 }\n\
             delete element inet proxygw masq6 { tcp . fd00::2 . 8080 }\n"
        );
    }

    #[test]
    fn missing_lines_are_those_the_kernel_lost() {
        let want =
            listing_lines("table inet t {\n  chain a {\n    rule x\n  }\n  chain b {\n  }\n}\n");
        let have = listing_lines("table inet t {\n  chain b {\n  }\n  extra\n}\n");
        assert_eq!(missing_lines(&want, &have), ["chain a {", "rule x", "}"]);
        assert!(missing_lines(&want, &want).is_empty());
    }

    #[test]
    fn timeout_names_are_fnv1a() {
        let a = timeout_name(Protocol::Tcp, "10.0.0.5:80".parse().unwrap());
        assert_eq!(a.len(), 19);
        assert!(a.starts_with("ct_"));
        assert_ne!(
            a,
            timeout_name(Protocol::Udp, "10.0.0.5:80".parse().unwrap())
        );
        // FNV-1a-64 of the empty input is the offset basis; check one byte by hand: 0x06.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in [6u8, 10, 0, 0, 5, 0, 80] {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        assert_eq!(a, format!("ct_{h:016x}"));
    }
}
