//! Automatic certificates (ACME, RFC 8555) for the external TLS port, validated by TLS-ALPN-01
//! (RFC 8737) on that same port.
//!
//! **Which names.** Only the configured `hosts` and (with `routes: true`) route names an agent
//! has registered: never the SNI name of a ClientHello, so a scan with random names cannot make
//! the server order certificates and burn the CA's rate limits.
//!
//! **Crate.** `instant-acme` (maintained by the instant-labs/rustls people, async, tokio, rustls
//! and aws-lc-rs like the rest of proxyview) is only the protocol client: which names, when to
//! renew, where to keep state and how to serve the challenge stay here, where the route table
//! is. `rustls-acme` bundles all of that but takes a fixed list of domains at construction
//! (no names appearing as agents register routes), owns the whole rustls resolver (the
//! per-host PEM certificates and their reload would have to be rebuilt on its terms) and runs on
//! `futures-rustls`/`async-io`, a second TLS stack next to tokio-rustls.
//!
//! **State.** `stateDir/account.json` (the account key and URL, mode 0600) and per host
//! `<host>.pem` (chain) and `<host>.key` (0600), loaded at start, so a restart orders nothing
//! that is still valid.
//!
//! **Schedule.** Every `checkSecs`, each wanted name without a certificate, or whose certificate
//! ends within `renewBeforeDays`, is ordered, one at a time, each order bounded by
//! [`ORDER_TIMEOUT`]. A failure (directory unreachable or answering garbage, validation failed)
//! is logged and that name waits `checkSecs`, doubling per failure up to [`MAX_BACKOFF`], while
//! it is served with the certificate it has (an older one, or the default).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use super::tls::{load_one, CertStore, Loaded};
use crate::config::{AcmeSettings, CertFiles};

/// Longest one order (account, challenge, finalisation, download) may take.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait between two attempts for a failing name.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

struct Held {
    not_after: i64,
}

struct Retry {
    at: Instant,
    delay: Duration,
}

/// Runs the certificate manager until `stopping`: `wanted` lists the registered route names.
pub fn spawn(
    settings: AcmeSettings,
    store: Arc<CertStore>,
    wanted: impl Fn() -> Vec<String> + Send + 'static,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut held: HashMap<String, Held> = HashMap::new();
        if let Err(e) = std::fs::create_dir_all(&settings.state_dir) {
            warn!(dir = %settings.state_dir.display(), error = %e, "ACME: cannot create external.tls.acme.stateDir");
        }
        load_saved(&settings, &store, &mut held);
        let mut account: Option<Account> = None;
        let mut retry: HashMap<String, Retry> = HashMap::new();
        let mut tick = tokio::time::interval(settings.check);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            let mut names = settings.hosts.clone();
            if settings.routes {
                // Only names a public CA could validate: a single-label route ("route1") would
                // fail at the CA every backoff period, forever.
                names.extend(wanted().into_iter().filter(|r| r.contains('.')));
            }
            names.sort();
            names.dedup();
            let now = unix_now();
            let renew = i64::try_from(settings.renew_before.as_secs()).unwrap_or(i64::MAX);
            for host in names {
                if held
                    .get(&host)
                    .is_some_and(|h| h.not_after.saturating_sub(now) > renew)
                {
                    continue;
                }
                if retry.get(&host).is_some_and(|r| r.at > Instant::now()) {
                    continue;
                }
                let attempt = tokio::time::timeout(
                    ORDER_TIMEOUT,
                    issue(&settings, &store, &mut account, &host),
                );
                let r = tokio::select! {
                    r = attempt => r.unwrap_or_else(|_| Err(anyhow::anyhow!("no certificate within {ORDER_TIMEOUT:?}"))),
                    _ = stopping.wait_for(|s| *s) => return,
                };
                store
                    .challenges
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&host);
                match r {
                    Ok(l) => {
                        info!(%host, not_after = l.not_after, "ACME certificate issued");
                        hold(&store, &mut held, &host, l);
                        retry.remove(&host);
                    }
                    Err(e) => {
                        let delay = retry
                            .get(&host)
                            .map_or(settings.check, |r| (r.delay * 2).min(MAX_BACKOFF));
                        warn!(%host, error = %format!("{e:#}"), retry_in = ?delay, "ACME order failed; the host keeps the certificate it has");
                        retry.insert(
                            host,
                            Retry {
                                at: Instant::now() + delay,
                                delay,
                            },
                        );
                        // A broken directory or account is looked up afresh next time.
                        account = None;
                    }
                }
            }
        }
    });
}

