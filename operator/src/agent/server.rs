//! The agent's HTTP endpoint: `/metrics` (OpenMetrics text), `/flows` (the
//! joined flows of the last collection as JSON, which carries what another
//! node needs to compare its decap counts with this node's encap counts),
//! `/flows/stream` (the live stream, [`super::stream`]), `/healthz`, and
//! `/readyz` (200 once a collection round read the maps (and looked for
//! flannel's devices) and, with the API server, the pod and profile caches
//! are synced). HTTP/1.1 (hyper, [`crate::http`]): one request per
//! connection, GET only.
//!
//! `/flows` reveals who talks to whom: with an API server at hand it is
//! served only to callers whose bearer token the API server authenticates
//! (TokenReview), and only the flows of the namespaces where they may `get
//! pods` (SubjectAccessReview; see [`super::authz`]). `/metrics` carries no
//! peer addresses and stays open.

use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::authz::{Access, FlowAuthz, Refused};
use super::stream::{Hub, lost_line};
use super::table::FlowTable;
use crate::http::{self, Request, Response};

pub struct Endpoints {
    pub registry: Registry,
    pub flows: Arc<Mutex<FlowTable>>,
    /// `None`: `/flows` is open (no API server to ask, or turned off).
    pub authz: Option<Arc<FlowAuthz>>,
    /// The live stream of `/flows/stream`.
    pub stream: Arc<Hub>,
    /// This node's name (in the stream's lines).
    pub node: String,
}

pub async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>, ready: http::Readiness) {
    let handler: http::Handler = Arc::new(move |request: Request| {
        let endpoints = endpoints.clone();
        Box::pin(async move { endpoints.get(request).await })
    });
    http::serve_requests(listener, handler, ready).await
}

impl Endpoints {
    /// The answer to `GET path` (`/healthz` and `/readyz` are
    /// [`http::serve_requests`]'s).
    async fn get(&self, request: Request) -> Option<Response> {
        match request.path.as_str() {
            "/metrics" => Some(Response::ok(http::metrics(&self.registry))),
            "/flows" => Some(self.flows(&request).await),
            "/flows/stream" => Some(self.stream(&request).await),
            _ => None,
        }
    }

    /// `/flows/stream`: JSON lines of flow updates (see [`super::stream`]),
    /// only of the namespaces the caller may read, as `/flows`.
    async fn stream(&self, request: &Request) -> Response {
        let access = match self.access(request).await {
            Ok(access) => access,
            Err(refused) => return refused,
        };
        let mut updates = self.stream.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel::<Arc<str>>(64);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut lost_total = 0u64;
            loop {
                let batch = match updates.recv().await {
                    Ok(batch) => batch,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        lost_total += n;
                        if tx
                            .send(Arc::from(lost_line(&node, n, lost_total)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                for update in batch.iter() {
                    let allowed = access
                        .as_ref()
                        .is_none_or(|a| a.allows(update.namespace.as_deref()));
                    if allowed && tx.send(update.line.clone()).await.is_err() {
                        return;
                    }
                }
                // The end of one collection (also when nothing of it was
                // for this client): `kubectl weir observe` without -f stops
                // after one from every agent.
                let end = format!(
                    "{}\n",
                    serde_json::json!({ "node": node, "endOfCollection": true })
                );
                if tx.send(Arc::from(end)).await.is_err() {
                    return;
                }
            }
        });
        Response::streaming("application/x-ndjson", rx)
    }

    /// Who the caller is allowed to see, or the refusal to answer with.
    async fn access(&self, request: &Request) -> Result<Option<Access>, Response> {
        let Some(authz) = &self.authz else {
            return Ok(None);
        };
        let namespaces = self.flows.lock().expect("flows lock").namespaces();
        match authz.access(request.bearer_token(), &namespaces).await {
            Ok(access) if access.is_empty() => Err(Response::text(
                403,
                "forbidden: you may not get pods in any namespace whose flows this node holds\n",
            )),
            Ok(access) => Ok(Some(access)),
            Err(Refused::Unauthenticated(why)) => {
                Err(Response::text(401, format!("unauthorized: {why}\n")))
            }
            Err(e @ Refused::Unavailable(_)) => Err(Response::text(503, format!("{e}\n"))),
        }
    }

    async fn flows(&self, request: &Request) -> Response {
        let access = match self.access(request).await {
            Ok(access) => access,
            Err(refused) => return refused,
        };
        // Rendered from the table under its lock (no await inside).
        let table = self.flows.lock().expect("flows lock");
        let mut json = Vec::with_capacity(table.len() * 512 + 2);
        let written = match &access {
            None => table.write_json(&mut json),
            Some(access) => table.write_json_filtered(&mut json, &|ns| access.allows(ns)),
        };
        drop(table);
        let body = match written {
            Ok(()) => String::from_utf8(json).unwrap_or_else(|_| "[]".into()),
            Err(_) => "[]".into(),
        };
        Response::ok(("application/json", body))
    }
}
