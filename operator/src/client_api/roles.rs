//! Who may do what: four roles, granted cluster-wide or in one namespace, from role
//! bindings on the caller's groups or user name, or from a roles claim of its OIDC token.
//!
//! As in Kubernetes RBAC, a grant in a namespace covers only that namespace's resources:
//! a requester in `team-a` sees nothing of `team-b`, and cluster-scoped resources
//! (GpuAttestations, node tokens, the audit trail) need a cluster-wide grant.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads attestations and fetches their tokens.
    Viewer,
    /// A viewer that may also request model attestations.
    Requester,
    /// A viewer that may also read and verify the audit trail.
    Auditor,
    /// Everything.
    Admin,
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "requester" => Ok(Role::Requester),
            "auditor" => Ok(Role::Auditor),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (roles: viewer, requester, auditor, admin)"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Requester => "requester",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        })
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// List and get attestations.
    Read,
    /// Fetch an attestation token.
    Token,
    /// Create a ModelAttestation.
    Request,
    /// Read and verify the audit trail.
    Audit,
}

impl Role {
    /// Whether this role has `perm`.
    pub fn allows(self, perm: Permission) -> bool {
        matches!(
            (self, perm),
            (Role::Admin, _)
                | (_, Permission::Read | Permission::Token)
                | (Role::Requester, Permission::Request)
                | (Role::Auditor, Permission::Audit)
        )
    }
}

/// Where a grant applies.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Everywhere, cluster-scoped resources included.
    Cluster,
    /// One namespace's resources.
    Namespace(String),
}

/// A role in a scope.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// Where.
    pub scope: Scope,
}

impl FromStr for Grant {
    type Err = String;

    /// `ROLE` (cluster-wide) or `ROLE/NAMESPACE`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (role, scope) = match s.split_once('/') {
            None => (s, Scope::Cluster),
            Some((role, ns)) => {
                if !is_dns_label(ns) {
                    return Err(format!("{ns:?} is not a namespace name"));
                }
                (role, Scope::Namespace(ns.to_owned()))
            }
        };
        Ok(Grant {
            role: role.parse()?,
            scope,
        })
    }
}

/// Whom a binding names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A group (OIDC groups claim, or the API server's groups of a ServiceAccount, e.g.
    /// `system:serviceaccounts:team-a`).
    Group(String),
    /// A user name (OIDC username claim, or `system:serviceaccount:NS:NAME`).
    User(String),
}

/// `group:NAME=GRANT` or `user:NAME=GRANT`, GRANT being `ROLE` or `ROLE/NAMESPACE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleBinding {
    /// Whom.
    pub subject: Subject,
    /// What.
    pub grant: Grant,
}

impl FromStr for RoleBinding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let usage = || {
            format!(
                "role binding {s:?} must be group:NAME=ROLE[/NAMESPACE] or user:NAME=ROLE[/NAMESPACE]"
            )
        };
        let (subject, grant) = s.rsplit_once('=').ok_or_else(usage)?;
        let subject = match subject.split_once(':') {
            Some(("group", name)) if !name.is_empty() => Subject::Group(name.into()),
            Some(("user", name)) if !name.is_empty() => Subject::User(name.into()),
            _ => return Err(usage()),
        };
        let grant = grant
            .parse()
            .map_err(|e| format!("role binding {s:?}: {e}"))?;
        Ok(RoleBinding { subject, grant })
    }
}

/// The grants of a caller with `user` name and `groups`, from `bindings`.
pub fn grants_of(user: &str, groups: &[String], bindings: &[RoleBinding]) -> BTreeSet<Grant> {
    bindings
        .iter()
        .filter(|b| match &b.subject {
            Subject::User(u) => u == user,
            Subject::Group(g) => groups.iter().any(|x| x == g),
        })
        .map(|b| b.grant.clone())
        .collect()
}

