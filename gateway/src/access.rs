//! Which edges the gateway lets in and what each may publish or play: the flat `tokens` list
//! of old, or `[[edge]]` identities (a named token or a client-certificate name) with stream
//! patterns. Reloaded on SIGHUP as a whole ([`AccessPolicy`] is replaced, never edited).

use std::sync::{Arc, Mutex};

use rtmpq_proto::session::SessionTracker;
use rtmpq_proto::session_end::{EndedBy, SessionEnd};
use rtmpq_proto::wire::CloseCode;
use tokio::sync::watch;

use rtmpq_hop::secret::Secret;
use rtmpq_proto::access::{Rights, StreamPattern};
use serde::Deserialize;

use crate::config::ConfigError;

/// One `[[edge]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRuleConfig {
    /// The identity's name, in logs and the `edge` label of metrics.
    pub name: String,
    /// The token this edge presents in HELLO (`--token` at the edge).
    pub token: Option<Secret>,
    /// The name in its client certificate (`rtmpq certs edge --name NAME`); needs
    /// `client_auth`.
    pub cert: Option<String>,
    /// `app/stream` patterns it may publish (`*` matches within one segment).
    #[serde(default)]
    pub publish: Vec<String>,
    /// `app/stream` patterns it may play.
    #[serde(default)]
    pub play: Vec<String>,
}

/// What an edge proved in its handshake and HELLO.
#[derive(Clone)]
pub struct Credentials {
    /// Its HELLO token (may be empty).
    pub token: Secret,
    /// The names in its client certificate, if it presented one.
    pub cert_names: Vec<String>,
}

impl Credentials {
    /// What an edge proved: the names in the client certificate it presented (if any) and
    /// the token it said in HELLO.
    pub fn of(cert: Option<&rustls::pki_types::CertificateDer<'static>>, token: String) -> Self {
        Credentials {
            token: Secret::new(token),
            cert_names: cert
                .map(|c| rtmpq_certs::certificate_names(c.as_ref()))
                .unwrap_or_default(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token)
            .field("cert_names", &self.cert_names)
            .finish()
    }
}

/// One identity, checked.
#[derive(Debug, Clone)]
struct EdgeRule {
    name: String,
    /// SHA-256 of the token: compared in constant time, whatever the lengths.
    token: Option<[u8; 32]>,
    cert: Option<String>,
    rights: Arc<Rights>,
}

/// Who may connect and what each identity may do.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// Digests of the flat `tokens` list (used when there are no `[[edge]]` tables).
    tokens: Vec<[u8; 32]>,
    edges: Vec<EdgeRule>,
}

/// Why an edge is refused at HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The `edge` label of the refusal's metric (an `[[edge]]` name, or `unlisted`).
    pub identity: String,
    /// Words for the edge's log and ours (never the token).
    pub reason: String,
}

fn digest(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    #[allow(deprecated)] // ring 0.17 keeps this as its constant-time comparison.
    ring::constant_time::verify_slices_are_equal(a, b).is_ok()
}

impl AccessPolicy {
    /// The rights of an edge that proved `creds` and calls itself `edge_id` (none at all
    /// once the policy no longer lists it).
    pub fn rights_of(&self, creds: &Credentials, edge_id: &str) -> Arc<Rights> {
        self.admit(creds, edge_id)
            .unwrap_or_else(|refused| Arc::new(Rights::nothing(refused.identity)))
    }

    /// Checks the flat `tokens` and the `[[edge]]` tables (`client_auth`: whether edges
    /// present certificates, without which a `cert` rule could never match).
    pub fn new(
        tokens: &[Secret],
        edges: &[EdgeRuleConfig],
        client_auth: bool,
    ) -> Result<AccessPolicy, ConfigError> {
        if tokens.iter().any(|t| t.expose().is_empty()) {
            return Err(ConfigError::EmptyToken);
        }
        if !edges.is_empty() && !tokens.is_empty() {
            return Err(ConfigError::Access(
                "`tokens` and [[edge]] tables do not mix: give each token an [[edge]] table".into(),
            ));
        }
        let mut rules: Vec<EdgeRule> = Vec::with_capacity(edges.len());
        for edge in edges {
            let bad =
                |what: String| ConfigError::Access(format!("[[edge]] {:?}: {what}", edge.name));
            if edge.name.is_empty() {
                return Err(ConfigError::Access("an [[edge]] has an empty name".into()));
            }
            if rules.iter().any(|r| r.name == edge.name) {
                return Err(bad("named twice".into()));
            }
            match (&edge.token, &edge.cert) {
                (None, None) => return Err(bad("needs a token or a cert name".into())),
                (Some(t), _) if t.expose().is_empty() => return Err(ConfigError::EmptyToken),
                (_, Some(_)) if !client_auth => {
                    return Err(bad("a cert name needs client_auth = true".into()))
                }
                _ => {}
            }
            let patterns = |list: &[String]| {
                list.iter()
                    .map(|p| StreamPattern::parse(p).map_err(|e| bad(e.to_string())))
                    .collect::<Result<Vec<_>, _>>()
            };
            let rights =
                Rights::listed(&edge.name, patterns(&edge.publish)?, patterns(&edge.play)?);
            rules.push(EdgeRule {
                name: edge.name.clone(),
                token: edge.token.as_ref().map(|t| digest(t.expose())),
                cert: edge.cert.clone(),
                rights: Arc::new(rights),
            });
        }
        Ok(AccessPolicy {
            tokens: tokens.iter().map(|t| digest(t.expose())).collect(),
            edges: rules,
        })
    }

