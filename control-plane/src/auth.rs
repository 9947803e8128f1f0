//! Bearer tokens on the client API: `admin` (everything), `read` (GET only) and `member` (the
//! `/internal/v1/*` forwarding endpoints, shared by the control-plane members).
//!
//! Tokens are read from files (one token per line, `#` comments) named in the configuration;
//! with no admin token file configured, authentication is off (a warning is logged at start).
//! Tokens are compared in constant time and never logged.

use std::path::Path;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// GET requests on `/v1/*` and `/metrics`.
    Read,
    /// Every `/v1/*` request.
    Admin,
    /// The member-to-member `/internal/v1/*` endpoints.
    Member,
    /// A node agent without a node certificate (e.g. a Kubernetes DaemonSet): reads, and the
    /// writes agents make ([`node_token_check`]) for any node; never policy or cluster writes.
    Node,
}

impl Role {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Node => "node",
        }
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file cannot be read.
    #[error("cannot read the token file `{path}`")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no token, or one that is too short.
    #[error("token file `{path}`: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: &'static str,
    },
}

/// The accepted tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    admin: Vec<String>,
    read: Vec<String>,
    member: Option<String>,
    node: Vec<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("Tokens")
            .field("admin", &self.admin.len())
            .field("read", &self.read.len())
            .field("member", &self.member.is_some())
            .field("node", &self.node.len())
            .finish()
    }
}

/// Shortest accepted token.
const MIN_TOKEN_LEN: usize = 16;

fn read_tokens(path: &Path) -> Result<Vec<String>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let invalid = |reason| AuthError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    if tokens.is_empty() {
        return Err(invalid("holds no token"));
    }
    if tokens.iter().any(|t| t.len() < MIN_TOKEN_LEN) {
        return Err(invalid("tokens must be at least 16 characters"));
    }
    Ok(tokens)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// === impl Tokens ===

impl Tokens {
    /// Loads the token files; `admin` `None` turns authentication off.
    pub fn load(
        admin: Option<&Path>,
        read: Option<&Path>,
        member: Option<&Path>,
        node: Option<&Path>,
    ) -> Result<Self, AuthError> {
        let Some(admin) = admin else {
            return Ok(Tokens::default());
        };
        let member = match member {
            Some(p) => read_tokens(p)?.into_iter().next(),
            None => None,
        };
        Ok(Tokens {
            admin: read_tokens(admin)?,
            read: match read {
                Some(p) => read_tokens(p)?,
                None => Vec::new(),
            },
            member,
            node: match node {
                Some(p) => read_tokens(p)?,
                None => Vec::new(),
            },
        })
    }

    /// Whether requests must carry a token.
    pub fn enabled(&self) -> bool {
        !self.admin.is_empty()
    }

    /// The token this member presents to the others.
    pub fn member_token(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// The role of a presented token, if any.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let t = token.as_bytes();
        let any = |set: &[String]| set.iter().any(|s| constant_time_eq(s.as_bytes(), t));
        if self
            .member
            .as_ref()
            .is_some_and(|m| constant_time_eq(m.as_bytes(), t))
        {
            Some(Role::Member)
        } else if any(&self.admin) {
            Some(Role::Admin)
        } else if any(&self.read) {
            Some(Role::Read)
        } else if any(&self.node) {
            Some(Role::Node)
        } else {
            None
        }
    }
}

/// The role a request needs: `None` for the open endpoints.
pub fn required_role(method: &str, path: &str) -> Option<Role> {
    if path == "/healthz" || path == "/openapi.json" {
        None
    } else if path.starts_with("/internal/") {
        Some(Role::Member)
    } else if method == "GET" || method == "HEAD" {
        Some(Role::Read)
    } else {
        Some(Role::Admin)
    }
}

/// Whether `have` satisfies `need`: admin includes read; member only serves internal calls.
pub fn allows(have: Role, need: Role) -> bool {
    match need {
        Role::Read => matches!(have, Role::Read | Role::Admin | Role::Node),
        Role::Admin => have == Role::Admin,
        Role::Member => have == Role::Member,
        // Nothing requires the node role as such: its writes are checked by `node_token_check`.
        Role::Node => false,
    }
}

