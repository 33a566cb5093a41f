//! The agent's HTTP endpoint: `/metrics` (OpenMetrics text), `/flows` (the
//! joined flows of the last collection as JSON, which carries what another
//! node needs to compare its decap counts with this node's encap counts),
//! and `/healthz`. A deliberately small HTTP/1.1 responder: one request per
//! connection, GET only.

use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use super::table::FlowTable;

pub struct Endpoints {
    pub registry: Registry,
    pub flows: Arc<Mutex<FlowTable>>,
}

pub async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &endpoints).await {
                debug!(%peer, "metrics connection: {e}");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, endpoints: &Endpoints) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
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
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            super::metrics::render(&endpoints.registry),
        ),
        ("GET", "/flows") => {
            // Rendered from the table under its lock (no await inside).
            let table = endpoints.flows.lock().expect("flows lock");
            let mut json = Vec::with_capacity(table.len() * 512 + 2);
            let body = match table.write_json(&mut json) {
                Ok(()) => String::from_utf8(json).unwrap_or_else(|_| "[]".into()),
                Err(_) => "[]".into(),
            };
            drop(table);
            ("200 OK", "application/json", body)
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
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
