//! Benchmark backend: `GET /` answers an 11-byte JSON body, `GET /bytes/N` streams N bytes.
//! Usage: `bench_backend 127.0.0.1:9000`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proxyview::http_util::{boxed, full, PvBody};

const CHUNK: usize = 64 * 1024;

async fn handle(req: Request<Incoming>) -> Result<Response<PvBody>, Infallible> {
    let path = req.uri().path();
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        let block = Bytes::from(vec![b'x'; CHUNK]);
        let chunks = futures_util::stream::unfold(0u64, move |sent| {
            let block = block.clone();
            async move {
                if sent >= n {
                    return None;
                }
                let len = (n - sent).min(CHUNK as u64) as usize;
                Some((
                    Ok::<_, Infallible>(Frame::data(block.slice(..len))),
                    sent + len as u64,
                ))
            }
        });
        let mut r = Response::new(boxed(StreamBody::new(chunks)));
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        return Ok(r);
    }
    let mut r = Response::new(full(Bytes::from_static(b"{\"ok\":true}")));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bench_backend listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service_fn(handle))
                .await;
        });
    }
}
