//! On SIGTERM: an uninstall or a restart? And the uninstall itself.
//!
//! The agent DaemonSet decides. Still there and not being deleted: a
//! restart, an upgrade, a node drain: weir's files stay, so pods keep
//! being split while the new agent pod comes up. Gone (404) or carrying a
//! `deletionTimestamp`: an uninstall: weir's conflist and binary go.
//!
//! The API server refusing this pod's credentials (401: its service account
//! is gone; 403: its RoleBinding is gone) counts as an uninstall too:
//! `helm uninstall` deletes the DaemonSet and then, within the same second,
//! the RBAC objects and the service account, before the kubelet has even
//! sent SIGTERM, so by then the lookup is refused as often as it is
//! answered 404. A chart that forgets the `get daemonsets` rule would make
//! every restart an uninstall (the new pod installs again); the installer
//! checks the lookup at start and logs an error if it is refused.
//!
//! The API server unreachable (timeouts, connection errors, 5xx): the
//! files stay. A stale weir entry with `failurePolicy: Ignore` never stops a
//! pod from starting; a missing one only stops counting.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::{Api, Client};

/// What the API server said about the agent DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonSetLookup {
    Exists,
    BeingDeleted,
    /// 404.
    Gone,
    /// 401 or 403: this pod's credentials or RBAC were taken away.
    AccessRevoked(String),
    /// No answer, or an error that says nothing about the DaemonSet.
    Unreachable(String),
    /// No DaemonSet name or namespace, or no API server configured.
    NotConfigured(String),
}

/// What to do with weir's files on SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermAction {
    Uninstall,
    Keep,
}

/// The decision, with the reason for the log.
pub fn decide(lookup: &DaemonSetLookup) -> (TermAction, String) {
    match lookup {
        DaemonSetLookup::Exists => (
            TermAction::Keep,
            "the agent DaemonSet still exists: a restart or an upgrade".into(),
        ),
        DaemonSetLookup::BeingDeleted => (
            TermAction::Uninstall,
            "the agent DaemonSet is being deleted".into(),
        ),
        DaemonSetLookup::Gone => (
            TermAction::Uninstall,
            "the agent DaemonSet is gone (404)".into(),
        ),
        DaemonSetLookup::AccessRevoked(e) => (
            TermAction::Uninstall,
            format!(
                "the API server refused this pod's access to the DaemonSet ({e}): its RBAC or service account is gone, as on helm uninstall"
            ),
        ),
        DaemonSetLookup::Unreachable(e) => (
            TermAction::Keep,
            format!(
                "the API server could not say whether the agent DaemonSet exists ({e}); keeping weir's files to be safe"
            ),
        ),
        DaemonSetLookup::NotConfigured(e) => (
            TermAction::Keep,
            format!("{e}; keeping weir's files (`install-cni --uninstall` removes them)"),
        ),
    }
}

/// Classifies one answer of the API server.
pub fn classify(result: Result<Option<DaemonSet>, kube::Error>) -> DaemonSetLookup {
    match result {
        Ok(Some(ds)) if ds.metadata.deletion_timestamp.is_some() => DaemonSetLookup::BeingDeleted,
        Ok(Some(_)) => DaemonSetLookup::Exists,
        Ok(None) => DaemonSetLookup::Gone,
        Err(kube::Error::Api(status)) if status.code == 404 => DaemonSetLookup::Gone,
        Err(kube::Error::Api(status)) if status.code == 401 || status.code == 403 => {
            DaemonSetLookup::AccessRevoked(format!("{} {}", status.code, status.message))
        }
        Err(kube::Error::Api(status)) => {
            DaemonSetLookup::Unreachable(format!("{} {}", status.code, status.message))
        }
        Err(e) => DaemonSetLookup::Unreachable(e.to_string()),
    }
}

/// Asks the API server about `namespace/name`, retrying an unreachable
/// server until `budget` has passed (each try bounded by a third of it).
pub async fn lookup(
    client: &Client,
    namespace: &str,
    name: &str,
    budget: Duration,
) -> DaemonSetLookup {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + budget;
    let per_try = (budget / 3).max(Duration::from_millis(200));
    let mut pause = Duration::from_millis(200);
    loop {
        let answer = match tokio::time::timeout(per_try, api.get_opt(name)).await {
            Ok(result) => classify(result),
            Err(_) => DaemonSetLookup::Unreachable(format!("no answer within {per_try:?}")),
        };
        let now = tokio::time::Instant::now();
        match answer {
            DaemonSetLookup::Unreachable(_) if now + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn api_error(code: u16) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "message": format!("code {code}"),
            "reason": "Test",
            "code": code,
        }))
        .unwrap();
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn only_gone_deleted_or_revoked_uninstall() {
        let cases = [
            (DaemonSetLookup::Exists, TermAction::Keep),
            (DaemonSetLookup::BeingDeleted, TermAction::Uninstall),
            (DaemonSetLookup::Gone, TermAction::Uninstall),
            (
                DaemonSetLookup::AccessRevoked("403".into()),
                TermAction::Uninstall,
            ),
            (
                DaemonSetLookup::Unreachable("timeout".into()),
                TermAction::Keep,
            ),
            (
                DaemonSetLookup::NotConfigured("no name".into()),
                TermAction::Keep,
            ),
        ];
        for (lookup, action) in cases {
            let (got, reason) = decide(&lookup);
            assert_eq!(got, action, "{lookup:?}: {reason}");
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn answers_are_classified() {
        let mut ds = DaemonSet::default();
        assert_eq!(classify(Ok(Some(ds.clone()))), DaemonSetLookup::Exists);
        ds.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(classify(Ok(Some(ds))), DaemonSetLookup::BeingDeleted);
        assert_eq!(classify(Ok(None)), DaemonSetLookup::Gone);
        assert_eq!(classify(Err(api_error(404))), DaemonSetLookup::Gone);
        assert!(matches!(
            classify(Err(api_error(403))),
            DaemonSetLookup::AccessRevoked(m) if m.contains("403")
        ));
        assert!(matches!(
            classify(Err(api_error(401))),
            DaemonSetLookup::AccessRevoked(_)
        ));
        assert!(matches!(
            classify(Err(api_error(503))),
            DaemonSetLookup::Unreachable(m) if m.contains("503")
        ));
        assert!(matches!(
            classify(Err(api_error(429))),
            DaemonSetLookup::Unreachable(_)
        ));
    }
}
