//! The agent's HTTP endpoint: `/metrics` (OpenMetrics text), `/flows` (the
//! joined flows of the last collection as JSON, which carries what another
//! node needs to compare its decap counts with this node's encap counts),
//! and `/healthz`. A deliberately small HTTP/1.1 responder: one request per
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

use super::authz::{FlowAuthz, Refused};
use super::table::FlowTable;
use crate::http::{self, Request, Response};

pub struct Endpoints {
    pub registry: Registry,
    pub flows: Arc<Mutex<FlowTable>>,
    /// `None`: `/flows` is open (no API server to ask, or turned off).
    pub authz: Option<Arc<FlowAuthz>>,
}

pub async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>) {
    let handler: http::Handler = Arc::new(move |request: Request| {
        let endpoints = endpoints.clone();
        Box::pin(async move { endpoints.get(request).await })
    });
    http::serve_requests(listener, handler).await
}

impl Endpoints {
    /// The answer to `GET path` (`/healthz` is [`http::serve_requests`]'s).
    async fn get(&self, request: Request) -> Option<Response> {
        match request.path.as_str() {
            "/metrics" => Some(Response::ok(http::metrics(&self.registry))),
            "/flows" => Some(self.flows(&request).await),
            _ => None,
        }
    }

    async fn flows(&self, request: &Request) -> Response {
        let access = match &self.authz {
            None => None,
            Some(authz) => {
                let namespaces = self.flows.lock().expect("flows lock").namespaces();
                match authz.access(request.bearer_token(), &namespaces).await {
                    Ok(access) if access.is_empty() => {
                        return Response::text(
                            403,
                            "forbidden: you may not get pods in any namespace whose flows this node holds\n",
                        );
                    }
                    Ok(access) => Some(access),
                    Err(Refused::Unauthenticated(why)) => {
                        return Response::text(401, format!("unauthorized: {why}\n"));
                    }
                    Err(e @ Refused::Unavailable(_)) => {
                        return Response::text(503, format!("{e}\n"));
                    }
                }
            }
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
