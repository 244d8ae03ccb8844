//! SCRAM-SHA-256 client side (RFC 5802, RFC 7677, no channel binding), for the sidecar's
//! own logins to Postgres: with the backend password, or, for a passthrough role, with
//! the ClientKey the client's own SCRAM proof carried ([`ScramKeys`]) — the way PgBouncer
//! logs in users whose passwords it does not hold.
//!
//! The expensive step of SCRAM is PBKDF2 over the password (4096 HMAC rounds by
//! default). Postgres answers every login of a role with that role's stored salt and
//! iteration count, and the sidecar's backend password does not change while it runs, so
//! the derived keys are kept in a [`KeyCache`] per (password digest, salt, iterations):
//! one PBKDF2 per role instead of one per connection. Everything that depends on the
//! connection (the nonces, the proof, the server's signature) is computed every time.

use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Largest server message accepted, bytes.
const MAX_MESSAGE_LEN: usize = 16 * 1024;
/// Largest salt accepted, bytes (Postgres uses 16).
const MAX_SALT_LEN: usize = 1024;
/// Most PBKDF2 iterations accepted (Postgres' default is 4096; its `scram_iterations`
/// can be raised, but a count this high would stall every login for seconds).
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Raw bytes of the client nonce.
const NONCE_LEN: usize = 18;
/// Keys kept: one per role the sidecar logs in as is typical; a few dozen at most.
const CACHE_ENTRIES: usize = 64;

type Key = [u8; 32];

/// Why a SCRAM exchange with the server failed: no nonce could be drawn, or the server's
/// messages are malformed, hostile or do not prove it knows the verifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// The system gave no randomness for the client nonce.
    #[error("no randomness for the nonce: {0}")]
    NoRandomness(getrandom::Error),
    /// A server-first-message longer than the limit (bytes).
    #[error("server-first-message of {0} bytes")]
    FirstTooLong(usize),
    /// A server-first-message that is not UTF-8.
    #[error("server-first-message is not UTF-8")]
    FirstNotUtf8,
    /// A server-first-message with a mandatory extension (`m=`).
    #[error("server-first-message requires an extension")]
    Extension,
    /// A server-first-message with more than `r`, `s` and `i`.
    #[error("server-first-message is malformed (more than r, s, i)")]
    FirstMalformed,
    /// A server-first-message without the nonce.
    #[error("server-first-message has no nonce")]
    NoNonce,
    /// The server's nonce does not start with the client's, or adds nothing to it.
    #[error("the server's nonce does not extend ours")]
    NonceMismatch,
    /// A server-first-message without the salt.
    #[error("server-first-message has no salt")]
    NoSalt,
    /// A salt longer than the limit.
    #[error("the salt is too long")]
    SaltTooLong,
    /// A salt that is not base64.
    #[error("the salt is not base64")]
    SaltNotBase64,
    /// A server-first-message without the iteration count.
    #[error("server-first-message has no iteration count")]
    NoIterations,
    /// An iteration count that is not a number.
    #[error("the iteration count is not a number")]
    IterationsNotNumber,
    /// An iteration count of 0 or above [`MAX_ITERATIONS`].
    #[error("iteration count {0} outside 1..={MAX_ITERATIONS}")]
    IterationsOutOfRange(u32),
    /// Keys recovered from a proof whose salt or iteration count the server no longer
    /// uses.
    #[error("the role's SCRAM verifier changed (another salt or iteration count)")]
    VerifierChanged,
    /// A server-final-message before the server-first-message.
    #[error("server-final-message before server-first-message")]
    FinalBeforeFirst,
    /// A server-final-message that is not UTF-8.
    #[error("server-final-message is not UTF-8")]
    FinalNotUtf8,
    /// The server refused (`e=`), with its reason.
    #[error("the server refused: {0}")]
    Refused(String),
    /// A server-final-message without a base64 signature.
    #[error("server-final-message is malformed")]
    FinalMalformed,
    /// The server's signature does not verify.
    #[error("the server's signature is wrong (it does not know this password)")]
    BadSignature,
}

/// `ClientKey` and `ServerKey` of one (password, salt, iterations).
#[derive(Clone, Copy)]
struct Keys {
    client: Key,
    server: Key,
}