/// Why a bearer token does not grant a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No token or an unknown one (HTTP 401, gRPC `UNAUTHENTICATED`), with the reason.
    Unauthenticated(&'static str),
    /// A valid token of a role that does not satisfy the call's (HTTP 403, gRPC
    /// `PERMISSION_DENIED`).
    WrongRole(Role),
}

/// Checks the `authorization` header (or gRPC metadata) value of a call that needs `need`:
/// `Bearer TOKEN` with a token whose role [`allows`] it. Everything passes while authentication
/// is off (no admin token file). Both client APIs call this.
pub fn check_bearer(
    tokens: &Tokens,
    authorization: Option<&str>,
    need: Role,
) -> Result<(), Denial> {
    if !tokens.enabled() {
        return Ok(());
    }
    let Some(token) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
        return Err(Denial::Unauthenticated(
            "missing bearer token (`Authorization: Bearer TOKEN`)",
        ));
    };
    match tokens.role_of(token) {
        None => Err(Denial::Unauthenticated("invalid bearer token")),
        Some(have) if allows(have, need) => Ok(()),
        Some(have) => Err(Denial::WrongRole(have)),
    }
}

/// What a request from a node's agent (a client certificate with the node role) may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCheck {
    /// Allowed as it is.
    Allow,
    /// Refused, with the reason.
    Deny(String),
    /// Allowed if the JSON body's `field` names the agent's node, and (`endpoint`: the path's
    /// IP) if that endpoint, when it exists, belongs to the agent's node.
    Owned {
        /// Body field that must name the node, if any.
        field: Option<&'static str>,
        /// The endpoint IP of the path, if any.
        endpoint: Option<String>,
    },
}

/// The calls an agent needs, for its own node `node` only: register itself
/// (`POST /v1/nodes` with `name` = `node`), `POST /v1/nodes/{node}/heartbeat|ack|id-block|bindings`,
/// `POST /v1/identities`, `PUT`/`DELETE /v1/endpoints/{ip}` of its own endpoints (`node` =
/// `node`), and every `GET` under `/v1/` (the watch included). Everything else is refused.
pub fn agent_check(node: &str, method: &str, path: &str) -> AgentCheck {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let deny = || {
        AgentCheck::Deny(format!(
            "the node certificate of `{node}` may not call `{method} {path}`: agents may only \
             register, heartbeat, ack, lease id blocks and bind identities as their own node, \
             allocate identities, put and delete \
             their own endpoints, and read `/v1/*`"
        ))
    };
    match (method, segments.as_slice()) {
        ("GET" | "HEAD", ["v1", ..]) => AgentCheck::Allow,
        ("POST", ["v1", "identities"]) => AgentCheck::Allow,
        ("POST", ["v1", "nodes"]) => AgentCheck::Owned {
            field: Some("name"),
            endpoint: None,
        },
        (
            "POST",
            [
                "v1",
                "nodes",
                name,
                "heartbeat" | "ack" | "id-block" | "bindings",
            ],
        ) if *name == node => AgentCheck::Allow,
        (
            "POST",
            [
                "v1",
                "nodes",
                name,
                "heartbeat" | "ack" | "id-block" | "bindings",
            ],
        ) => AgentCheck::Deny(format!(
            "the node certificate of `{node}` may not act for node `{name}` (`{method} {path}`)"
        )),
        ("PUT", ["v1", "endpoints", ip]) => AgentCheck::Owned {
            field: Some("node"),
            endpoint: Some((*ip).to_owned()),
        },
        ("DELETE", ["v1", "endpoints", ip]) => AgentCheck::Owned {
            field: None,
            endpoint: Some((*ip).to_owned()),
        },
        _ => deny(),
    }
}

