//! The API model of the fronted app (crate `apimodel`) as cwproxy runs it: its variables, the
//! admin listener (`ADMIN_ADDR`) that serves `GET /openapi.json`, `GET /routes` and
//! `GET /healthz`, and the state file (`STATE_DIR`).
//!
//! The model learns on the telemetry worker thread (a pipeline observer), so requests never wait
//! for it. The admin listener is a separate socket: its requests are never proxied and never
//! logged as traffic. It is off unless `ADMIN_ADDR` is set, and refuses `PROXY_PORT`'s port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apimodel::{Model, Options};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, Env};

/// `--help` lines for these variables.
pub const HELP: &str = concat!(
    "  ADMIN_ADDR (unset = no admin listener; e.g. 127.0.0.1:9901: /openapi.json, /routes, /healthz)\n",
    "  DRIFT_LEARN (100 with ADMIN_ADDR, else off; N = DRIFT lines after N exchanges of a route; off)\n",
    "  MODEL_MEMORY_LIMIT (16777216 bytes)  STATE_DIR (unset = the model is not saved)\n",
    "  OPENAPI_EXAMPLES (on|off; off: on adds one example per body, redacted as log lines are)\n",
);

/// Smallest accepted `MODEL_MEMORY_LIMIT`.
pub const MIN_MEMORY_LIMIT: usize = 64 << 10;
/// How often the model is saved to `STATE_DIR` (and once more at shutdown).
pub const SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// Longest an admin connection may stay open, and the `/healthz` upstream connect bound.
const CONN_LIMIT: Duration = Duration::from_secs(10);
const UPSTREAM_PROBE: Duration = Duration::from_secs(1);

/// The model's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `ADMIN_ADDR`.
    pub admin_addr: Option<SocketAddr>,
    /// `DRIFT_LEARN`; `None` when off.
    pub drift_learn: Option<u64>,
    /// `MODEL_MEMORY_LIMIT`.
    pub memory_limit: usize,
    /// `STATE_DIR`.
    pub state_dir: Option<PathBuf>,
    /// `OPENAPI_EXAMPLES`.
    pub examples: bool,
}

impl Settings {
    /// The model off: the defaults without `ADMIN_ADDR` or `DRIFT_LEARN`, and the stand-in while
    /// other variables are in error.
    pub fn off() -> Self {
        Self {
            admin_addr: None,
            drift_learn: None,
            memory_limit: apimodel::DEFAULT_MEMORY_LIMIT,
            state_dir: None,
            examples: false,
        }
    }

    /// Whether the model runs at all: something reads it (the listener) or reports from it
    /// (drift). Off, cwproxy's output is exactly what it is without this feature.
    pub fn enabled(&self) -> bool {
        self.admin_addr.is_some() || self.drift_learn.is_some()
    }
}

/// The settings as `cwproxy --check` prints them: (variable, value as it will be used).
pub fn describe(s: &Settings) -> Vec<(&'static str, String)> {
    let or_off = |v: Option<String>| v.unwrap_or_else(|| "off".to_owned());
    vec![
        ("ADMIN_ADDR", or_off(s.admin_addr.map(|a| a.to_string()))),
        ("DRIFT_LEARN", or_off(s.drift_learn.map(|n| n.to_string()))),
        ("MODEL_MEMORY_LIMIT", s.memory_limit.to_string()),
        (
            "STATE_DIR",
            s.state_dir
                .as_ref()
                .map_or_else(|| "(unset)".to_owned(), |d| d.display().to_string()),
        ),
        (
            "OPENAPI_EXAMPLES",
            if s.examples { "on" } else { "off" }.to_owned(),
        ),
    ]
}

