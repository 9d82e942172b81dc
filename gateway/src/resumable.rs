//! The gateway's live sessions an edge may resume on a new stream ([`Resumable`]): each holds
//! a single-use token its edge got, bound to who the edge proved to be ([`EdgeIdentity`]).

use std::collections::HashMap;
use std::sync::Mutex;

use rand::RngCore;
use rtmpq_proto::wire::{ResumeToken, SessionId, RESUME_TOKEN_LEN};
use tokio::sync::oneshot;

use rtmpq_hop::session::Tunnel;

/// Who may resume a session: the edge's name, its client certificate's fingerprint and a
/// digest of its HELLO token (the token itself is not kept).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct EdgeIdentity(String);

impl EdgeIdentity {
    /// The identity as a key (it holds digests, not the token).
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for EdgeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeIdentity(****)")
    }
}

impl EdgeIdentity {
    /// The identity of the edge that said HELLO with `edge_id` and `token` on a connection
    /// where it presented `cert` (QUIC and TCP alike: a session resumes on either).
    pub(crate) fn of(
        edge_id: &str,
        cert: Option<&rustls::pki_types::CertificateDer<'static>>,
        token: &str,
    ) -> Self {
        let digest = |bytes: &[u8]| {
            let d = ring::digest::digest(&ring::digest::SHA256, bytes);
            d.as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let cert = cert.map(|c| digest(c.as_ref())).unwrap_or_default();
        EdgeIdentity(format!("{edge_id}|{cert}|{}", digest(token.as_bytes())))
    }
}

/// Live sessions an edge may take over on a new stream: each holds a single-use token (sent
/// to its edge in RESUME_TOKEN) and waits for a stream handed over by SESSION_RESUME.
#[derive(Default)]
pub(crate) struct Resumable(Mutex<HashMap<SessionId, Holder>>);

impl std::fmt::Debug for Resumable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().expect("resumable").len();
        f.debug_tuple("Resumable").field(&n).finish()
    }
}

struct Holder {
    token: ResumeToken,
    edge: EdgeIdentity,
    /// The live session that offered it: only that one offers it again.
    owner: SessionOwner,
    /// Taken by the SESSION_RESUME that spends the token.
    handoff: Option<oneshot::Sender<Tunnel>>,
}

/// One live session at this gateway (session ids are chosen by edges, and an edge's word
/// alone, its edge id without a token or certificate, is not proof of who it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionOwner(u64);

impl SessionOwner {
    /// A session never seen before.
    pub(crate) fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        SessionOwner(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Resumable {
    /// Offers session `id` of `owner` for resumption by `edge` with a new token (any earlier
    /// one no longer works); the receiver gets the stream of a successful SESSION_RESUME.
    /// `None` if another live session holds that id, whatever edge it names itself (ids are
    /// the edges' choice: a session must not displace another's by reusing its id).
    pub(crate) fn offer(
        &self,
        id: SessionId,
        edge: &EdgeIdentity,
        owner: SessionOwner,
    ) -> Option<(ResumeToken, oneshot::Receiver<Tunnel>)> {
        let mut held = self.0.lock().expect("resumable");
        if held.get(&id).is_some_and(|h| h.owner != owner) {
            return None;
        }
        let mut token = [0u8; RESUME_TOKEN_LEN];
        rand::rng().fill_bytes(&mut token);
        let token = ResumeToken(token);
        let (handoff, rx) = oneshot::channel();
        let holder = Holder {
            token,
            edge: edge.clone(),
            owner,
            handoff: Some(handoff),
        };
        held.insert(id, holder);
        Some((token, rx))
    }

    /// Whether a live session holds `id`.
    pub(crate) fn holds(&self, id: SessionId) -> bool {
        self.0.lock().expect("resumable").contains_key(&id)
    }

    /// `owner`'s session `id` can no longer be resumed (another session's of the same id stays).
    pub(crate) fn withdraw(&self, id: SessionId, owner: SessionOwner) {
        let mut held = self.0.lock().expect("resumable");
        if held.get(&id).is_some_and(|h| h.owner == owner) {
            held.remove(&id);
        }
    }

    /// Hands `tunnel` to session `id` if `token` is its current token and `edge` the edge it
    /// belongs to; the token is then spent. Else gives the stream back, with why.
    pub(crate) fn hand_over(
        &self,
        id: SessionId,
        token: &ResumeToken,
        edge: &EdgeIdentity,
        tunnel: Tunnel,
    ) -> Result<(), Box<(Tunnel, String)>> {
        let mut held = self.0.lock().expect("resumable");
        let refusal = match held.get(&id) {
            None => Some("no such session is held here"),
            Some(h) if !h.token.matches(token) || h.handoff.is_none() => {
                Some("the token does not match (forged, or used already)")
            }
            Some(h) if h.edge != *edge => Some("the session belongs to another edge"),
            Some(_) => None,
        };
        if let Some(why) = refusal {
            return Err(Box::new((tunnel, why.to_owned())));
        }
        // The token is spent; the id stays its session's until that session withdraws it.
        let handoff = held
            .get_mut(&id)
            .and_then(|h| h.handoff.take())
            .expect("checked above");
        handoff
            .send(tunnel)
            .map_err(|t| Box::new((t, "the session ended meanwhile".to_owned())))
    }
}

/// The stream a SESSION_RESUME handed over, or never.
pub(crate) async fn handed_over(rx: &mut Option<oneshot::Receiver<Tunnel>>) -> Tunnel {
    match rx {
        Some(rx) => match rx.await {
            Ok(tunnel) => tunnel,
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
