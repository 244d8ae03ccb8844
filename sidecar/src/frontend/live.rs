//! Open sessions follow the policy (README, "A session's lifecycle"): every live session
//! is registered with what it was admitted on (the client's evidence and connection, as
//! the verifier was asked, and the role it holds). When the verifier's policy changes
//! (`WatchPolicies`, or a periodic re-judging where a verifier cannot stream), each is
//! asked about again; one no longer allowed, or no longer granted its role, is ended:
//! its Postgres connection closed (never pooled) and the client told `FATAL 57P01`.
//!
//! Re-judging takes a snapshot (no lock is held across a verifier call or the relay),
//! asks a few at a time, and a session the verifier cannot judge right now keeps running
//! (new handshakes are refused meanwhile, as always).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use teesql_proto::v1::VerifyPeerRequest;
use tokio::sync::oneshot;

use crate::config::limits::OnUnavailable;
use crate::metrics::Metrics;
use crate::verifier::VerifierClient;
use teesql_appraisal::Clock;

/// Sessions re-judged at once.
const CONCURRENCY: usize = 4;
/// At most this many re-judgings a second: a reload with many open sessions is spread
/// out so that the verifier (and this sidecar's cores) keep serving new handshakes and
/// traffic meanwhile; 10,000 sessions take five seconds.
const PER_SECOND: u32 = 2000;
/// How often every session is re-judged when no policy stream tells of changes.
pub const POLL_EVERY: Duration = Duration::from_secs(300);

/// What a re-judging needs of the sidecar.
#[derive(Debug, Clone, Copy)]
pub struct Judge<'a> {
    /// Who decides.
    pub verifier: &'a VerifierClient,
    /// Where revocations are counted.
    pub metrics: &'a Metrics,
    /// What a session does when no verifier answers.
    pub on_unavailable: OnUnavailable,
}

/// Why a session was ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The reason codes, for the operator log and the metric (`role_not_granted` when
    /// the new decision no longer grants the session's role).
    pub codes: Vec<String>,
    /// The policy hash of the decision that ended it.
    pub policy_hash: String,
}

/// What a session was admitted on.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The verifier request of its handshake (user, database, SNI, ALPN), without its
    /// chain, which is in [`Self::chain`].
    pub request: VerifyPeerRequest,
    /// The client's certificate chain (DER, leaf first), shared by every live session
    /// that presented the same one: an RA-TLS chain carries a quote and an event log
    /// (kilobytes), and an application's connection pool presents one chain many times.
    pub chain: Arc<Vec<Vec<u8>>>,
    /// The Postgres role it holds.
    pub role: String,
    /// The role came from the decision's grants (it must stay granted).
    pub granted: bool,
    /// The policy hash it was admitted under.
    pub policy_hash: String,
    /// Unix seconds of the decision.
    pub decided_at: u64,
    /// Unix seconds until which the decision's facts hold (the earliest expiry of the
    /// client's certificate and the collateral); 0 = unknown. The session is judged
    /// again then.
    pub valid_until: u64,
    /// The tenant the decision granted (`grants.attributes.tenant`).
    pub tenant: Option<String>,
    /// The attested app id (hex).
    pub app_id: Option<String>,
    /// The attested compose hash (hex).
    pub compose_hash: Option<String>,
}

impl Admitted {
    /// What the sidecar keeps of a handshake's decision.
    pub fn new(
        mut request: VerifyPeerRequest,
        role: String,
        granted: bool,
        decision: &teesql_proto::v1::Decision,
    ) -> Self {
        let chain = intern(std::mem::take(&mut request.chain));
        // The claims' identity, read once per session (absent for a malformed document).
        let claims: serde_json::Value =
            serde_json::from_str(&decision.claims_json).unwrap_or_default();
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        Self {
            request,
            chain,
            role,
            granted,
            policy_hash: decision.policy_hash.clone(),
            decided_at: Clock::System.now(),
            valid_until: u64::try_from(decision.valid_until).unwrap_or(0),
            tenant: decision
                .grants
                .as_ref()
                .and_then(|g| g.attributes.get("tenant").cloned()),
            app_id: text(&claims["app"]["app_id"]),
            compose_hash: text(&claims["app"]["compose_hash"]),
        }
    }
}

