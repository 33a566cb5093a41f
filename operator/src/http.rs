//! The small HTTP/1.1 responder behind the agent's and the controller's
//! endpoints: one request per connection, GET only, `/healthz` answered
//! here, every other path by the caller's handler (`None`: 404), and
//! `/metrics` as OpenMetrics text rendered from a registry ([`metrics`]).

use std::future::Future;
use std::pin::Pin;
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

/// A request as handlers see it: the path (without its query), the query,
/// and the `Authorization` header.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
}

impl Request {
    /// The bearer token of the `Authorization` header.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.authorization.as_deref()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }
}

/// An answer other than 200 (or a 200 built by an async handler).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// A streamed body: written after `body`, chunk by chunk as they come,
    /// until the sender goes or the client does (no Content-Length; the
    /// connection closes at the end).
    pub stream: Option<tokio::sync::mpsc::Receiver<Arc<str>>>,
}

impl Response {
    pub fn ok((content_type, body): Body) -> Response {
        Response {
            status: 200,
            content_type,
            body,
            stream: None,
        }
    }

    /// A 200 whose body is `chunks` as they come.
    pub fn streaming(
        content_type: &'static str,
        chunks: tokio::sync::mpsc::Receiver<Arc<str>>,
    ) -> Response {
        Response {
            status: 200,
            content_type,
            body: String::new(),
            stream: Some(chunks),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain",
            body: body.into(),
            stream: None,
        }
    }
}

/// An async handler: `None` for a path it does not serve (404).
pub type Handler = Arc<
    dyn Fn(Request) -> Pin<Box<dyn Future<Output = Option<Response>> + Send>> + Send + Sync,
>;

/// Serves GETs on `listener` until the task is dropped: `/healthz` answers
/// `ok`, any other path what `handler` gives for it (the path without its
/// query), 404 where it gives `None`; methods other than GET get 405.
pub async fn serve<H>(listener: TcpListener, handler: Arc<H>)
where
    H: Fn(&str) -> Option<Body> + Send + Sync + 'static,
{
    let handler: Handler = Arc::new(move |request: Request| {
        let answer = handler(&request.path).map(Response::ok);
        Box::pin(async move { answer })
    });
    serve_requests(listener, handler).await
}

/// [`serve`] with an async handler that sees the whole [`Request`] (the
/// agent's authorised endpoints).
pub async fn serve_requests(listener: TcpListener, handler: Handler) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &handler).await {
                debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

async fn answer(mut stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
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
    let text = String::from_utf8_lossy(&request).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let authorization = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_owned());
    let response = match (method, path) {
        ("GET", "/healthz") => Response::text(200, "ok\n"),
        ("GET", path) => {
            let request = Request {
                path: path.to_owned(),
                query: query.to_owned(),
                authorization,
            };
            handler(request)
                .await
                .unwrap_or_else(|| Response::text(404, "not found\n"))
        }
        _ => Response::text(405, "GET only\n"),
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.content_type,
    );
    if response.stream.is_none() {
        head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    } else {
        head.push_str("Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
    }
    if response.status == 401 {
        head.push_str("WWW-Authenticate: Bearer\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    if let Some(mut chunks) = response.stream {
        stream.flush().await?;
        while let Some(chunk) = chunks.recv().await {
            stream.write_all(chunk.as_bytes()).await?;
            stream.flush().await?;
        }
    }
    stream.shutdown().await
}
