//! The agent's HTTP endpoint: `/metrics` (OpenMetrics text), `/flows` (the
//! joined flows of the last collection as JSON, which carries what another
//! node needs to compare its decap counts with this node's encap counts),
//! `/healthz`, and `/readyz` (200 once a collection round read the maps
//! (and looked for flannel's devices) and, with the API server, the pod and
//! profile caches are synced). A deliberately small HTTP/1.1 responder: one request per
//! connection, GET only.

use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::table::FlowTable;
use crate::http;

pub struct Endpoints {
    pub registry: Registry,
    pub flows: Arc<Mutex<FlowTable>>,
}

pub async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>, ready: http::Readiness) {
    http::serve(
        listener,
        Arc::new(move |path: &str| endpoints.get(path)),
        ready,
    )
    .await
}

impl Endpoints {
    /// The answer to `GET path` (`/healthz` is [`http::serve`]'s).
    fn get(&self, path: &str) -> Option<http::Body> {
        match path {
            "/metrics" => Some(http::metrics(&self.registry)),
            "/flows" => {
                // Rendered from the table under its lock (no await inside).
                let table = self.flows.lock().expect("flows lock");
                let mut json = Vec::with_capacity(table.len() * 512 + 2);
                let body = match table.write_json(&mut json) {
                    Ok(()) => String::from_utf8(json).unwrap_or_else(|_| "[]".into()),
                    Err(_) => "[]".into(),
                };
                drop(table);
                Some(("application/json", body))
            }
            _ => None,
        }
    }
}