impl Admitted {
    /// The request to judge the session again (its chain put back).
    pub fn rejudge_request(&self) -> VerifyPeerRequest {
        let mut request = self.request.clone();
        request.chain = self.chain.to_vec();
        request
    }
}

/// The one copy of `chain` among live sessions: interned by SHA-256, held weakly, so a
/// chain lives exactly as long as a session that presented it. The table holds only
/// live chains (dead entries are swept as it grows), so it is bounded by the sessions.
fn intern(chain: Vec<Vec<u8>>) -> Arc<Vec<Vec<u8>>> {
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, Weak};
    type Table = Mutex<(HashMap<[u8; 32], Weak<Vec<Vec<u8>>>>, usize)>;
    static TABLE: OnceLock<Table> = OnceLock::new();
    if chain.is_empty() {
        return Arc::new(chain);
    }
    let mut h = Sha256::new();
    for cert in &chain {
        h.update((cert.len() as u64).to_be_bytes());
        h.update(cert);
    }
    let key: [u8; 32] = h.finalize().into();
    let Ok(mut table) = TABLE.get_or_init(Table::default).lock() else {
        return Arc::new(chain);
    };
    let (map, sweep_at) = &mut *table;
    if let Some(live) = map.get(&key).and_then(Weak::upgrade)
        && *live == chain
    {
        return live;
    }
    let shared = Arc::new(chain);
    map.insert(key, Arc::downgrade(&shared));
    if map.len() > (*sweep_at).max(64) {
        map.retain(|_, w| w.strong_count() > 0);
        *sweep_at = map.len() * 2;
    }
    shared
}

/// One live session as `GET /sessions` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionView {
    /// The client's address.
    pub client_addr: String,
    /// The user it logged in as.
    pub user: String,
    /// The Postgres role it holds.
    pub role: String,
    /// The database.
    pub database: String,
    /// The tenant granted, if any.
    pub tenant: Option<String>,
    /// The attested app id.
    pub app_id: Option<String>,
    /// The attested compose hash.
    pub compose_hash: Option<String>,
    /// Unix seconds of the decision that admitted it.
    pub decided_at: u64,
    /// The policy hash it was admitted under.
    pub policy_hash: String,
    /// When it is judged again: at the verifier's next policy change.
    pub rejudged: &'static str,
    /// Bytes from the client to Postgres so far.
    pub bytes_up: u64,
    /// Bytes from Postgres to the client so far.
    pub bytes_down: u64,
    /// Unix seconds until which its decision's facts hold (it is judged again then).
    pub valid_until: u64,
}

struct Entry {
    admitted: Admitted,
    revoke: Option<oneshot::Sender<Revocation>>,
    meter: Arc<crate::frontend::relay::Meter>,
}

/// The live sessions of a sidecar.
#[derive(Default)]
pub struct LiveSessions {
    entries: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
    /// Sessions ended by a re-judging.
    pub revoked: AtomicU64,
    /// Re-judgings started (each over every live session).
    pub rounds: AtomicU64,
    /// Re-judgings finished.
    pub rounds_done: AtomicU64,
    /// Microseconds the last finished re-judging took.
    pub last_round_micros: AtomicU64,
}

impl std::fmt::Debug for LiveSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSessions")
            .field("live", &self.len())
            .finish_non_exhaustive()
    }
}

/// A registered session: dropping it unregisters it; `revoked` resolves when a
/// re-judging ends it.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    sessions: Arc<LiveSessions>,
    /// Resolves with the reason when the session must end.
    pub revoked: oneshot::Receiver<Revocation>,
    /// The session's bytes, counted by its relay.
    pub meter: Arc<crate::frontend::relay::Meter>,
}

