//! Who may read flows from the agent: the caller's bearer token is
//! authenticated with a TokenReview and authorised, per namespace, with
//! SubjectAccessReviews for `get pods` there (what kube-rbac-proxy does for
//! a whole endpoint, here per namespace: a user who cannot read the pods of
//! a namespace sees none of its flows). A user who may `get pods` in every
//! namespace (a SubjectAccessReview without a namespace) sees everything,
//! including flows of pods recorded without a namespace.
//!
//! Answers are cached for [`CACHE_TTL`] per token (bounded), so a client
//! polling `/flows` costs the API server a review every half minute, not
//! every request.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

/// How long an authentication or authorisation answer is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Cached answers at most (the cache is emptied when full).
const CACHE_MAX: usize = 4096;

/// What a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every flow (`get pods` in all namespaces).
    All,
    /// The flows of these namespaces (possibly none).
    Namespaces(BTreeSet<String>),
}

impl Access {
    pub fn allows(&self, namespace: Option<&str>) -> bool {
        match (self, namespace) {
            (Access::All, _) => true,
            (Access::Namespaces(set), Some(ns)) => set.contains(ns),
            (Access::Namespaces(_), None) => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Access::Namespaces(set) if set.is_empty())
    }
}

/// Why a caller is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// No bearer token, or one the API server does not accept: 401.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The API server could not be asked: 503 (fail closed).
    #[error("cannot review the caller with the API server: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone)]
struct User {
    name: String,
    uid: Option<String>,
    groups: Vec<String>,
    extra: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// Token → when it was reviewed, and who it is (or why not).
type UserCache = HashMap<String, (Instant, Result<User, String>)>;

/// Authenticates and authorises flow readers against the API server.
pub struct FlowAuthz {
    client: kube::Client,
    users: Mutex<UserCache>,
    /// (user name, namespace or "" for all) → allowed.
    decisions: Mutex<HashMap<(String, String), (Instant, bool)>>,
}

impl FlowAuthz {
    pub fn new(client: kube::Client) -> FlowAuthz {
        FlowAuthz {
            client,
            users: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    /// What the holder of `token` may see of flows in `namespaces`.
    pub async fn access(
        &self,
        token: Option<&str>,
        namespaces: &BTreeSet<String>,
    ) -> Result<Access, Refused> {
        let token = token.ok_or_else(|| Refused::Unauthenticated("no bearer token".to_owned()))?;
        let user = self.authenticate(token).await?;
        if self.may_get_pods(&user, None).await? {
            return Ok(Access::All);
        }
        let mut allowed = BTreeSet::new();
        for ns in namespaces {
            if self.may_get_pods(&user, Some(ns)).await? {
                allowed.insert(ns.clone());
            }
        }
        Ok(Access::Namespaces(allowed))
    }

    async fn authenticate(&self, token: &str) -> Result<User, Refused> {
        if let Some((at, answer)) = self.users.lock().expect("users lock").get(token)
            && at.elapsed() < CACHE_TTL
        {
            return answer.clone().map_err(Refused::Unauthenticated);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refused::Unavailable(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        let result = match (status.authenticated, status.user) {
            (Some(true), Some(u)) => Ok(User {
                name: u.username.unwrap_or_default(),
                uid: u.uid,
                groups: u.groups.unwrap_or_default(),
                extra: u.extra,
            }),
            _ => Err(status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the token is not valid".to_owned())),
        };
        let mut users = self.users.lock().expect("users lock");
        if users.len() >= CACHE_MAX {
            users.clear();
        }
        users.insert(token.to_owned(), (Instant::now(), result.clone()));
        result.map_err(Refused::Unauthenticated)
    }

    /// Whether `user` may `get pods` in `namespace` (`None`: in all).
    async fn may_get_pods(&self, user: &User, namespace: Option<&str>) -> Result<bool, Refused> {
        let key = (
            format!("{}\u{0}{}", user.name, user.groups.join(",")),
            namespace.unwrap_or_default().to_owned(),
        );
        if let Some((at, allowed)) = self.decisions.lock().expect("decisions lock").get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(*allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    namespace: namespace.map(str::to_owned),
                    verb: Some("get".to_owned()),
                    resource: Some("pods".to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refused::Unavailable(format!("SubjectAccessReview: {e}")))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        let mut decisions = self.decisions.lock().expect("decisions lock");
        if decisions.len() >= CACHE_MAX {
            decisions.clear();
        }
        decisions.insert(key, (Instant::now(), allowed));
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_by_namespace() {
        let some = Access::Namespaces(["a".to_owned()].into());
        assert!(some.allows(Some("a")));
        assert!(!some.allows(Some("b")));
        assert!(
            !some.allows(None),
            "pods without a namespace: cluster-wide readers only"
        );
        assert!(Access::All.allows(None));
        assert!(Access::Namespaces(BTreeSet::new()).is_empty());
        assert!(!some.is_empty());
    }
}