/// Derived keys per (password digest, salt, iterations), bounded; the oldest entry goes
/// first. Holds no password, only keys that Postgres' own verifier is made of.
pub struct KeyCache {
    entries: Mutex<Vec<Entry>>,
}

/// One derivation: (SHA-256 of the password, salt, iterations) → keys.
struct Entry {
    password: Key,
    salt: Vec<u8>,
    iterations: u32,
    keys: Keys,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("KeyCache").field("entries", &n).finish()
    }
}

impl KeyCache {
    /// Empty; `const` so it can be a `static` (at most 64 entries are ever kept).
    pub const fn new() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
        }
    }

    /// How many derivations are kept (tests).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether no derivation is kept (also when the lock is poisoned).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn keys(&self, password: &[u8], salt: &[u8], iterations: u32) -> Keys {
        let digest: Key = Sha256::digest(password).into();
        if let Ok(entries) = self.entries.lock()
            && let Some(e) = entries
                .iter()
                .find(|e| e.password == digest && e.salt == salt && e.iterations == iterations)
        {
            return e.keys;
        }
        let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations);
        let keys = Keys {
            client: hmac(&salted, &[b"Client Key"]),
            server: hmac(&salted, &[b"Server Key"]),
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_ENTRIES {
                entries.remove(0);
            }
            entries.push(Entry {
                password: digest,
                salt: salt.to_vec(),
                iterations,
                keys,
            });
        }
        keys
    }
}

fn fresh_nonce() -> Result<String, ScramError> {
    let mut raw = [0u8; NONCE_LEN];
    getrandom::fill(&mut raw).map_err(ScramError::NoRandomness)?;
    Ok(B64.encode(raw))
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Key {
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The password as SCRAM uses it: SASLprep-normalised when it is valid UTF-8 that
/// SASLprep accepts, else the raw bytes (what libpq and postgres-protocol do).
fn normalize(password: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(password) {
        Ok(s) => match stringprep::saslprep(s) {
            Ok(p) => p.into_owned().into_bytes(),
            Err(_) => password.to_vec(),
        },
        Err(_) => password.to_vec(),
    }
}

/// A role's SCRAM keys as recovered from a client's proof, with the salt and iteration
/// count of the verifier they belong to: Postgres must answer with exactly those.
#[derive(Clone)]
pub struct ScramKeys {
    /// The salt of the role's verifier (raw bytes, not base64; Postgres uses 16).
    pub salt: Vec<u8>,
    /// The verifier's PBKDF2 iteration count (Postgres' default 4096).
    pub iterations: u32,
    /// `ClientKey` = HMAC(SaltedPassword, "Client Key"), recovered from the proof.
    pub client_key: Key,
    /// `ServerKey` from the role's stored verifier, to check Postgres' signature.
    pub server_key: Key,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(***)")
    }
}

/// Where the keys come from.
enum Credential<'a> {
    Password {
        password: Vec<u8>,
        cache: &'a KeyCache,
    },
    Keys(ScramKeys),
}

/// One SCRAM-SHA-256 exchange as the client.
pub struct ScramClient<'a> {
    credential: Credential<'a>,
    nonce: String,
    /// Set after the server's first message: the AuthMessage and the ServerKey.
    expect: Option<(Vec<u8>, Key)>,
}

impl std::fmt::Debug for ScramClient<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramClient(***)")
    }
}

impl<'a> ScramClient<'a> {
    /// An exchange proving `password` (SASLprep-normalised), with its PBKDF2 keys taken
    /// from or added to `cache`; fails only if no random nonce can be drawn.
    pub fn new(password: &[u8], cache: &'a KeyCache) -> Result<Self, ScramError> {
        Ok(Self::with_nonce(password, cache, fresh_nonce()?))
    }

    /// An exchange proving `keys` (no password, no PBKDF2): Postgres must send the salt
    /// and iteration count the keys belong to.
    pub fn with_keys(keys: ScramKeys) -> Result<Self, ScramError> {
        Ok(Self {
            credential: Credential::Keys(keys),
            nonce: fresh_nonce()?,
            expect: None,
        })
    }

    fn with_nonce(password: &[u8], cache: &'a KeyCache, nonce: String) -> Self {
        Self {
            credential: Credential::Password {
                password: normalize(password),
                cache,
            },
            nonce,
            expect: None,
        }
    }

