//! The small HTTP/1.1 responder behind the agent's and the controller's
//! endpoints: one request per connection, GET only, `/healthz` answered
//! here, every other path by the caller's handler (`None`: 404), and
//! `/metrics` as OpenMetrics text rendered from a registry ([`metrics`]).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

/// The content type of `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A 200 answer: its content type and body.
pub type Body = (&'static str, String);

/// `registry` as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// The `/metrics` answer of `registry`.
pub fn metrics(registry: &Registry) -> Body {
    (OPENMETRICS, render(registry))
}

/// Serves GETs on `listener` until the task is dropped: `/healthz` answers
/// `ok`, any other path what `handler` gives for it (the path without its
/// query), 404 where it gives `None`; methods other than GET get 405.
pub async fn serve<H>(listener: TcpListener, handler: Arc<H>)
where
    H: Fn(&str) -> Option<Body> + Send + Sync + 'static,
{
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &*handler).await {
                debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    handler: &(dyn Fn(&str) -> Option<Body> + Send + Sync),
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request header timeout")
            })??;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(request.split(|b| *b == b'\n').next().unwrap_or_default())
        .into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, (content_type, body)) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", ("text/plain", "ok\n".to_owned())),
        ("GET", path) => match handler(path) {
            Some(found) => ("200 OK", found),
            None => ("404 Not Found", ("text/plain", "not found\n".to_owned())),
        },
        _ => (
            "405 Method Not Allowed",
            ("text/plain", "GET only\n".to_owned()),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