    /// Whether identities come from `[[edge]]` tables.
    pub fn has_identities(&self) -> bool {
        !self.edges.is_empty()
    }

    /// The rights of the edge that proved `creds` (`edge_id`: what it calls itself), or why
    /// it is refused. With `[[edge]]` tables, the first whose token and cert name (those it
    /// sets) both match; without, any edge with a listed token (or any at all, no tokens).
    pub fn admit(&self, creds: &Credentials, edge_id: &str) -> Result<Arc<Rights>, Refusal> {
        let token = digest(creds.token.expose());
        if self.edges.is_empty() {
            if self.tokens.is_empty() || self.tokens.iter().any(|t| same(t, &token)) {
                return Ok(Arc::new(Rights::everything(edge_id)));
            }
            return Err(Refusal {
                identity: "unlisted".into(),
                reason: "bad token".into(),
            });
        }
        let found = self.edges.iter().find(|rule| {
            let token_ok = rule.token.as_ref().is_none_or(|t| same(t, &token));
            let cert_ok = rule
                .cert
                .as_ref()
                .is_none_or(|name| creds.cert_names.iter().any(|n| n == name));
            token_ok && cert_ok
        });
        match found {
            Some(rule) => Ok(rule.rights.clone()),
            None => Err(Refusal {
                identity: "unlisted".into(),
                reason: "this edge is not listed at the gateway (no [[edge]] matches its token or certificate)".into(),
            }),
        }
    }
}

/// Ends when a reloaded access policy takes away the right a session of the edge that proved
/// `creds` uses; meanwhile keeps the tracker's rights current (a session not set up yet is
/// judged when it asks).
pub(crate) async fn rights_withdrawn(
    access: &mut watch::Receiver<Arc<AccessPolicy>>,
    creds: &Credentials,
    edge_id: &str,
    tracker: &Mutex<SessionTracker>,
) -> SessionEnd {
    loop {
        if access.changed().await.is_err() {
            return std::future::pending().await;
        }
        let rights = access.borrow_and_update().rights_of(creds, edge_id);
        let mut t = tracker.lock().expect("tracker");
        t.rights = Some(rights);
        if let Some(why) = t.refusal() {
            let reason = format!("{why} (rights changed on reload)");
            return SessionEnd::new(CloseCode::Unauthorized, reason, EndedBy::Local);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmpq_proto::session::Direction;

    fn rule(
        name: &str,
        token: Option<&str>,
        cert: Option<&str>,
        publish: &[&str],
    ) -> EdgeRuleConfig {
        EdgeRuleConfig {
            name: name.into(),
            token: token.map(Secret::new),
            cert: cert.map(str::to_owned),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            play: vec!["live/*".into()],
        }
    }

    fn creds(token: &str, certs: &[&str]) -> Credentials {
        Credentials {
            token: Secret::new(token),
            cert_names: certs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn without_edge_tables_tokens_work_as_before() {
        let open = AccessPolicy::new(&[], &[], false).unwrap();
        assert!(open.admit(&creds("", &[]), "e").is_ok());
        let flat = AccessPolicy::new(&[Secret::new("s3cret")], &[], false).unwrap();
        let rights = flat.admit(&creds("s3cret", &[]), "e").unwrap();
        assert!(rights.allows(Direction::Publish, "any", "thing"));
        let refused = flat.admit(&creds("wrong", &[]), "e").unwrap_err();
        assert_eq!(refused.reason, "bad token");
        assert!(!format!("{flat:?}").contains("s3cret"));
    }

    #[test]
    fn identities_get_their_own_rights_and_the_unlisted_are_refused() {
        let policy = AccessPolicy::new(
            &[],
            &[
                rule("cam-a", Some("ta"), None, &["live/cam-*"]),
                rule("studio", None, Some("studio-1"), &["live/studio"]),
            ],
            true,
        )
        .unwrap();
        assert!(policy.has_identities());
        let a = policy.admit(&creds("ta", &[]), "whatever").unwrap();
        assert_eq!(a.identity, "cam-a");
        assert!(a.allows(Direction::Publish, "live", "cam-2"));
        assert!(!a.allows(Direction::Publish, "live", "studio"));
        let s = policy.admit(&creds("", &["studio-1"]), "x").unwrap();
        assert!(s.allows(Direction::Publish, "live", "studio"));
        assert!(s.allows(Direction::Play, "live", "cam-2"));
        assert!(policy.admit(&creds("tb", &[]), "x").is_err());
        assert!(policy.admit(&creds("", &["studio-2"]), "x").is_err());
        assert!(policy.admit(&creds("", &[]), "x").is_err());
    }

    #[test]
    fn bad_tables_are_refused_at_load() {
        let cases = [
            (vec![rule("a", None, None, &[])], true),
            (
                vec![
                    rule("a", Some("t"), None, &[]),
                    rule("a", Some("u"), None, &[]),
                ],
                true,
            ),
            (vec![rule("a", None, Some("c"), &[])], false),
            (vec![rule("a", Some("t"), None, &["live//x"])], true),
            (vec![rule("", Some("t"), None, &[])], true),
            (vec![rule("a", Some(""), None, &[])], true),
        ];
        for (edges, client_auth) in cases {
            assert!(
                AccessPolicy::new(&[], &edges, client_auth).is_err(),
                "{edges:?}"
            );
        }
        let mixed = AccessPolicy::new(
            &[Secret::new("t")],
            &[rule("a", Some("t"), None, &[])],
            false,
        );
        assert!(mixed.is_err());
    }
}
