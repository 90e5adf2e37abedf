//! The `ctl` plugin: the Unix-socket control endpoint (spec §7.8, §8), serving Status, Warm/Drain target and
//! Start/Stop frontend. The socket is created 0660, a stale one is replaced at start, and it is removed on unload.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::{BoxFuture, Loaded, PluginDef};
use crate::handle::{EngineHandle, Reply, Request};
use crate::log::Logger;
use crate::protocol::{
    method, write_packet, Codec, EmptyBody, ErrorBody, NameBody, PacketReader, ProtocolError,
    CONNECTION_IDLE_TIMEOUT, MAX_CONNECTIONS,
};

/// The ctl plugin's schema (`plugins.ctl`).
pub const SCHEMA: &str = include_str!("../../../../configs/plugins/ctl.schema.yaml");
/// Socket file mode: owner and group (e.g. an `adm`-like group for operators) may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// The plugin definition.
pub fn plugin() -> PluginDef {
    PluginDef {
        source: "ctl",
        schema: SCHEMA,
        frontends: Vec::new(),
        targets: Vec::new(),
        on_load: Some(on_load),
    }
}

/// `plugins.ctl` → socket path and codec, with the original's error texts.
pub fn settings(cfg: &Map<String, Value>) -> Result<(PathBuf, Codec), String> {
    let Some(Value::String(socket)) = cfg.get("socket") else {
        return Err("missing socket path".into());
    };
    if socket.is_empty() {
        return Err("missing socket path".into());
    }
    let name = match cfg.get("codec") {
        None | Some(Value::Null) => "json".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let codec = Codec::by_name(&name)
        .ok_or_else(|| format!("invalid codec: {}", gosyntax::go_quote(&name)))?;
    Ok((PathBuf::from(socket), codec))
}

fn on_load(
    cfg: &Map<String, Value>,
    engine: EngineHandle,
    log: Logger,
) -> Result<Box<dyn Loaded>, String> {
    let (path, codec) = settings(cfg)?;
    let server = Server::bind(&path, codec, engine, log)?;
    Ok(Box::new(server))
}

/// A running ctl server.
pub struct Server {
    path: PathBuf,
    accept: JoinHandle<()>,
    conns: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
}

/// Removes a leftover socket file; refuses if another process still answers on it.
fn clear_stale(path: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "ctl socket {}: exists and is not a socket",
            path.display()
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "ctl socket {}: another process is listening on it",
            path.display()
        ));
    }
    std::fs::remove_file(path)
        .map_err(|e| format!("ctl socket {}: remove stale socket: {e}", path.display()))
}

impl Server {
    /// Binds the socket (replacing a stale one) and starts accepting.
    pub fn bind(
        path: &Path,
        codec: Codec,
        engine: EngineHandle,
        log: Logger,
    ) -> Result<Self, String> {
        clear_stale(path)?;
        let listener =
            UnixListener::bind(path).map_err(|e| format!("ctl socket {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| format!("ctl socket {}: chmod: {e}", path.display()))?;
        let conns: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>> = Arc::default();
        let set = conns.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let accept = tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and the like: log, back off, keep serving (the original crashed here).
                        log.warn("ctl accept failed", &[("err", &e)]);
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (engine, log) = (engine.clone(), log.clone());
                let mut g = match set.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                g.spawn(async move {
                    if let Err(e) = serve(stream, codec, engine).await {
                        log.debug("ctl connection ended", &[("err", &e)]);
                    }
                    drop(permit);
                });
                while g.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            path: path.to_path_buf(),
            accept,
            conns,
        })
    }
}

impl Loaded for Server {
    fn unload(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.accept.abort();
            let _ = (&mut { self.accept }).await;
            let mut set = match self.conns.lock() {
                Ok(mut g) => std::mem::take(&mut *g),
                Err(p) => std::mem::take(&mut *p.into_inner()),
            };
            set.abort_all();
            while set.join_next().await.is_some() {}
            let _ = std::fs::remove_file(&self.path);
        })
    }
}

