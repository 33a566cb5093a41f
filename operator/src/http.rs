//! The HTTP/1.1 endpoints (hyper) behind the agent's and the controller's
//! endpoints: one request per connection, GET only, `/healthz` (the process
//! answers) and `/readyz` (it really works: the caller's [`Readiness`])
//! answered here, every other path by the caller's handler (`None`: 404),
//! and `/metrics` as OpenMetrics text rendered from a registry ([`metrics`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// The content type of `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A 200 answer: its content type and body.
pub type Body = (&'static str, String);

/// Whether the process really works yet; `Err` says what it still waits for.
/// Shared between the component, which updates it, and `/readyz`.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<std::sync::Mutex<Result<(), String>>>);

impl Readiness {
    /// Not ready, waiting for `what`.
    pub fn waiting(what: impl Into<String>) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Err(what.into()))))
    }

    pub fn set(&self, state: Result<(), String>) {
        *self.0.lock().expect("readiness lock") = state;
    }

    pub fn get(&self) -> Result<(), String> {
        self.0.lock().expect("readiness lock").clone()
    }
}

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

/// An answer of an async handler.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// A streamed body: written after `body`, chunk by chunk as they come,
    /// until the sender goes or the client does (no Content-Length: to an
    /// HTTP/1.0 request the body ends with the connection, to HTTP/1.1 it is
    /// chunked).
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
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Option<Response>> + Send>> + Send + Sync>;

/// Serves GETs on `listener` until the task is dropped: `/healthz` answers
/// `ok`, `/readyz` `ready` (200) or what `ready` still waits for (503), any
/// other path what `handler` gives for it (the path without its query), 404
/// where it gives `None`; methods other than GET get 405. HTTP/1.1 by
/// hyper, one request per connection, 5 s to send the request header. A
/// failing `accept` (e.g. EMFILE: out of descriptors) is logged and retried
/// after a pause that doubles up to a second, never in a busy loop.
pub async fn serve<H>(listener: TcpListener, handler: Arc<H>, ready: Readiness)
where
    H: Fn(&str) -> Option<Body> + Send + Sync + 'static,
{
    let handler: Handler = Arc::new(move |request: Request| {
        let answer = handler(&request.path).map(Response::ok);
        Box::pin(async move { answer })
    });
    serve_requests(listener, handler, ready).await
}

/// [`serve`] with an async handler that sees the whole [`Request`] and may
/// stream its answer (the agent's authorised `/flows` and `/flows/stream`).
pub async fn serve_requests(listener: TcpListener, handler: Handler, ready: Readiness) {
    const PAUSE_MAX: Duration = Duration::from_secs(1);
    let mut pause = Duration::from_millis(10);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                pause = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                warn!("accepting a connection: {e}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(PAUSE_MAX);
                continue;
            }
        };
        let (handler, ready) = (handler.clone(), ready.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let (handler, ready) = (handler.clone(), ready.clone());
                async move { Ok::<_, Infallible>(respond(request, &handler, &ready).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, "HTTP connection: {e}");
            }
        });
    }
}

type HyperBody = BoxBody<Bytes, Infallible>;

/// The answer to one request.
async fn respond(
    request: hyper::Request<Incoming>,
    handler: &Handler,
    ready: &Readiness,
) -> hyper::Response<HyperBody> {
    let answer = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => Response::text(200, "ok\n"),
        (&Method::GET, "/readyz") => match ready.get() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(what) => Response::text(503, format!("not ready: {what}\n")),
        },
        (&Method::GET, path) => {
            let call = Request {
                path: path.to_owned(),
                query: request.uri().query().unwrap_or_default().to_owned(),
                authorization: request
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            };
            handler(call)
                .await
                .unwrap_or_else(|| Response::text(404, "not found\n"))
        }
        _ => Response::text(405, "GET only\n"),
    };
    let body: HyperBody = match answer.stream {
        None => Full::new(Bytes::from(answer.body)).boxed(),
        Some(chunks) => {
            let head = answer.body;
            let frames =
                futures::stream::unfold((Some(head), chunks), |(head, mut chunks)| async move {
                    if let Some(head) = head.filter(|h| !h.is_empty()) {
                        return Some((Ok(Frame::data(Bytes::from(head))), (None, chunks)));
                    }
                    let chunk = chunks.recv().await?;
                    Some((
                        Ok(Frame::data(Bytes::copy_from_slice(chunk.as_bytes()))),
                        (None, chunks),
                    ))
                });
            StreamBody::new(frames).boxed()
        }
    };
    let mut response = hyper::Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(answer.content_type),
    );
    if answer.status == 401 {
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn readyz_answers_503_until_ready_and_healthz_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Readiness::waiting("the first collection");
        let handler = Arc::new(|path: &str| (path == "/x").then(|| ("text/plain", "x".into())));
        let server = tokio::spawn(serve(listener, handler, ready.clone()));

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let waiting = get(addr, "/readyz").await;
        assert!(waiting.starts_with("HTTP/1.1 503"), "{waiting}");
        assert!(
            waiting.ends_with("not ready: the first collection\n"),
            "{waiting}"
        );
        ready.set(Ok(()));
        let now = get(addr, "/readyz").await;
        assert!(
            now.starts_with("HTTP/1.1 200") && now.ends_with("ready\n"),
            "{now}"
        );
        assert!(get(addr, "/x").await.ends_with("\r\n\r\nx"));
        assert!(get(addr, "/y").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }
}
