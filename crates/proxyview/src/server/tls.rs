//! TLS on the server's ports: certificates from PEM files, one per host by SNI with a default,
//! reloaded without dropping connections, and the plain-HTTP port that only redirects.
//!
//! - **rustls with its defaults** (aws-lc-rs, TLS 1.3 and 1.2, its cipher suites): nothing to
//!   tune that a tunnel server should tune differently. ALPN offers only `http/1.1`, since both
//!   ports speak HTTP/1.1 (the agents' WebSocket upgrade too).
//! - **SNI.** Each certificate serves the names given in `hosts`, else the DNS names in the
//!   certificate (exact, or `*.example.com` for one label). A ClientHello with no SNI or a name no
//!   certificate serves gets the first certificate (the default): a client that checks names gets
//!   a clean `bad_certificate` alert of its own, never a hang.
//! - **Reload.** A [`CertStore`] holds the current set behind a lock read once per handshake, so a
//!   reload swaps what *new* handshakes see while established connections keep the keys they
//!   negotiated. The files are polled (size and mtime) every `reloadSecs` and read again at once
//!   on SIGHUP. A set that fails to load (missing file, key not matching the certificate, expired)
//!   is logged and the previous set stays; at start the same failure is an error naming the file.
//! - **Bad input.** The handshake runs under the header-read timeout, so a half-open or silent
//!   client costs one task until then; garbage and oversized ClientHellos are refused by rustls
//!   with an alert.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{error, info};

use crate::config::{CertFiles, TlsSettings};

/// Certificates of one port, chosen by SNI.
#[derive(Debug)]
struct CertSet {
    /// The first configured certificate; `None` with ACME only (unknown SNI → handshake alert).
    default: Option<Arc<CertifiedKey>>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `example.com` for a `*.example.com` name.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// (size, mtime) of every file, to notice a change.
    stamps: Vec<(u64, Option<SystemTime>)>,
}

impl CertSet {
    fn pick(
        &self,
        name: Option<&str>,
        acme: &HashMap<String, Arc<CertifiedKey>>,
    ) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else {
            return self.default.clone();
        };
        if let Some(c) = self.exact.get(name).or_else(|| acme.get(name)) {
            return Some(c.clone());
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// The live certificate set of one port; the rustls resolver.
#[derive(Debug)]
pub struct CertStore {
    settings: TlsSettings,
    current: RwLock<Arc<CertSet>>,
    /// Certificates obtained by ACME, by host name.
    pub(super) acme: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 challenge certificates being validated, by host name.
    pub(super) challenges: std::sync::Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub(super) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let validating = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN));
        if validating {
            // Only a pending challenge answers acme-tls/1; nothing else is served on it.
            let c = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
            return name.and_then(|n| c.get(&n).cloned());
        }
        let acme = self.acme.read().unwrap_or_else(|p| p.into_inner());
        self.current().pick(name.as_deref(), &acme)
    }
}

impl CertStore {
    fn current(&self) -> Arc<CertSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files again when they changed (or always, with `force`); keeps the old set and
    /// logs when the new one is unusable. Returns whether a new set is in use.
    pub fn reload(&self, force: bool) -> bool {
        let stamps = stamps(&self.settings);
        if !force && stamps == self.current().stamps {
            return false;
        }
        match load_set(&self.settings) {
            Ok(set) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                info!(port = %self.settings.field, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                // Remember the stamps so a broken file is reported once, not every poll.
                let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
                *cur = Arc::new(CertSet {
                    default: cur.default.clone(),
                    exact: cur.exact.clone(),
                    wildcard: cur.wildcard.clone(),
                    stamps,
                });
                error!(port = %self.settings.field, error = %format!("{e:#}"), "TLS certificate reload failed; the previous certificates stay in use");
                false
            }
        }
    }
}

/// A port's TLS acceptor and the store behind it.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    store: Arc<CertStore>,
}

impl ServerTls {
    /// Loads every certificate; an unusable one is an error naming its config field and file.
    pub fn load(settings: &TlsSettings) -> anyhow::Result<Self> {
        let set = load_set(settings)?;
        let store = Arc::new(CertStore {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(set)),
            acme: RwLock::default(),
            challenges: std::sync::Mutex::default(),
        });
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        if settings.acme.is_some() {
            cfg.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            store,
        })
    }

    /// The certificate store (ACME adds to it).
    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Polls the files every `reloadSecs` and reloads at once on SIGHUP, until `stopping`.
    pub fn spawn_reloader(&self, mut stopping: tokio::sync::watch::Receiver<bool>) {
        let store = self.store.clone();
        let every = store.settings.reload;
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                    _ = stopping.wait_for(|s| *s) => return,
                };
                // File reads and key parsing off the runtime's threads.
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || s.reload(force)).await;
            }
        });
    }
}