    /// `client-first-message-bare`: Postgres takes the user from the startup message.
    fn first_bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    /// The SASLInitialResponse data.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare()).into_bytes()
    }

    /// The server's first message in, the client's final message out.
    pub fn server_first(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(ScramError::FirstTooLong(message.len()));
        }
        let text = std::str::from_utf8(message).map_err(|_| ScramError::FirstNotUtf8)?;
        // RFC 5802: exactly `r=…,s=…,i=…`, in that order (Postgres sends nothing else).
        if text.starts_with("m=") {
            return Err(ScramError::Extension);
        }
        let mut attrs = text.split(',');
        let mut attr = |key: &str| attrs.next().and_then(|a| a.strip_prefix(key));
        let (nonce, salt, iterations) = (attr("r="), attr("s="), attr("i="));
        if attrs.next().is_some() {
            return Err(ScramError::FirstMalformed);
        }
        let nonce = nonce.ok_or(ScramError::NoNonce)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = salt.ok_or(ScramError::NoSalt)?;
        if salt.len() > MAX_SALT_LEN * 4 / 3 + 4 {
            return Err(ScramError::SaltTooLong);
        }
        let salt = B64.decode(salt).map_err(|_| ScramError::SaltNotBase64)?;
        let iterations: u32 = iterations
            .ok_or(ScramError::NoIterations)?
            .parse()
            .map_err(|_| ScramError::IterationsNotNumber)?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(ScramError::IterationsOutOfRange(iterations));
        }
        let keys = match &self.credential {
            Credential::Password { password, cache } => cache.keys(password, &salt, iterations),
            Credential::Keys(k) => {
                if k.salt != salt || k.iterations != iterations {
                    return Err(ScramError::VerifierChanged);
                }
                Keys {
                    client: k.client_key,
                    server: k.server_key,
                }
            }
        };
        let stored: Key = Sha256::digest(keys.client).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.first_bare()).into_bytes();
        let signature = hmac(&stored, &[&auth_message]);
        let proof: Vec<u8> = keys
            .client
            .iter()
            .zip(signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        self.expect = Some((auth_message, keys.server));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// The server's final message: its signature must prove it knows the verifier.
    pub fn server_final(&self, message: &[u8]) -> Result<(), ScramError> {
        let (auth_message, server_key) =
            self.expect.as_ref().ok_or(ScramError::FinalBeforeFirst)?;
        let text = std::str::from_utf8(message).map_err(|_| ScramError::FinalNotUtf8)?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ScramError::Refused(e.to_string()));
        }
        let sig = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::FinalMalformed)?;
        let expected = hmac(server_key, &[auth_message]);
        if bool::from(sig.as_slice().ct_eq(&expected)) {
            Ok(())
        } else {
            Err(ScramError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's server-first message (password "pencil"); the user is empty as
    /// Postgres has it, so the proof is recomputed here step by step from RFC 5802.
    #[test]
    fn proof_and_server_signature_follow_rfc5802() {
        let cache = KeyCache::new();
        let mut c = ScramClient::with_nonce(b"pencil", &cache, "rOprNGfwEbeRWgbNEkqO".into());
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let final_msg =
            String::from_utf8(c.server_first(server_first.as_bytes()).unwrap()).unwrap();
        let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(
            b"pencil",
            &B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
        );
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored: Key = Sha256::digest(client_key).into();
        let auth = format!(
            "n=,r=rOprNGfwEbeRWgbNEkqO,{server_first},c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        );
        let sig = hmac(&stored, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(k, s)| k ^ s).collect();
        assert!(
            final_msg.ends_with(&format!(",p={}", B64.encode(proof))),
            "{final_msg}"
        );
        let server_sig = hmac(&hmac(&salted, &[b"Server Key"]), &[auth.as_bytes()]);
        c.server_final(format!("v={}", B64.encode(server_sig)).as_bytes())
            .unwrap();
        assert_eq!(
            c.server_final(b"v=AAAA").unwrap_err(),
            ScramError::BadSignature
        );
        assert_eq!(
            c.server_final(b"e=invalid-proof").unwrap_err().to_string(),
            "the server refused: invalid-proof"
        );
    }

    #[test]
    fn keys_are_derived_once_per_salt_and_iterations() {
        let cache = KeyCache::new();
        let first = |nonce: &str, salt: &str, i: u32| format!("r={nonce}xyz,s={salt},i={i}");
        for _ in 0..3 {
            let mut c = ScramClient::with_nonce(b"pw", &cache, "abc".into());
            c.server_first(first("abc", "c2FsdA==", 4096).as_bytes())
                .unwrap();
        }
        assert_eq!(cache.len(), 1);
        let mut c = ScramClient::with_nonce(b"pw", &cache, "abc".into());
        c.server_first(first("abc", "b3RoZXI=", 4096).as_bytes())
            .unwrap();
        let mut c = ScramClient::with_nonce(b"other", &cache, "abc".into());
        c.server_first(first("abc", "b3RoZXI=", 4096).as_bytes())
            .unwrap();
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn hostile_server_first_messages_are_refused() {
        let cache = KeyCache::new();
        for (bad, needle) in [
            ("r=zzz,s=c2FsdA==,i=4096", "does not extend"),
            ("r=abc,s=c2FsdA==,i=4096", "does not extend"),
            ("r=abcx,s=c2FsdA==,i=0", "outside"),
            ("r=abcx,s=c2FsdA==,i=4294967295", "outside"),
            ("r=abcx,s=c2FsdA==,i=many", "not a number"),
            ("r=abcx,s=%%%,i=4096", "not base64"),
            ("m=ext,r=abcx,s=c2FsdA==,i=4096", "extension"),
            ("r=abcx,i=4096", "no salt"),
            ("s=c2FsdA==,r=abcx,i=4096", "no nonce"),
            ("r=abcx,s=c2FsdA==,i=4096,i=1", "malformed"),
            ("r=abcx,s=,i=c2FsdA==,i=2", "malformed"),
            ("garbage", "no nonce"),
        ] {
            let mut c = ScramClient::with_nonce(b"pw", &cache, "abc".into());
            let e = c.server_first(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let mut c = ScramClient::with_nonce(b"pw", &cache, "abc".into());
        let huge = vec![b'a'; MAX_MESSAGE_LEN + 1];
        assert!(c.server_first(&huge).is_err());
        assert_eq!(
            c.server_final(b"v=AAAA").unwrap_err().to_string(),
            "server-final-message before server-first-message"
        );
    }

    /// The keys recovered from one client's proof log in where the verifier is held, as
    /// the password would: the passthrough login of a role with channel binding.
    #[test]
    fn keys_recovered_from_a_proof_log_in_like_the_password() {
        use crate::auth::scram::{ScramServer, ScramVerifier};
        let salt = b"0123456789abcdef";
        let verifier = ScramVerifier::new(&[b"role-password"], salt, 64);
        let login = |client: &mut ScramClient<'_>| {
            let mut server = ScramServer::new(&verifier, None);
            let first = server
                .client_first("SCRAM-SHA-256", &client.client_first())
                .map_err(|e| e.to_string())?;
            let fin = client.server_first(&first).map_err(|e| e.to_string())?;
            let done = server.client_final(&fin).map_err(|e| e.to_string())?;
            client.server_final(&done).map_err(|e| e.to_string())?;
            Ok::<_, String>(server.client_key())
        };
        let cache = KeyCache::new();
        let mut by_password = ScramClient::new(b"role-password", &cache).unwrap();
        let client_key = login(&mut by_password).unwrap().unwrap();
        let keys = ScramKeys {
            salt: salt.to_vec(),
            iterations: 64,
            client_key,
            server_key: verifier.server_key().unwrap(),
        };
        let mut by_keys = ScramClient::with_keys(keys.clone()).unwrap();
        assert_eq!(login(&mut by_keys).unwrap(), Some(client_key));
        // Postgres answering with another salt: the verifier changed, nothing is sent.
        let other = ScramKeys {
            salt: b"another-salt-xyz".to_vec(),
            ..keys
        };
        let e = login(&mut ScramClient::with_keys(other).unwrap()).unwrap_err();
        assert!(e.contains("verifier changed"), "{e}");
        assert_eq!(
            format!(
                "{:?}",
                ScramKeys {
                    salt: vec![],
                    iterations: 1,
                    client_key,
                    server_key: client_key
                }
            ),
            "ScramKeys(***)"
        );
    }
}
