//! The ctl client used by `proxygwctl`: one connection, numbered requests, a timeout on every reply.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::net::UnixStream;

use crate::protocol::{
    method, write_packet, Codec, EmptyBody, ErrorBody, NameBody, PacketReader, StatusResponse,
};

/// A connected client.
pub struct Client {
    reader: PacketReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    codec: Codec,
    next_id: u32,
    timeout: Duration,
}

impl Client {
    /// Dials the socket (bounded by `timeout`).
    pub async fn dial(path: &Path, codec: Codec, timeout: Duration) -> Result<Self, String> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| {
                format!(
                    "dial ctl socket {:?}: timed out after {timeout:?}",
                    path.display().to_string()
                )
            })?
            .map_err(|e| format!("dial ctl socket {:?}: {e}", path.display().to_string()))?;
        let (r, w) = stream.into_split();
        Ok(Self {
            reader: PacketReader::new(r, codec),
            writer: w,
            codec,
            next_id: 1,
            timeout,
        })
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        // Ids run 1, 2, 3, … and skip 0 (a notification) on wrap-around.
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    async fn call<B: Serialize, R: serde::de::DeserializeOwned>(
        &mut self,
        req: u16,
        resp: u16,
        body: &B,
    ) -> Result<R, String> {
        let id = self.id();
        let limit = self.timeout;
        let codec = self.codec;
        let fut = async {
            write_packet(&mut self.writer, codec, id, req, body)
                .await
                .map_err(|e| e.to_string())?;
            loop {
                let p = match self.reader.next().await {
                    Ok(Some(p)) => p,
                    Ok(None) => return Err("ipc connection closed".to_string()),
                    Err(e) => return Err(e.to_string()),
                };
                if p.id != id {
                    continue;
                }
                if p.method == method::ERROR_RESPONSE {
                    return Err(p
                        .body::<ErrorBody>()
                        .map(|b| b.msg)
                        .unwrap_or_else(|e| e.to_string()));
                }
                if p.method != resp {
                    return Err(format!("unexpected response method {}", p.method));
                }
                return p.body::<R>().map_err(|e| e.to_string());
            }
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| format!("no reply within {limit:?}"))?
    }

    /// StatusRequest.
    pub async fn status(&mut self) -> Result<StatusResponse, String> {
        self.call(
            method::STATUS_REQUEST,
            method::STATUS_RESPONSE,
            &EmptyBody {},
        )
        .await
    }

    /// ReloadRequest: the daemon re-reads its config; an invalid one is refused with the reason.
    pub async fn reload(&mut self) -> Result<(), String> {
        let _: EmptyBody = self
            .call(
                method::RELOAD_REQUEST,
                method::RELOAD_RESPONSE,
                &EmptyBody {},
            )
            .await?;
        Ok(())
    }

    /// WarmTargetRequest.
    pub async fn warm(&mut self, name: &str) -> Result<(), String> {
        let body = NameBody { name: name.into() };
        let _: EmptyBody = self
            .call(
                method::WARM_TARGET_REQUEST,
                method::WARM_TARGET_RESPONSE,
                &body,
            )
            .await?;
        Ok(())
    }

    /// DrainTargetRequest.
    pub async fn drain(&mut self, name: &str) -> Result<(), String> {
        let body = NameBody { name: name.into() };
        let _: EmptyBody = self
            .call(
                method::DRAIN_TARGET_REQUEST,
                method::DRAIN_TARGET_RESPONSE,
                &body,
            )
            .await?;
        Ok(())
    }

    /// StartFrontendRequest.
    pub async fn start(&mut self, name: &str) -> Result<(), String> {
        let body = NameBody { name: name.into() };
        let _: EmptyBody = self
            .call(
                method::START_FRONTEND_REQUEST,
                method::START_FRONTEND_RESPONSE,
                &body,
            )
            .await?;
        Ok(())
    }

    /// StopFrontendRequest.
    pub async fn stop(&mut self, name: &str) -> Result<(), String> {
        let body = NameBody { name: name.into() };
        let _: EmptyBody = self
            .call(
                method::STOP_FRONTEND_REQUEST,
                method::STOP_FRONTEND_RESPONSE,
                &body,
            )
            .await?;
        Ok(())
    }
}

/// `proxygwctl status --format table`: one block for targets, one for frontends, columns padded.
pub fn status_table(s: &StatusResponse) -> String {
    fn table(rows: Vec<Vec<String>>) -> String {
        let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                rows.iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in rows {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
    let mut t = vec![vec!["TARGET", "KIND", "STATE", "ENDPOINTS", "LAST ERROR"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()];
    for x in &s.targets {
        let eps = x
            .endpoints
            .iter()
            .map(|e| format!("{}={}/{}", e.name, e.address, e.protocol.0))
            .collect::<Vec<_>>()
            .join(",");
        t.push(vec![
            x.name.clone(),
            x.kind.clone(),
            x.state.clone(),
            eps,
            x.last_error.clone(),
        ]);
    }
    let mut f = vec![vec![
        "FRONTEND",
        "KIND",
        "STATE",
        "LISTEN",
        "TARGET",
        "BACKEND",
        "LAST ERROR",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>()];
    for x in &s.frontends {
        // A dual-home frontend lists both endpoints, comma-joined as ENDPOINTS above.
        let (mut target, mut backend) = (
            format!("{}:{}", x.target_name, x.endpoint_name),
            x.proxyaddress.clone(),
        );
        if !x.dual_endpoint_name.is_empty() {
            target = format!("{target},{}:{}", x.target_name, x.dual_endpoint_name);
            backend = format!("{backend},{}", x.dual_proxyaddress);
        }
        f.push(vec![
            x.name.clone(),
            x.kind.clone(),
            x.state.clone(),
            format!("{}/{}", x.listen, x.protocol.0),
            target,
            backend,
            x.last_error.clone(),
        ]);
    }
    let mut out = String::new();
    if s.closed {
        out.push_str("engine closed\n\n");
    }
    out.push_str(&table(t));
    out.push('\n');
    out.push_str(&table(f));
    out
}