fn value(env: &dyn Env, key: &str) -> Option<String> {
    env.get(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Reads the variables, reporting every bad one (each error names its variable).
pub fn load(env: &dyn Env, proxy_port: u16) -> Result<Settings, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let admin_addr = value(env, "ADMIN_ADDR").and_then(|raw| match raw.parse::<SocketAddr>() {
        Ok(a) if a.port() == proxy_port => {
            errors.push(ConfigError(format!(
                "ADMIN_ADDR {raw:?} uses PROXY_PORT {proxy_port}; the admin listener needs its own port"
            )));
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(ConfigError(format!(
                "ADMIN_ADDR must be an IP address and port such as 127.0.0.1:9901, got {raw:?}"
            )));
            None
        }
    });
    let compat_original = value(env, "LOG_COMPAT").is_some_and(|v| v == "original");
    // Without ADMIN_ADDR the model runs only when DRIFT_LEARN asks for drift lines, so the
    // default output stays exactly what it is without this feature.
    let drift_learn = match value(env, "DRIFT_LEARN") {
        None if compat_original || admin_addr.is_none() => None,
        None => Some(apimodel::DEFAULT_DRIFT_LEARN),
        Some(v) if v.eq_ignore_ascii_case("off") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                errors.push(ConfigError(format!(
                    "DRIFT_LEARN must be off or a positive integer, got {v:?}"
                )));
                None
            }
        },
    };
    let memory_limit = match value(env, "MODEL_MEMORY_LIMIT") {
        None => apimodel::DEFAULT_MEMORY_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= MIN_MEMORY_LIMIT => n,
            _ => {
                errors.push(ConfigError(format!(
                    "MODEL_MEMORY_LIMIT must be a number of bytes of at least {MIN_MEMORY_LIMIT}, got {v:?}"
                )));
                apimodel::DEFAULT_MEMORY_LIMIT
            }
        },
    };
    let state_dir = value(env, "STATE_DIR").and_then(|v| {
        let dir = PathBuf::from(&v);
        if dir.is_dir() {
            Some(dir)
        } else {
            errors.push(ConfigError(format!(
                "STATE_DIR {v:?} is not an existing directory"
            )));
            None
        }
    });
    let examples = match value(env, "OPENAPI_EXAMPLES") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("on") => true,
        Some(v) if v.eq_ignore_ascii_case("off") => false,
        Some(v) => {
            errors.push(ConfigError(format!(
                "OPENAPI_EXAMPLES must be on or off, got {v:?}"
            )));
            false
        }
    };
    if errors.is_empty() {
        Ok(Settings {
            examples,
            admin_addr,
            drift_learn,
            memory_limit,
            state_dir,
        })
    } else {
        Err(errors)
    }
}

/// The running model with its listener and state saver; see [`Running::stop`].
#[derive(Debug)]
pub struct Running {
    model: Arc<Model>,
    state_dir: Option<PathBuf>,
    tasks: Vec<JoinHandle<()>>,
}

/// Creates the model (loading `STATE_DIR`, reporting a bad file through `log`), binds
/// `ADMIN_ADDR` and starts the listener and the periodic save. `None` when the model is off.
pub async fn start(
    settings: &Settings,
    app_name: &str,
    upstream: (String, u16),
    log: fn(std::fmt::Arguments<'_>),
) -> Result<Option<Running>, String> {
    if !settings.enabled() {
        return Ok(None);
    }
    let model = Arc::new(Model::new(Options {
        app_name: app_name.to_owned(),
        memory_limit: settings.memory_limit,
        drift_learn: settings.drift_learn,
        examples: settings.examples,
    }));
    if let Some(dir) = &settings.state_dir {
        if let Err(e) = model.load(dir) {
            log(format_args!(
                "ignoring the API model state (STATE_DIR): {e}"
            ));
        }
    }
    let mut tasks = Vec::new();
    if let Some(addr) = settings.admin_addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("ADMIN_ADDR {addr}: listen: {e}"))?;
        tasks.push(tokio::spawn(serve(listener, Arc::clone(&model), upstream)));
    }
    if let Some(dir) = settings.state_dir.clone() {
        let model = Arc::clone(&model);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAVE_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                save(&model, &dir, log).await;
            }
        }));
    }
    Ok(Some(Running {
        model,
        state_dir: settings.state_dir.clone(),
        tasks,
    }))
}