/// Which namespaces a caller may see for a permission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// All (a cluster-wide grant).
    All,
    /// Only these (possibly none).
    Only(BTreeSet<String>),
}

impl Namespaces {
    /// Whether `ns` is among them.
    pub fn contains(&self, ns: &str) -> bool {
        match self {
            Namespaces::All => true,
            Namespaces::Only(set) => set.contains(ns),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Its user name (OIDC username claim, or the ServiceAccount's user name).
    pub user: String,
    /// How it authenticated: `oidc` or `serviceaccount`.
    pub method: &'static str,
    /// What it may do.
    pub grants: BTreeSet<Grant>,
}

impl Identity {
    /// Whether the caller has `perm` on a resource in `namespace` (`None`: a
    /// cluster-scoped resource, which needs a cluster-wide grant).
    pub fn may(&self, perm: Permission, namespace: Option<&str>) -> bool {
        self.grants.iter().any(|g| {
            g.role.allows(perm)
                && match (&g.scope, namespace) {
                    (Scope::Cluster, _) => true,
                    (Scope::Namespace(mine), Some(ns)) => mine == ns,
                    (Scope::Namespace(_), None) => false,
                }
        })
    }

    /// The namespaces where the caller has `perm`.
    pub fn namespaces(&self, perm: Permission) -> Namespaces {
        let mut only = BTreeSet::new();
        for g in self.grants.iter().filter(|g| g.role.allows(perm)) {
            match &g.scope {
                Scope::Cluster => return Namespaces::All,
                Scope::Namespace(ns) => {
                    only.insert(ns.clone());
                }
            }
        }
        Namespaces::Only(only)
    }
}

/// Whether `s` is a DNS-1123 label (a namespace name).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain (an object name).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(grants: &[&str]) -> Identity {
        Identity {
            user: "u".into(),
            method: "oidc",
            grants: grants.iter().map(|g| g.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn roles_grant_their_permissions_only() {
        use Permission::*;
        let table = [
            (Role::Viewer, [true, true, false, false]),
            (Role::Requester, [true, true, true, false]),
            (Role::Auditor, [true, true, false, true]),
            (Role::Admin, [true, true, true, true]),
        ];
        for (role, want) in table {
            let got = [Read, Token, Request, Audit].map(|p| role.allows(p));
            assert_eq!(got, want, "{role}");
        }
    }

    #[test]
    fn a_namespaced_grant_covers_its_namespace_only() {
        let a = id(&["requester/team-a"]);
        assert!(a.may(Permission::Request, Some("team-a")));
        assert!(!a.may(Permission::Request, Some("team-b")));
        assert!(
            !a.may(Permission::Read, None),
            "cluster-scoped needs a cluster grant"
        );
        assert_eq!(
            a.namespaces(Permission::Read),
            Namespaces::Only(["team-a".to_owned()].into())
        );
        let admin = id(&["admin"]);
        assert!(admin.may(Permission::Audit, None));
        assert_eq!(admin.namespaces(Permission::Read), Namespaces::All);
    }

    #[test]
    fn bindings_parse_and_match_users_and_groups() {
        let bindings: Vec<RoleBinding> = [
            "group:ml=requester/team-a",
            "user:alice@example.com=auditor",
            "group:system:serviceaccounts:ci=viewer/ci",
        ]
        .iter()
        .map(|b| b.parse().unwrap())
        .collect();
        let g = grants_of("alice@example.com", &["ml".into()], &bindings);
        assert_eq!(g.len(), 2);
        let sa = grants_of("x", &["system:serviceaccounts:ci".into()], &bindings);
        assert_eq!(
            sa.into_iter().next().unwrap().to_owned(),
            "viewer/ci".parse().unwrap()
        );
        for bad in [
            "ml=viewer",
            "group:ml=root",
            "group:ml=viewer/Team_A",
            "group:=viewer",
        ] {
            assert!(bad.parse::<RoleBinding>().is_err(), "{bad}");
        }
    }
}
