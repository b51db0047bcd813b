//! Who is calling the evidence API: a node agent, identified by its projected
//! ServiceAccount token, which the API server checks (TokenReview).
//!
//! A token proves a node only when the kubelet bound it to a pod on that node: the API
//! server then reports the node in the review's `extra` under
//! `authentication.kubernetes.io/node-name`. Tokens without that binding, for another
//! audience, or of a ServiceAccount other than the agent's are refused, so that an agent
//! can speak only for the node it runs on.

use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};
use kube::api::{Api, PostParams};

/// The audience agent tokens are requested for.
pub const AUDIENCE: &str = "lotabots";

/// The `extra` key under which the API server names the node a bound token's pod runs on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// An authenticated agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The node the token is bound to.
    pub node: String,
    /// `namespace/name` of its ServiceAccount.
    pub service_account: String,
}

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token (Authorization: Bearer <projected ServiceAccount token>)")]
    MissingToken,
    /// The API server did not accept the token.
    #[error("token rejected by the API server: {0}")]
    Rejected(String),
    /// Valid, but not for our audience.
    #[error("token is for audiences {0:?}, not {AUDIENCE:?}")]
    WrongAudience(Vec<String>),
    /// Valid, but not the agent's ServiceAccount.
    #[error("{0} is not an agent ServiceAccount allowed to submit evidence")]
    NotAnAgent(String),
    /// Valid, but not bound to a pod on a node.
    #[error("token is not bound to a pod on a node (no {NODE_NAME_EXTRA} in the review)")]
    NotNodeBound,
    /// The API server could not be asked.
    #[error("token review failed: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Rejected(_) => "token_rejected",
            AuthError::WrongAudience(_) => "wrong_audience",
            AuthError::NotAnAgent(_) => "not_an_agent",
            AuthError::NotNodeBound => "not_node_bound",
            AuthError::Unavailable(_) => "review_unavailable",
        }
    }
}

/// The boxed future an [`Authenticator`] returns (object-safe, so the API can hold any).
pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AgentIdentity, AuthError>> + Send + 'a>>;

/// Turns a bearer token into an agent identity.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates `token`.
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

/// Authenticates with the API server's TokenReview.
pub struct TokenReviewAuthenticator {
    reviews: Api<TokenReview>,
    agents: Vec<String>,
}

impl TokenReviewAuthenticator {
    /// Accepts tokens of the ServiceAccounts `agents` (each `namespace/name`).
    pub fn new(client: kube::Client, agents: Vec<String>) -> Self {
        Self {
            reviews: Api::all(client),
            agents,
        }
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: Some(vec![AUDIENCE.into()]),
                },
                ..Default::default()
            };
            let reviewed = self
                .reviews
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| AuthError::Unavailable(e.to_string()))?;
            identity_from_review(reviewed.status.as_ref(), &self.agents)
        })
    }
}

/// Reads an agent identity out of a TokenReview's status; pure, so every refusal is tested.
pub fn identity_from_review(
    status: Option<&TokenReviewStatus>,
    agents: &[String],
) -> Result<AgentIdentity, AuthError> {
    let status = status.ok_or_else(|| AuthError::Rejected("the review has no status".into()))?;
    let user = reviewed_user(status)?;
    let username = user.username.clone().unwrap_or_default();
    let service_account = service_account_of(&username)
        .map(|(ns, name)| format!("{ns}/{name}"))
        .filter(|sa| agents.iter().any(|a| a == sa))
        .ok_or(AuthError::NotAnAgent(username))?;
    let node = bound_extra(user, NODE_NAME_EXTRA).ok_or(AuthError::NotNodeBound)?;
    Ok(AgentIdentity {
        node,
        service_account,
    })
}

/// Why a TokenReview does not vouch for a token of [`AUDIENCE`]; each API maps it to its
/// own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewRefusal {
    /// Not authenticated (the API server's reason), or no user named.
    Rejected(String),
    /// Authenticated, for these audiences only.
    WrongAudience(Vec<String>),
}