impl Registration {
    /// Its id among the live sessions.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Unix seconds until which its latest decision's facts hold (0 = unknown).
    pub fn valid_until(&self) -> u64 {
        self.sessions
            .entries
            .lock()
            .ok()
            .and_then(|m| m.get(&self.id).map(|e| e.admitted.valid_until))
            .unwrap_or(0)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut m) = self.sessions.entries.lock() {
            m.remove(&self.id);
        }
    }
}

impl LiveSessions {
    /// Register a session admitted on `admitted`.
    pub fn register(self: &Arc<Self>, admitted: Admitted) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let meter = Arc::new(crate::frontend::relay::Meter::default());
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.entries.lock() {
            m.insert(
                id,
                Entry {
                    admitted,
                    revoke: Some(tx),
                    meter: meter.clone(),
                },
            );
        }
        Registration {
            id,
            sessions: self.clone(),
            revoked: rx,
            meter,
        }
    }

    /// Every live session, oldest decision first.
    pub fn list(&self) -> Vec<SessionView> {
        let mut out: Vec<SessionView> = match self.entries.lock() {
            Ok(m) => m
                .values()
                .map(|e| {
                    let a = &e.admitted;
                    SessionView {
                        client_addr: a.request.client_addr.clone(),
                        user: a.request.user.clone(),
                        role: a.role.clone(),
                        database: a.request.database.clone(),
                        tenant: a.tenant.clone(),
                        app_id: a.app_id.clone(),
                        compose_hash: a.compose_hash.clone(),
                        decided_at: a.decided_at,
                        policy_hash: a.policy_hash.clone(),
                        rejudged: "at the verifier's next policy change, and after valid_until",
                        bytes_up: e.meter.up.load(Ordering::Relaxed),
                        bytes_down: e.meter.down.load(Ordering::Relaxed),
                        valid_until: a.valid_until,
                    }
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort_by_key(|v| v.decided_at);
        out
    }

    /// Sessions live now.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ask the verifier about every live session again and end those it no longer
    /// allows (or no longer grants their role). Returns how many were ended.
    pub async fn rejudge(&self, shared: &Judge<'_>) -> usize {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let snapshot: Vec<(u64, Admitted)> = match self.entries.lock() {
            Ok(m) => m.iter().map(|(id, e)| (*id, e.admitted.clone())).collect(),
            Err(_) => return 0,
        };
        let ended = self.judge(shared, snapshot).await;
        self.last_round_micros.store(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.rounds_done.fetch_add(1, Ordering::Relaxed);
        ended
    }

    /// Judge one session again (its facts expired). Returns whether it was ended.
    pub async fn rejudge_one(&self, shared: &Judge<'_>, id: u64) -> bool {
        let one: Vec<(u64, Admitted)> = match self.entries.lock() {
            Ok(m) => m
                .get(&id)
                .map(|e| (id, e.admitted.clone()))
                .into_iter()
                .collect(),
            Err(_) => return false,
        };
        self.judge(shared, one).await > 0
    }

    /// End `reg`'s session for `code` without asking the verifier (its maximum age).
    pub fn end(&self, metrics: &Metrics, id: u64, code: &str) {
        let sender = self
            .entries
            .lock()
            .ok()
            .and_then(|mut m| m.get_mut(&id).and_then(|e| e.revoke.take()));
        if let Some(tx) = sender {
            metrics.session_revoked(code);
            self.revoked.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Revocation {
                codes: vec![code.to_string()],
                policy_hash: String::new(),
            });
        }
    }

    async fn judge(&self, shared: &Judge<'_>, snapshot: Vec<(u64, Admitted)>) -> usize {
        let mut ended = 0;
        // Each re-judging is its own decision: `<session's decision id>.<n>`.
        let round = self.rounds.load(Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let pace = Duration::from_secs(1) / PER_SECOND;
        for (i, chunk) in snapshot.chunks(CONCURRENCY).enumerate() {
            // Spread out: chunk i starts no earlier than its share of the rate allows.
            let due = pace * u32::try_from(i * CONCURRENCY).unwrap_or(u32::MAX);
            tokio::time::sleep_until(started + due).await;
            let mut asks = tokio::task::JoinSet::new();
            for (id, admitted) in chunk.iter().cloned() {
                let verifier = shared.verifier.clone();
                let mut request = admitted.rejudge_request();
                request.decision_id = format!("{}.{round}", admitted.request.decision_id);
                asks.spawn(async move {
                    let verdict = verifier.verify_peer(request).await;
                    (id, admitted, verdict)
                });
            }
            while let Some(Ok((id, admitted, verdict))) = asks.join_next().await {
                let d = match verdict {
                    Ok(d) => d,
                    Err(e) => match shared.on_unavailable {
                        OnUnavailable::Keep => {
                            tracing::warn!(session_id = %admitted.request.decision_id, error = %e, "cannot re-judge a session; it keeps running (revalidate_on_unavailable = keep)");
                            shared.metrics.session_rejudged("unavailable");
                            continue;
                        }
                        OnUnavailable::Close => {
                            tracing::warn!(session_id = %admitted.request.decision_id, error = %e, "cannot re-judge a session; ending it (revalidate_on_unavailable = close)");
                            shared.metrics.session_rejudged("unavailable");
                            self.end(shared.metrics, id, "verifier_unavailable");
                            ended += 1;
                            continue;
                        }
                    },
                };
                let codes: Vec<String> = if !d.allow {
                    d.reasons.iter().map(|r| r.code.clone()).collect()
                } else if admitted.granted
                    && !d
                        .grants
                        .as_ref()
                        .is_some_and(|g| g.roles.contains(&admitted.role))
                {
                    vec!["role_not_granted".into()]
                } else {
                    // Still admitted: what it rests on now holds until the new decision's
                    // facts expire.
                    if let Ok(mut m) = self.entries.lock()
                        && let Some(e) = m.get_mut(&id)
                    {
                        e.admitted.policy_hash = d.policy_hash.clone();
                        e.admitted.decided_at = Clock::System.now();
                        e.admitted.valid_until = u64::try_from(d.valid_until).unwrap_or(0);
                    }
                    shared.metrics.session_rejudged("kept");
                    continue;
                };
                let sender = self
                    .entries
                    .lock()
                    .ok()
                    .and_then(|mut m| m.get_mut(&id).and_then(|e| e.revoke.take()));
                if let Some(tx) = sender {
                    tracing::warn!(
                        session_id = %admitted.request.decision_id,
                        decision_id = %d.decision_id,
                        role = %admitted.role,
                        client.addr = %admitted.request.client_addr,
                        codes = %codes.join(","),
                        policy.hash = %d.policy_hash,
                        admitted_under = %admitted.policy_hash,
                        "ending a session its attestation no longer admits"
                    );
                    shared.metrics.session_rejudged("revoked");
                    for code in &codes {
                        shared.metrics.session_revoked(code);
                    }
                    self.revoked.fetch_add(1, Ordering::Relaxed);
                    ended += 1;
                    let _ = tx.send(Revocation {
                        codes,
                        policy_hash: d.policy_hash.clone(),
                    });
                }
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_presenting_one_chain_share_one_copy_while_they_live() {
        let chain = || vec![vec![0x30, 0x82, 1, 2, 3], vec![0x30, 0x82, 4, 5]];
        let a = intern(chain());
        let b = intern(chain());
        assert!(Arc::ptr_eq(&a, &b));
        let other = intern(vec![vec![9; 5]]);
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(*other, vec![vec![9; 5]]);
        // Once no session holds it, the chain is gone; the next is a new copy.
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none());
        assert_eq!(*intern(chain()), chain());
        // A session's request to be judged again carries its chain.
        let admitted = Admitted::new(
            VerifyPeerRequest {
                chain: chain(),
                user: "u".into(),
                ..VerifyPeerRequest::default()
            },
            "r".into(),
            false,
            &teesql_proto::v1::Decision::default(),
        );
        assert!(admitted.request.chain.is_empty());
        assert_eq!(admitted.rejudge_request().chain, chain());
    }
}