/// One connection: requests are answered one at a time, in order.
async fn serve(
    stream: UnixStream,
    codec: Codec,
    engine: EngineHandle,
) -> Result<(), ProtocolError> {
    let (r, mut w) = stream.into_split();
    let mut reader = PacketReader::new(r, codec);
    loop {
        let packet = match tokio::time::timeout(CONNECTION_IDLE_TIMEOUT, reader.next()).await {
            Err(_) => return Ok(()),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(p))) => p,
            Ok(Err(e @ ProtocolError::Io(_))) => return Err(e),
            Ok(Err(e)) => {
                // The stream cannot be resynchronised after garbage: say why, then close.
                let body = ErrorBody { msg: e.to_string() };
                write_packet(&mut w, codec, 0, method::ERROR_RESPONSE, &body).await?;
                return Err(e);
            }
        };
        if packet.id == 0 || method::is_response(packet.method) {
            // Notifications and stray responses carry nothing to answer.
            continue;
        }
        let id = packet.id;
        let (req, reply_method) = match packet.method {
            method::STATUS_REQUEST => (
                packet.body::<EmptyBody>().map(|_| Request::Status),
                method::STATUS_RESPONSE,
            ),
            method::RELOAD_REQUEST => (
                packet.body::<EmptyBody>().map(|_| Request::Reload),
                method::RELOAD_RESPONSE,
            ),
            method::WARM_TARGET_REQUEST => (
                packet.body::<NameBody>().map(|b| Request::Warm(b.name)),
                method::WARM_TARGET_RESPONSE,
            ),
            method::DRAIN_TARGET_REQUEST => (
                packet.body::<NameBody>().map(|b| Request::Drain(b.name)),
                method::DRAIN_TARGET_RESPONSE,
            ),
            method::START_FRONTEND_REQUEST => (
                packet.body::<NameBody>().map(|b| Request::Start(b.name)),
                method::START_FRONTEND_RESPONSE,
            ),
            method::STOP_FRONTEND_REQUEST => (
                packet.body::<NameBody>().map(|b| Request::Stop(b.name)),
                method::STOP_FRONTEND_RESPONSE,
            ),
            m => {
                let body = ErrorBody {
                    msg: format!("unsupported method {m}"),
                };
                write_packet(&mut w, codec, id, method::ERROR_RESPONSE, &body).await?;
                continue;
            }
        };
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                write_packet(
                    &mut w,
                    codec,
                    id,
                    method::ERROR_RESPONSE,
                    &ErrorBody { msg: e.to_string() },
                )
                .await?;
                continue;
            }
        };
        match engine.request(req).await {
            Ok(Reply::Status(s)) => write_packet(&mut w, codec, id, reply_method, &s).await?,
            Ok(Reply::Done) => write_packet(&mut w, codec, id, reply_method, &EmptyBody {}).await?,
            Err(msg) => {
                write_packet(
                    &mut w,
                    codec,
                    id,
                    method::ERROR_RESPONSE,
                    &ErrorBody { msg },
                )
                .await?
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_original() {
        let m = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(settings(&Map::new()).unwrap_err(), "missing socket path");
        assert_eq!(
            settings(&m(serde_json::json!({"socket": 5}))).unwrap_err(),
            "missing socket path"
        );
        let (p, c) = settings(&m(serde_json::json!({"socket": "/x"}))).unwrap();
        assert_eq!((p, c), (PathBuf::from("/x"), Codec::Json));
        let (_, c) = settings(&m(serde_json::json!({"socket": "/x", "codec": " CBOR "}))).unwrap();
        assert_eq!(c, Codec::Cbor);
        assert_eq!(
            settings(&m(serde_json::json!({"socket": "/x", "codec": ""}))).unwrap_err(),
            "invalid codec: \"\""
        );
    }
}
