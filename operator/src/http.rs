//! The HTTP/1.1 endpoints (hyper) behind the agent's and the controller's
//! endpoints: one request per connection, GET only, `/healthz` (the process
//! answers) and `/readyz` (it really works: the caller's [`Readiness`])
//! answered here, every other path by the caller's handler (`None`: 404),
//! and `/metrics` as OpenMetrics text rendered from a registry ([`metrics`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
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
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(&request, &*handler, &ready);
                async move { Ok::<_, std::convert::Infallible>(response) }
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

/// The answer to one request.
fn respond(
    request: &Request<Incoming>,
    handler: &(dyn Fn(&str) -> Option<Body> + Send + Sync),
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    let (status, (content_type, body)) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, ("text/plain", "ok\n".to_owned())),
        (&Method::GET, "/readyz") => match ready.get() {
            Ok(()) => (StatusCode::OK, ("text/plain", "ready\n".to_owned())),
            Err(what) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ("text/plain", format!("not ready: {what}\n")),
            ),
        },
        (&Method::GET, path) => match handler(path) {
            Some(found) => (StatusCode::OK, found),
            None => (
                StatusCode::NOT_FOUND,
                ("text/plain", "not found\n".to_owned()),
            ),
        },
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            ("text/plain", "GET only\n".to_owned()),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
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