impl From<ReviewRefusal> for AuthError {
    fn from(r: ReviewRefusal) -> Self {
        match r {
            ReviewRefusal::Rejected(why) => AuthError::Rejected(why),
            ReviewRefusal::WrongAudience(a) => AuthError::WrongAudience(a),
        }
    }
}

/// The user a TokenReview's status vouches for: authenticated, and for [`AUDIENCE`].
pub fn reviewed_user(status: &TokenReviewStatus) -> Result<&UserInfo, ReviewRefusal> {
    if status.authenticated != Some(true) {
        return Err(ReviewRefusal::Rejected(
            status
                .error
                .clone()
                .unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    // The API server leaves out audiences it did not check, and lists the ones it did.
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(ReviewRefusal::WrongAudience(audiences));
    }
    status
        .user
        .as_ref()
        .ok_or_else(|| ReviewRefusal::Rejected("the review names no user".into()))
}

/// `(namespace, name)` of a ServiceAccount's username (`system:serviceaccount:NS:NAME`);
/// `None` for any other user.
pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
    username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
}

/// The one non-empty value of `key` in the user's `extra`, where the API server names
/// what a bound token is bound to (node, pod); `None` when absent, empty or ambiguous.
pub fn bound_extra(user: &UserInfo, key: &str) -> Option<String> {
    user.extra
        .as_ref()
        .and_then(|extra| extra.get(key))
        .and_then(|values| match values.as_slice() {
            [one] if !one.is_empty() => Some(one.clone()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn status(user: &str, audiences: &[&str], node: Option<&str>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: node
                    .map(|n| BTreeMap::from([(NODE_NAME_EXTRA.to_owned(), vec![n.to_owned()])])),
                ..Default::default()
            }),
            error: None,
        }
    }

    fn agents() -> Vec<String> {
        vec!["lotabots-system/lotabots-agent".into()]
    }

    const AGENT: &str = "system:serviceaccount:lotabots-system:lotabots-agent";

    #[test]
    fn a_node_bound_agent_token_names_its_node() {
        let id = identity_from_review(Some(&status(AGENT, &[AUDIENCE], Some("gpu-7"))), &agents())
            .unwrap();
        assert_eq!(
            id,
            AgentIdentity {
                node: "gpu-7".into(),
                service_account: "lotabots-system/lotabots-agent".into()
            }
        );
    }

    #[test]
    fn refusals_name_what_was_wrong() {
        let a = agents();
        let wrong_aud = identity_from_review(
            Some(&status(
                AGENT,
                &["https://kubernetes.default.svc"],
                Some("n"),
            )),
            &a,
        );
        assert_eq!(wrong_aud.unwrap_err().label(), "wrong_audience");
        let other_sa = identity_from_review(
            Some(&status(
                "system:serviceaccount:default:default",
                &[AUDIENCE],
                Some("n"),
            )),
            &a,
        );
        assert_eq!(
            other_sa.unwrap_err(),
            AuthError::NotAnAgent("system:serviceaccount:default:default".into())
        );
        let user = identity_from_review(Some(&status("alice", &[AUDIENCE], Some("n"))), &a);
        assert_eq!(user.unwrap_err().label(), "not_an_agent");
        let unbound = identity_from_review(Some(&status(AGENT, &[AUDIENCE], None)), &a);
        assert_eq!(unbound.unwrap_err(), AuthError::NotNodeBound);
        let mut rejected = status(AGENT, &[AUDIENCE], Some("n"));
        rejected.authenticated = Some(false);
        rejected.error = Some("token has expired".into());
        assert_eq!(
            identity_from_review(Some(&rejected), &a).unwrap_err(),
            AuthError::Rejected("token has expired".into())
        );
        assert_eq!(
            identity_from_review(None, &a).unwrap_err().label(),
            "token_rejected"
        );
    }

    #[test]
    fn a_service_account_named_like_a_prefix_is_not_the_agent() {
        let a = agents();
        let sa = "system:serviceaccount:lotabots-system:lotabots-agent-evil";
        assert_eq!(
            identity_from_review(Some(&status(sa, &[AUDIENCE], Some("n"))), &a)
                .unwrap_err()
                .label(),
            "not_an_agent"
        );
    }
}