async fn save(model: &Arc<Model>, dir: &std::path::Path, log: fn(std::fmt::Arguments<'_>)) {
    let (model, dir2) = (Arc::clone(model), dir.to_owned());
    match tokio::task::spawn_blocking(move || model.save(&dir2)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log(format_args!(
            "failed to save the API model (STATE_DIR): {e}"
        )),
        Err(e) => log(format_args!(
            "failed to save the API model (STATE_DIR): {e}"
        )),
    }
}

impl Running {
    /// The model, to install as the telemetry pipeline's observer.
    pub fn model(&self) -> Arc<Model> {
        Arc::clone(&self.model)
    }

    /// Stops the listener and the saver and saves once more (after the telemetry flush, so
    /// the last exchanges are in the file).
    pub async fn stop(self, log: fn(std::fmt::Arguments<'_>)) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(dir) = &self.state_dir {
            save(&self.model, dir, log).await;
        }
    }
}

async fn serve(listener: TcpListener, model: Arc<Model>, upstream: (String, u16)) {
    let upstream = Arc::new(upstream);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (model, upstream) = (Arc::clone(&model), Arc::clone(&upstream));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (model, upstream) = (Arc::clone(&model), Arc::clone(&upstream));
                async move { Ok::<_, Infallible>(answer(&req, &model, &upstream).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONN_LIMIT, conn).await;
        });
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn answer(
    req: &Request<Incoming>,
    model: &Model,
    upstream: &(String, u16),
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "only GET"}),
        );
    }
    match req.uri().path() {
        "/openapi.json" => json_response(StatusCode::OK, &model.openapi()),
        "/routes" => json_response(StatusCode::OK, &model.routes()),
        "/healthz" => {
            let target = (
                upstream.0.trim_start_matches('[').trim_end_matches(']'),
                upstream.1,
            );
            let reachable = matches!(
                tokio::time::timeout(UPSTREAM_PROBE, tokio::net::TcpStream::connect(target)).await,
                Ok(Ok(_))
            );
            let status = if reachable {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(
                status,
                &serde_json::json!({
                    "listener": "up",
                    "upstream": if reachable { "reachable" } else { "unreachable" },
                }),
            )
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not found", "paths": ["/openapi.json", "/routes", "/healthz"]}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_the_model_off_and_compat_turns_drift_off() {
        let off = load(&[("PROXY_PORT", "8081")], 8081).expect("valid");
        assert!(!off.enabled());
        let admin = load(&[("ADMIN_ADDR", "127.0.0.1:9901")], 8081).expect("valid");
        assert_eq!(admin.drift_learn, Some(apimodel::DEFAULT_DRIFT_LEARN));
        assert_eq!(admin.memory_limit, apimodel::DEFAULT_MEMORY_LIMIT);
        let compat = load(
            &[("ADMIN_ADDR", "127.0.0.1:9901"), ("LOG_COMPAT", "original")],
            8081,
        )
        .expect("valid");
        assert_eq!(compat.drift_learn, None);
        let drift_only = load(&[("DRIFT_LEARN", "5")], 8081).expect("valid");
        assert!(drift_only.enabled());
        assert_eq!(drift_only.drift_learn, Some(5));
    }

    #[test]
    fn every_bad_variable_is_named() {
        let errors = load(
            &[
                ("ADMIN_ADDR", "nowhere"),
                ("DRIFT_LEARN", "0"),
                ("MODEL_MEMORY_LIMIT", "10"),
                ("STATE_DIR", "/nonexistent/waygate-state"),
                ("OPENAPI_EXAMPLES", "yes"),
            ],
            8081,
        )
        .expect_err("all invalid");
        let text: Vec<String> = errors.into_iter().map(|e| e.0).collect();
        for var in [
            "ADMIN_ADDR",
            "DRIFT_LEARN",
            "MODEL_MEMORY_LIMIT",
            "STATE_DIR",
        ] {
            assert!(text.iter().any(|t| t.starts_with(var)), "{var}: {text:?}");
        }
    }
}