/// Serves `l` for `host` from now on, and remembers when it ends.
fn hold(store: &CertStore, held: &mut HashMap<String, Held>, host: &str, l: Loaded) {
    held.insert(
        host.to_string(),
        Held {
            not_after: l.not_after,
        },
    );
    store
        .acme
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(host.to_string(), Arc::new(l.key));
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn files(settings: &AcmeSettings, host: &str) -> CertFiles {
    CertFiles {
        field: "external.tls.acme".into(),
        cert: settings.state_dir.join(format!("{host}.pem")),
        key: settings.state_dir.join(format!("{host}.key")),
        hosts: None,
    }
}

/// Loads the certificates a previous run saved (expired or broken ones are skipped).
fn load_saved(settings: &AcmeSettings, store: &CertStore, held: &mut HashMap<String, Held>) {
    let Ok(dir) = std::fs::read_dir(&settings.state_dir) else {
        return;
    };
    for e in dir.flatten() {
        let p = e.path();
        let Some(host) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pem"))
        else {
            continue;
        };
        match load_one(&files(settings, host)) {
            Ok(l) => hold(store, held, host, l),
            Err(e) => warn!(%host, error = %format!("{e:#}"), "ACME: saved certificate not used"),
        }
    }
}

async fn account(settings: &AcmeSettings) -> anyhow::Result<Account> {
    let builder = || match &settings.ca_file {
        Some(ca) => Account::builder_with_root(ca)
            .with_context(|| format!("external.tls.acme.caFile {}", ca.display())),
        None => Account::builder().context("ACME HTTP client"),
    };
    let path = settings.state_dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let creds: AccountCredentials = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an ACME account", path.display()))?;
        return builder()?
            .from_credentials(creds)
            .await
            .with_context(|| format!("ACME account from {}", path.display()));
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("ACME account at {}", settings.directory))?;
    write_private(&path, serde_json::to_string(&creds)?.as_bytes())?;
    info!(directory = %settings.directory, "ACME account created");
    Ok(account)
}

/// Orders, validates and downloads a certificate for `host`, and saves it.
async fn issue(
    settings: &AcmeSettings,
    store: &CertStore,
    cached: &mut Option<Account>,
    host: &str,
) -> anyhow::Result<Loaded> {
    if cached.is_none() {
        *cached = Some(account(settings).await?);
    }
    let account = cached.as_ref().context("no ACME account")?;
    let ids = [Identifier::Dns(host.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .context("new order")?;
    let mut auths = order.authorizations();
    while let Some(a) = auths.next().await {
        let mut a = a.context("authorization")?;
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            s => anyhow::bail!("authorization is {s:?}"),
        }
        let mut ch = a
            .challenge(ChallengeType::TlsAlpn01)
            .context("the CA offers no tls-alpn-01 challenge")?;
        let cert = challenge_cert(host, ch.key_authorization().digest().as_ref())?;
        store
            .challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), Arc::new(cert));
        ch.set_ready().await.context("challenge ready")?;
    }
    let retry = RetryPolicy::new().timeout(ORDER_TIMEOUT / 2);
    let status = order.poll_ready(&retry).await.context("validation")?;
    anyhow::ensure!(
        status == OrderStatus::Ready,
        "order is {status:?} after validation"
    );
    let key_pem = order.finalize().await.context("finalize")?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .context("certificate download")?;
    let f = files(settings, host);
    write_private(&f.key, key_pem.as_bytes())?;
    let tmp = f.cert.with_extension("pem.tmp");
    std::fs::write(&tmp, chain_pem.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, &f.cert))
        .with_context(|| format!("cannot write {}", f.cert.display()))?;
    load_one(&f)
}

/// The self-signed certificate that answers a TLS-ALPN-01 validation: the host name, and the
/// SHA-256 of the key authorization in the critical acmeIdentifier extension.
fn challenge_cert(host: &str, digest: &[u8]) -> anyhow::Result<CertifiedKey> {
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let kp = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&kp)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
    let signer = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

/// Writes `bytes` to `path` readable by the owner only, through a rename.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp: PathBuf = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