/// The writes a node token may make, for any node (a token names no node; a node certificate
/// limits an agent to its own, see [`agent_check`]): register a node, heartbeat, ack, lease id
/// blocks and bind identities, allocate identities, put and delete endpoints. Policy objects,
/// namespaces, pods, node removal, GC and cluster membership stay admin-only.
pub fn node_token_check(method: &str, path: &str) -> Result<(), String> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["v1", "identities"] | ["v1", "nodes"])
        | (
            "POST",
            [
                "v1",
                "nodes",
                _,
                "heartbeat" | "ack" | "id-block" | "bindings",
            ],
        )
        | ("PUT" | "DELETE", ["v1", "endpoints", _]) => Ok(()),
        _ => Err(format!(
            "a node token may not call `{method} {path}`: node tokens may only read, register \
             nodes, heartbeat, ack, lease id blocks, bind and allocate identities, and put and \
             delete endpoints (it needs the admin role)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_requirements() {
        let t = Tokens {
            admin: vec!["admin-token-0123456789".into()],
            read: vec!["read-token-0123456789".into()],
            member: Some("member-token-0123456789".into()),
            node: vec!["node-token-0123456789".into()],
        };
        assert_eq!(t.role_of("node-token-0123456789"), Some(Role::Node));
        assert!(allows(Role::Node, Role::Read));
        assert!(!allows(Role::Node, Role::Admin));
        assert_eq!(
            check_bearer(&t, Some("Bearer node-token-0123456789"), Role::Admin),
            Err(Denial::WrongRole(Role::Node))
        );
        assert_eq!(t.role_of("admin-token-0123456789"), Some(Role::Admin));
        assert_eq!(t.role_of("read-token-0123456789"), Some(Role::Read));
        assert_eq!(t.role_of("member-token-0123456789"), Some(Role::Member));
        assert_eq!(t.role_of("admin-token-012345678"), None);
        assert_eq!(required_role("GET", "/v1/policies"), Some(Role::Read));
        assert_eq!(
            required_role("PUT", "/v1/policies/a/b/c"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role("POST", "/internal/v1/propose"),
            Some(Role::Member)
        );
        assert_eq!(required_role("GET", "/healthz"), None);
        assert!(allows(Role::Admin, Role::Read));
        assert!(!allows(Role::Read, Role::Admin));
        assert!(!allows(Role::Admin, Role::Member));
        assert!(!allows(Role::Member, Role::Admin));
        assert!(!format!("{t:?}").contains("token-0123"));
        assert_eq!(
            check_bearer(&t, Some("Bearer read-token-0123456789"), Role::Read),
            Ok(())
        );
        assert_eq!(
            check_bearer(&t, Some("Bearer read-token-0123456789"), Role::Admin),
            Err(Denial::WrongRole(Role::Read))
        );
        assert!(matches!(
            check_bearer(&t, Some("read-token-0123456789"), Role::Read),
            Err(Denial::Unauthenticated(_))
        ));
        assert_eq!(check_bearer(&Tokens::default(), None, Role::Admin), Ok(()));
    }

    #[test]
    fn agents_act_for_their_own_node_only() {
        let check = |m, p| agent_check("node-a", m, p);
        assert_eq!(check("GET", "/v1/watch"), AgentCheck::Allow);
        assert_eq!(check("GET", "/v1/policies"), AgentCheck::Allow);
        assert_eq!(check("POST", "/v1/identities"), AgentCheck::Allow);
        assert_eq!(
            check("POST", "/v1/nodes/node-a/heartbeat"),
            AgentCheck::Allow
        );
        assert_eq!(check("POST", "/v1/nodes/node-a/ack"), AgentCheck::Allow);
        assert_eq!(
            check("POST", "/v1/nodes/node-a/id-block"),
            AgentCheck::Allow
        );
        assert_eq!(
            check("POST", "/v1/nodes/node-a/bindings"),
            AgentCheck::Allow
        );
        assert!(matches!(
            check("POST", "/v1/nodes/node-b/bindings"),
            AgentCheck::Deny(_)
        ));
        assert!(
            matches!(check("POST", "/v1/nodes/node-b/heartbeat"), AgentCheck::Deny(m) if m.contains("`node-b`"))
        );
        assert_eq!(
            check("POST", "/v1/nodes"),
            AgentCheck::Owned {
                field: Some("name"),
                endpoint: None
            }
        );
        assert_eq!(
            check("DELETE", "/v1/endpoints/10.0.0.1"),
            AgentCheck::Owned {
                field: None,
                endpoint: Some("10.0.0.1".into())
            }
        );
        for (m, p) in [
            ("PUT", "/v1/policies/a/b/c"),
            ("DELETE", "/v1/nodes/node-a"),
            ("POST", "/v1/cluster/members"),
            ("POST", "/v1/identities/gc"),
            ("DELETE", "/v1/identities/300"),
            ("POST", "/internal/v1/propose"),
            ("GET", "/metrics"),
        ] {
            assert!(matches!(check(m, p), AgentCheck::Deny(_)), "{m} {p}");
        }
    }
}