fn stamps(settings: &TlsSettings) -> Vec<(u64, Option<SystemTime>)> {
    settings
        .certificates
        .iter()
        .flat_map(|c| [&c.cert, &c.key])
        .map(|p| match std::fs::metadata(p) {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(_) => (0, None),
        })
        .collect()
}

fn load_set(settings: &TlsSettings) -> anyhow::Result<CertSet> {
    let stamps = stamps(settings);
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for c in &settings.certificates {
        let Loaded { key, names, .. } = load_one(c)?;
        let key = Arc::new(key);
        for n in c.hosts.clone().unwrap_or(names) {
            match n.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_string()),
                None => exact.entry(n),
            }
            .or_insert_with(|| key.clone());
        }
        default.get_or_insert(key);
    }
    Ok(CertSet {
        default,
        exact,
        wildcard,
        stamps,
    })
}

/// A checked certificate and what the store needs to know about it.
pub(super) struct Loaded {
    pub key: CertifiedKey,
    /// DNS names of the leaf.
    pub names: Vec<String>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

/// One chain and key, checked: the key matches the leaf, and the leaf is valid now.
pub(super) fn load_one(c: &CertFiles) -> anyhow::Result<Loaded> {
    let name = |p: &Path| format!("{}.{} {}", c.field, field_of(c, p), p.display());
    let chain = CertificateDer::pem_file_iter(&c.cert)
        .with_context(|| format!("{}: cannot read", name(&c.cert)))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: bad PEM", name(&c.cert)))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{}: no CERTIFICATE block found",
        name(&c.cert)
    );
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .with_context(|| format!("{}: no usable private key", name(&c.key)))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("{}: unsupported private key", name(&c.key)))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().with_context(|| {
        format!(
            "{}: the key does not belong to the certificate in {}",
            name(&c.key),
            c.cert.display()
        )
    })?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&ck.cert[0])
        .map_err(|e| anyhow::anyhow!("{}: cannot parse the certificate: {e}", name(&c.cert)))?;
    let v = leaf.validity();
    let now = x509_parser::time::ASN1Time::now();
    anyhow::ensure!(
        v.not_after >= now,
        "{}: the certificate expired on {}",
        name(&c.cert),
        v.not_after
    );
    anyhow::ensure!(
        v.not_before <= now,
        "{}: the certificate is not valid before {}",
        name(&c.cert),
        v.not_before
    );
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let not_after = v.not_after.timestamp();
    drop(leaf);
    Ok(Loaded {
        key: ck,
        names,
        not_after,
    })
}

fn field_of(c: &CertFiles, p: &Path) -> &'static str {
    if p == c.cert {
        "cert"
    } else {
        "key"
    }
}

/// Answers one plain-HTTP request with a `308` to the same host and target over https on
/// `https_port`, then closes. Nothing is proxied from this port.
pub async fn redirect<S>(mut io: S, https_port: u16, read_timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = Vec::with_capacity(2048);
    let answer = tokio::time::timeout(read_timeout, async {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut fields);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(_)) => return Some(location(&req, https_port)),
                Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => {}
                _ => return None,
            }
            let mut chunk = [0u8; 2048];
            match io.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    })
    .await;
    let head = match answer {
        Ok(Some(Some(loc))) => format!(
            "HTTP/1.1 308 Permanent Redirect\r\nlocation: {loc}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
        Ok(_) => "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
        Err(_) => return,
    };
    let _ = tokio::time::timeout(read_timeout, async {
        io.write_all(head.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
}

/// `https://host[:port]/target` for a request, or `None` without a usable Host.
fn location(req: &httparse::Request<'_, '_>, https_port: u16) -> Option<String> {
    let hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let target = req.path.unwrap_or("/");
    let routed = crate::host::route(target, hosts).ok()?;
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = if routed.path.starts_with('/') {
        routed.path
    } else {
        "/"
    };
    Some(format!("https://{}{port}{path}", routed.host))
}
