//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS server side (RFC 5802, RFC 7677), with
//! `tls-server-end-point` channel binding (RFC 5929), as PostgreSQL implements it.
//!
//! The proxy authenticates PostgreSQL clients itself: it offers
//! [`ScramServer::mechanisms`] in `AuthenticationSASL`, feeds the client's
//! `SASLInitialResponse` to [`ScramServer::client_first`], sends the result in
//! `AuthenticationSASLContinue`, feeds the `SASLResponse` to
//! [`ScramServer::client_final`] and sends the result in `AuthenticationSASLFinal`.
//! Any error ends the exchange (the caller sends an `ErrorResponse`, SQLSTATE 28P01 for
//! [`ScramError::AuthFailed`], 08P01 for [`ScramError::Protocol`]).
//!
//! Security properties:
//! * every message from the client is length-bounded ([`MAX_MESSAGE_LEN`]) and parsed
//!   without indexing panics; non-UTF-8 input or NUL bytes are protocol errors;
//! * the client proof is checked against **every** stored key of the role without early
//!   exit, using constant-time comparisons and selections ([`subtle`]), so timing reveals
//!   neither which secret matched nor whether one did (it does reveal how many secrets
//!   the role has, since each costs one HMAC and one hash);
//! * unknown users get a [`ScramVerifier::decoy`] with a stable, secret-derived salt and a
//!   dummy key that costs the same work as a real one but can never match;
//! * errors carry only static strings, and `Debug` output never shows keys.
//!
//! Passwords are used as given. PostgreSQL clients apply SASLprep to the password; for
//! ASCII passwords SASLprep is either the identity or fails (control characters), in which
//! case clients fall back to the raw bytes, so ASCII secrets interoperate exactly. Secrets
//! with non-ASCII characters must be SASLprep-normalised by the caller before
//! [`ScramVerifier::new`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha224, Sha256, Sha384, Sha512};
use subtle::{Choice, ConditionallySelectable as _, ConstantTimeEq as _};

/// SASL mechanism name of SCRAM-SHA-256 without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// SASL mechanism name of SCRAM-SHA-256 with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// PostgreSQL's default iteration count (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length PostgreSQL uses (`SCRAM_DEFAULT_SALT_LEN`); decoys use it too, so real
/// roles should use salts of this length to stay indistinguishable from decoys.
pub const SALT_LEN: usize = 16;
/// Largest client message accepted, in bytes (either SCRAM message).
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;
/// Largest client nonce accepted, in bytes.
pub const MAX_CLIENT_NONCE_LEN: usize = 512;
/// The only channel binding type supported (and the only one PostgreSQL supports).
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// Raw bytes of server nonce appended to the client nonce (PostgreSQL: `SCRAM_RAW_NONCE_LEN`).
const SERVER_NONCE_RAW_LEN: usize = 18;
/// Length of a SHA-256 output, HMAC key and SCRAM key.
const KEY_LEN: usize = 32;
/// Length of a base64-encoded 32-byte proof (with padding).
const PROOF_B64_LEN: usize = 44;
/// HMAC-SHA-256 block size; keys are zero-padded to it (see [`hmac_sha256`]).
const HMAC_BLOCK_LEN: usize = 64;

type Key = [u8; KEY_LEN];

/// Errors of a SCRAM exchange. Messages are static: they never carry secrets or input.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum ScramError {
    /// Wrong password (or decoy): the only error a correct client with a wrong secret sees.
    #[error("authentication failed")]
    AuthFailed,
    /// The client's messages break the protocol (malformed, wrong nonce, bad channel binding flag...).
    #[error("invalid SCRAM exchange: {0}")]
    Protocol(&'static str),
    /// A server-side failure unrelated to the client (the OS random number generator failed).
    #[error("internal SCRAM error: {0}")]
    Internal(&'static str),
}

/// StoredKey and ServerKey of one password.
#[derive(Clone)]
struct KeyPair {
    stored_key: Key,
    server_key: Key,
}

/// Verifiers for one role: one salt and iteration count, and the StoredKey/ServerKey of
/// every password the role accepts (a read-only role accepts the read secret *or* the
/// read-write secret). PBKDF2 runs here, once, not per login.
#[derive(Clone)]
pub struct ScramVerifier {
    salt: Vec<u8>,
    iterations: u32,
    keys: Vec<KeyPair>,
    /// A decoy holds one dummy key (so it costs the same per login as a one-password role)
    /// whose match is masked out: it never authenticates anyone.
    decoy: bool,
}

impl ScramVerifier {
    /// Derives the verifiers of `passwords` (index `i` is reported by
    /// [`ScramServer::matched`]) with PBKDF2-HMAC-SHA-256 over `salt`.
    ///
    /// `iterations` of 0 is raised to 1 (RFC 5802 requires a positive count). Note that
    /// `postgres-protocol` clients refuse counts above 100,000. `salt` should be
    /// [`SALT_LEN`] random bytes. With no passwords nothing ever matches.
    pub fn new(passwords: &[&[u8]], salt: &[u8], iterations: u32) -> Self {
        let iterations = iterations.max(1);
        let keys = passwords
            .iter()
            .map(|password| {
                let salted: Key =
                    pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(password, salt, iterations);
                let client_key = hmac_sha256(&salted, &[b"Client Key"]);
                KeyPair {
                    stored_key: sha256(&client_key),
                    server_key: hmac_sha256(&salted, &[b"Server Key"]),
                }
            })
            .collect();
        Self {
            salt: salt.to_vec(),
            iterations,
            keys,
            decoy: false,
        }
    }

    /// For an unknown user: a salt derived from `(server_secret, username)` with HMAC so
    /// repeated attempts see the same salt (no user enumeration), and no password matches.
    ///
    /// No PBKDF2 runs (real verifiers are precomputed, so a login costs the same either way).
    pub fn decoy(server_secret: &[u8; 32], username: &str, iterations: u32) -> Self {
        let salt_full = hmac_sha256(
            server_secret,
            &[b"teesql scram decoy salt\0", username.as_bytes()],
        );
        // The dummy key costs the same work as a real one; its match is masked out anyway.
        let stored_key = hmac_sha256(
            server_secret,
            &[b"teesql scram decoy stored key\0", username.as_bytes()],
        );
        let server_key = hmac_sha256(
            server_secret,
            &[b"teesql scram decoy server key\0", username.as_bytes()],
        );
        Self {
            salt: salt_full.iter().take(SALT_LEN).copied().collect(),
            iterations: iterations.max(1),
            keys: vec![KeyPair {
                stored_key,
                server_key,
            }],
            decoy: true,
        }
    }

    /// The verifier Postgres keeps for a role (`pg_authid.rolpassword`):
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 fields. The
    /// sidecar checks a client's proof against it and, from the proof, recovers the
    /// ClientKey that logs in to Postgres as the role; it never sees a password.
    pub fn from_postgres(rolpassword: &str) -> Result<Self, &'static str> {
        let rest = rolpassword
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or("not a SCRAM-SHA-256 verifier")?;
        let (params, keys) = rest.split_once('$').ok_or("no keys")?;
        let (iterations, salt) = params.split_once(':').ok_or("no salt")?;
        let (stored, server) = keys.split_once(':').ok_or("no ServerKey")?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| "the iteration count is not a number")?;
        if iterations == 0 || iterations > super::scram_client::MAX_ITERATIONS {
            return Err("iteration count out of range");
        }
        let salt = B64.decode(salt).map_err(|_| "the salt is not base64")?;
        if salt.is_empty() || salt.len() > 1024 {
            return Err("salt length out of range");
        }
        let key = |b64: &str| -> Result<Key, &'static str> {
            B64.decode(b64)
                .ok()
                .and_then(|k| Key::try_from(k.as_slice()).ok())
                .ok_or("a key is not 32 bytes of base64")
        };
        Ok(Self {
            salt,
            iterations,
            keys: vec![KeyPair {
                stored_key: key(stored)?,
                server_key: key(server)?,
            }],
            decoy: false,
        })
    }

    /// The ServerKey of this verifier's first password (with [`Self::from_postgres`], the
    /// role's own).
    pub fn server_key(&self) -> Option<Key> {
        self.keys.first().map(|k| k.server_key)
    }

    /// A fresh random salt of [`SALT_LEN`] bytes from the OS generator.
    pub fn random_salt() -> Result<[u8; SALT_LEN], ScramError> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt)
            .map_err(|_| ScramError::Internal("random number generator failed"))?;
        Ok(salt)
    }

    /// The salt sent to clients.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// The iteration count sent to clients.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }
}

impl fmt::Debug for ScramVerifier {
    /// Shows neither keys nor salt, nor whether this is a decoy.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// The gs2 channel binding flag the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CbindFlag {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports channel binding but thinks the server does not.
    Yes,
    /// `p=tls-server-end-point`: the client uses channel binding.
    Plus,
}

/// Where the exchange stands.
enum State {
    /// Waiting for the client-first-message.
    Initial,
    /// Sent server-first-message; waiting for the client-final-message.
    SentServerFirst {
        /// `client-first-message-bare`, `,`, `server-first-message`, `,` — the prefix of the
        /// AuthMessage; the client-final-message-without-proof completes it.
        auth_prefix: Vec<u8>,
        /// Combined nonce (client + server).
        nonce: String,
        /// Expected value of `c=`: base64 of the gs2 header (+ channel binding data).
        expected_cbind: String,
    },
    /// Success; index of the matching password, and the client's ClientKey (recovered
    /// from its proof: what logs in as the role where Postgres holds the same verifier).
    Done { matched: usize, client_key: Key },
    /// Failed (any error is final).
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Initial => "initial",
            State::SentServerFirst { .. } => "sent-server-first",
            State::Done { .. } => "done",
            State::Failed => "failed",
        }
    }
}

/// One server-side SCRAM exchange (one login attempt). Any error is final: later calls
/// fail with [`ScramError::Protocol`].
pub struct ScramServer<'a> {
    verifier: &'a ScramVerifier,
    cb_data: Option<Vec<u8>>,
    state: State,
}

impl fmt::Debug for ScramServer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("channel_binding", &self.cb_data.is_some())
            .field("state", &self.state.name())
            .finish()
    }
}

impl<'a> ScramServer<'a> {
    /// Mechanisms to offer in AuthenticationSASL: PLUS first when channel binding is available.
    ///
    /// Pass `cb_data.is_some()` of the [`ScramServer::new`] call: the server treats "has
    /// channel binding data" as "offered PLUS" when it detects downgrades.
    pub fn mechanisms(channel_binding_available: bool) -> &'static [&'static str] {
        if channel_binding_available {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// `cb_data`: the tls-server-end-point hash of the server certificate (None without TLS),
    /// see [`tls_server_end_point`].
    pub fn new(verifier: &'a ScramVerifier, cb_data: Option<Vec<u8>>) -> Self {
        Self {
            verifier,
            cb_data,
            state: State::Initial,
        }
    }

    /// Handle SASLInitialResponse (mechanism, client-first-message); returns server-first-message.
    pub fn client_first(&mut self, mechanism: &str, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            self.state = State::Failed;
            return Err(ScramError::Protocol("unexpected client-first-message"));
        }
        self.state = State::Failed;
        let mut server_nonce = [0u8; SERVER_NONCE_RAW_LEN];
        getrandom::fill(&mut server_nonce)
            .map_err(|_| ScramError::Internal("random number generator failed"))?;
        self.client_first_with_nonce(mechanism, message, &server_nonce)
    }

    /// [`Self::client_first`] with the raw server nonce given (tests use fixed nonces).
    /// The state is already `Failed`; success moves it to `SentServerFirst`.
    fn client_first_with_nonce(
        &mut self,
        mechanism: &str,
        message: &[u8],
        server_nonce: &[u8; SERVER_NONCE_RAW_LEN],
    ) -> Result<Vec<u8>, ScramError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS => true,
            _ => return Err(ScramError::Protocol("unsupported SASL mechanism")),
        };
        if plus && self.cb_data.is_none() {
            return Err(ScramError::Protocol(
                "SCRAM-SHA-256-PLUS selected but channel binding is not available",
            ));
        }
        let message = check_message(message)?;
        let parsed = parse_client_first(message)?;

        match (parsed.flag, plus) {
            (CbindFlag::Plus, true) | (CbindFlag::No, false) => {}
            (CbindFlag::Plus, false) => {
                return Err(ScramError::Protocol(
                    "channel binding data sent with SCRAM-SHA-256 (not -PLUS)",
                ));
            }
            (CbindFlag::No | CbindFlag::Yes, true) => {
                return Err(ScramError::Protocol(
                    "SCRAM-SHA-256-PLUS selected without channel binding data",
                ));
            }
            (CbindFlag::Yes, false) => {
                // The client supports channel binding but believes we do not: if we
                // offered PLUS, someone removed it from our mechanism list (RFC 5802 §6).
                if self.cb_data.is_some() {
                    return Err(ScramError::Protocol(
                        "channel binding downgrade: client supports it and the server offered it",
                    ));
                }
            }
        }

        let mut cbind_input = parsed.gs2_header.as_bytes().to_vec();
        if parsed.flag == CbindFlag::Plus
            && let Some(cb) = &self.cb_data
        {
            cbind_input.extend_from_slice(cb);
        }
        let expected_cbind = B64.encode(&cbind_input);

        let mut nonce = String::with_capacity(parsed.nonce.len() + 24);
        nonce.push_str(parsed.nonce);
        B64.encode_string(server_nonce, &mut nonce);

        let server_first = format!(
            "r={},s={},i={}",
            nonce,
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );

        let mut auth_prefix = Vec::with_capacity(parsed.bare.len() + server_first.len() + 2 + 128);
        auth_prefix.extend_from_slice(parsed.bare.as_bytes());
        auth_prefix.push(b',');
        auth_prefix.extend_from_slice(server_first.as_bytes());
        auth_prefix.push(b',');

        self.state = State::SentServerFirst {
            auth_prefix,
            nonce,
            expected_cbind,
        };
        Ok(server_first.into_bytes())
    }

    /// Handle SASLResponse (client-final-message); returns server-final-message ("v=...") on success.
    pub fn client_final(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let (auth_prefix, nonce, expected_cbind) =
            match std::mem::replace(&mut self.state, State::Failed) {
                State::SentServerFirst {
                    auth_prefix,
                    nonce,
                    expected_cbind,
                } => (auth_prefix, nonce, expected_cbind),
                _ => return Err(ScramError::Protocol("unexpected client-final-message")),
            };
        let message = check_message(message)?;
        let parsed = parse_client_final(message)?;

        // Channel binding: the gs2 header (and, with -PLUS, our certificate hash) must be
        // exactly what the client-first-message announced. Nothing here is secret, but the
        // comparison is constant-time anyway.
        if !bool::from(parsed.cbind.as_bytes().ct_eq(expected_cbind.as_bytes())) {
            return Err(ScramError::Protocol("channel binding check failed"));
        }
        if !bool::from(parsed.nonce.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(ScramError::Protocol("nonce mismatch"));
        }
        let proof = decode_proof(parsed.proof)?;

        let mut auth_message = auth_prefix;
        auth_message.extend_from_slice(parsed.without_proof.as_bytes());

        let (matched, server_key, client_key) = self.verify_proof(&auth_message, &proof)?;
        let server_signature = hmac_sha256(&server_key, &[&auth_message]);
        let mut reply = String::with_capacity(2 + PROOF_B64_LEN);
        reply.push_str("v=");
        B64.encode_string(server_signature, &mut reply);
        self.state = State::Done {
            matched,
            client_key,
        };
        Ok(reply.into_bytes())
    }

    /// Which of the verifier's passwords matched (index into `passwords` of `new`), after success.
    pub fn matched(&self) -> Option<usize> {
        match self.state {
            State::Done { matched, .. } => Some(matched),
            _ => None,
        }
    }

    /// After success, the client's ClientKey (= its proof XOR the ClientSignature): with a
    /// verifier read from Postgres, what proves the role to Postgres in a SCRAM login of
    /// the sidecar's own. Kept only for that login.
    pub fn client_key(&self) -> Option<Key> {
        match self.state {
            State::Done { client_key, .. } => Some(client_key),
            _ => None,
        }
    }

    /// Checks `proof` against every stored key, without early exit and with constant-time
    /// comparisons and selections. Returns the first matching index, its ServerKey and the
    /// ClientKey the proof carried.
    fn verify_proof(
        &self,
        auth_message: &[u8],
        proof: &Key,
    ) -> Result<(usize, Key, Key), ScramError> {
        let mut found = Choice::from(0);
        let mut index: u64 = 0;
        let mut server_key: Key = [0u8; KEY_LEN];
        let mut found_client_key: Key = [0u8; KEY_LEN];
        for (i, pair) in self.verifier.keys.iter().enumerate() {
            // ClientSignature = HMAC(StoredKey, AuthMessage); ClientKey = proof XOR signature.
            let signature = hmac_sha256(&pair.stored_key, &[auth_message]);
            let mut client_key: Key = [0u8; KEY_LEN];
            for ((k, p), s) in client_key.iter_mut().zip(proof).zip(&signature) {
                *k = p ^ s;
            }
            let ok = sha256(&client_key).ct_eq(&pair.stored_key);
            let take = ok & !found;
            // usize -> u64 is lossless on every supported target.
            index.conditional_assign(&(i as u64), take);
            for (dst, src) in server_key.iter_mut().zip(&pair.server_key) {
                dst.conditional_assign(src, take);
            }
            for (dst, src) in found_client_key.iter_mut().zip(&client_key) {
                dst.conditional_assign(src, take);
            }
            found |= ok;
        }
        found &= !Choice::from(u8::from(self.verifier.decoy));
        if bool::from(found) {
            let index = usize::try_from(index).map_err(|_| ScramError::AuthFailed)?;
            Ok((index, server_key, found_client_key))
        } else {
            Err(ScramError::AuthFailed)
        }
    }
}

/// Bounds a client message and turns it into text: at most [`MAX_MESSAGE_LEN`] bytes,
/// non-empty, UTF-8, no NUL (PostgreSQL treats SCRAM messages as C strings).
fn check_message(message: &[u8]) -> Result<&str, ScramError> {
    if message.is_empty() {
        return Err(ScramError::Protocol("empty message"));
    }
    if message.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Protocol("message too long"));
    }
    if message.contains(&0) {
        return Err(ScramError::Protocol("message contains a NUL byte"));
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Protocol("message is not valid UTF-8"))
}

/// A parsed client-first-message (slices of the checked message).
#[derive(Debug)]
struct ClientFirst<'m> {
    flag: CbindFlag,
    /// The gs2 header exactly as sent, e.g. `n,,` or `p=tls-server-end-point,,`.
    gs2_header: &'m str,
    /// client-first-message-bare: everything after the gs2 header.
    bare: &'m str,
    /// Client nonce.
    nonce: &'m str,
}

/// `printable = %x21-2B / %x2D-7E` (RFC 5802), i.e. visible ASCII except `,`.
fn is_printable(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, 0x21..=0x2b | 0x2d..=0x7e))
}

/// Parses `gs2-header client-first-message-bare`:
/// `gs2-cbind-flag "," [authzid] "," [reserved-mext ","] username "," nonce ["," extensions]`.
fn parse_client_first(msg: &str) -> Result<ClientFirst<'_>, ScramError> {
    const BAD_GS2: ScramError = ScramError::Protocol("malformed gs2 header");
    let (flag, after_flag) = if let Some(rest) = msg.strip_prefix("n,") {
        (CbindFlag::No, rest)
    } else if let Some(rest) = msg.strip_prefix("y,") {
        (CbindFlag::Yes, rest)
    } else if let Some(rest) = msg.strip_prefix("p=") {
        let (name, rest) = rest.split_once(',').ok_or(BAD_GS2)?;
        if name != TLS_SERVER_END_POINT {
            return Err(ScramError::Protocol("unsupported channel binding type"));
        }
        (CbindFlag::Plus, rest)
    } else {
        return Err(BAD_GS2);
    };
    if after_flag.starts_with('a') {
        return Err(ScramError::Protocol(
            "authorization identity is not supported",
        ));
    }
    let bare = after_flag.strip_prefix(',').ok_or(BAD_GS2)?;
    // `bare` is a suffix of `msg` that starts right after an ASCII ',': a char boundary.
    let gs2_header = msg
        .len()
        .checked_sub(bare.len())
        .and_then(|end| msg.get(..end))
        .ok_or(BAD_GS2)?;

    if bare.starts_with("m=") {
        return Err(ScramError::Protocol("unsupported mandatory extension"));
    }
    // PostgreSQL ignores the SCRAM username (the role is in the startup packet).
    let rest = bare
        .strip_prefix("n=")
        .ok_or(ScramError::Protocol("missing username attribute"))?;
    let (_username, rest) = rest
        .split_once(',')
        .ok_or(ScramError::Protocol("missing nonce attribute"))?;
    let rest = rest
        .strip_prefix("r=")
        .ok_or(ScramError::Protocol("missing nonce attribute"))?;
    let (nonce, extensions) = match rest.split_once(',') {
        Some((nonce, ext)) => (nonce, Some(ext)),
        None => (rest, None),
    };
    if nonce.is_empty() || nonce.len() > MAX_CLIENT_NONCE_LEN || !is_printable(nonce) {
        return Err(ScramError::Protocol("invalid client nonce"));
    }
    // Optional extensions are ignored (RFC 5802 §5.1, as PostgreSQL does) but must be
    // well-formed `attr=value` pairs.
    if let Some(extensions) = extensions {
        for ext in extensions.split(',') {
            let mut bytes = ext.bytes();
            let well_formed = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
                && bytes.next() == Some(b'=');
            if !well_formed {
                return Err(ScramError::Protocol(
                    "malformed attribute in client-first-message",
                ));
            }
        }
    }
    Ok(ClientFirst {
        flag,
        gs2_header,
        bare,
        nonce,
    })
}

/// A parsed client-final-message (slices of the checked message).
#[derive(Debug)]
struct ClientFinal<'m> {
    /// base64 channel binding input (`c=`).
    cbind: &'m str,
    /// Combined nonce (`r=`).
    nonce: &'m str,
    /// base64 proof (`p=`).
    proof: &'m str,
    /// client-final-message-without-proof (everything before `,p=`).
    without_proof: &'m str,
}

/// Parses `"c=" cbind "," "r=" nonce "," "p=" proof`; extensions are rejected.
fn parse_client_final(msg: &str) -> Result<ClientFinal<'_>, ScramError> {
    let rest = msg
        .strip_prefix("c=")
        .ok_or(ScramError::Protocol("missing channel binding attribute"))?;
    let (cbind, rest) = rest
        .split_once(',')
        .ok_or(ScramError::Protocol("missing nonce attribute"))?;
    let rest = rest
        .strip_prefix("r=")
        .ok_or(ScramError::Protocol("missing nonce attribute"))?;
    let (nonce, rest) = rest
        .split_once(',')
        .ok_or(ScramError::Protocol("missing proof attribute"))?;
    let proof = rest.strip_prefix("p=").ok_or(ScramError::Protocol(
        "missing proof attribute or unsupported extension",
    ))?;
    if proof.contains(',') {
        return Err(ScramError::Protocol("trailing data after proof"));
    }
    // `rest` starts right after an ASCII ','; drop that ',' too.
    let without_proof = msg
        .len()
        .checked_sub(rest.len() + 1)
        .and_then(|end| msg.get(..end))
        .ok_or(ScramError::Protocol("missing proof attribute"))?;
    Ok(ClientFinal {
        cbind,
        nonce,
        proof,
        without_proof,
    })
}

/// Decodes the base64 proof, which must be exactly 32 bytes.
fn decode_proof(proof: &str) -> Result<Key, ScramError> {
    const BAD_PROOF: ScramError = ScramError::Protocol("malformed proof");
    if proof.len() != PROOF_B64_LEN {
        return Err(BAD_PROOF);
    }
    let bytes = B64.decode(proof).map_err(|_| BAD_PROOF)?;
    Key::try_from(bytes.as_slice()).map_err(|_| BAD_PROOF)
}

/// HMAC-SHA-256 keyed with a 32-byte key over the concatenation of `parts`.
///
/// HMAC zero-pads keys shorter than the block size, so a 32-byte key padded to 64 bytes
/// is the same key; using the fixed-size constructor keeps this infallible.
fn hmac_sha256(key: &Key, parts: &[&[u8]]) -> Key {
    let mut block = [0u8; HMAC_BLOCK_LEN];
    for (dst, src) in block.iter_mut().zip(key) {
        *dst = *src;
    }
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&block.into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

/// Hash of a certificate signature algorithm, as far as RFC 5929 cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// Longest DER length field (in bytes after the first) the walk accepts: 4 GiB is plenty.
const DER_MAX_LEN_BYTES: usize = 4;

/// Reads one DER TLV at the start of `input`: `(tag, contents, rest)`. Only single-byte
/// tags and definite lengths of at most [`DER_MAX_LEN_BYTES`] bytes; bounds-checked.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tag: not used in the parts we read
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > DER_MAX_LEN_BYTES {
            return None; // indefinite (BER) or absurd length
        }
        let (len_bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        len_bytes.iter().try_fold(0usize, |acc, &b| {
            acc.checked_mul(256)?.checked_add(usize::from(b))
        })?
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The hash of the certificate's `signatureAlgorithm`, if the DER walk recognises it.
fn cert_signature_hash(cert_der: &[u8]) -> Option<CertHash> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (tag, cert, _) = der_tlv(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _tbs, rest) = der_tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, alg_id, _) = der_tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, _) = der_tlv(alg_id)?;
    if tag != OID {
        return None;
    }
    // 1.2.840.113549.1.1.x: PKCS#1 RSA signatures.
    const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    // 1.2.840.10045.4.3.x: ECDSA with SHA-2.
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    match oid {
        [p @ .., last] if p == PKCS1 => match last {
            0x0b => Some(CertHash::Sha256),
            0x0c => Some(CertHash::Sha384),
            0x0d => Some(CertHash::Sha512),
            0x0e => Some(CertHash::Sha224),
            _ => None, // MD5, SHA-1, RSASSA-PSS...: SHA-256 default
        },
        [p @ .., last] if p == ECDSA_SHA2 => match last {
            0x01 => Some(CertHash::Sha224),
            0x02 => Some(CertHash::Sha256),
            0x03 => Some(CertHash::Sha384),
            0x04 => Some(CertHash::Sha512),
            _ => None,
        },
        _ => None,
    }
}

/// tls-server-end-point hash for a DER certificate: SHA-256 unless the certificate's
/// signature algorithm uses SHA-384/SHA-512 (then that hash), per RFC 5929 §4.1
/// (MD5/SHA-1 -> SHA-256). Detect the algorithm from the DER signatureAlgorithm OID
/// with a small bounded DER walk (no X.509 crate), defaulting to SHA-256.
///
/// SHA-224 signatures (RSA or ECDSA) hash with SHA-224, as RFC 5929 and OpenSSL-based
/// PostgreSQL do. Algorithms without a single SHA-2 hash in the OID (RSASSA-PSS,
/// Ed25519, unknown) and unparsable input fall back to SHA-256.
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    match cert_signature_hash(cert_der).unwrap_or(CertHash::Sha256) {
        CertHash::Sha224 => Sha224::digest(cert_der).to_vec(),
        CertHash::Sha256 => Sha256::digest(cert_der).to_vec(),
        CertHash::Sha384 => Sha384::digest(cert_der).to_vec(),
        CertHash::Sha512 => Sha512::digest(cert_der).to_vec(),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    const PW_READ: &[u8] = b"read-secret";
    const PW_RW: &[u8] = b"read-write-secret";
    const SALT: &[u8; 16] = b"0123456789abcdef";
    /// Few iterations keep tests fast; the count does not change any code path.
    const TEST_ITERS: u32 = 64;

    fn verifier() -> ScramVerifier {
        ScramVerifier::new(&[PW_READ, PW_RW], SALT, TEST_ITERS)
    }

    /// Runs a full exchange with the reference client. `cb_data` is what the server has,
    /// `mechanism` what the client picks. Returns the server's result and `matched()`.
    fn exchange(
        v: &ScramVerifier,
        password: &[u8],
        cb_data: Option<Vec<u8>>,
        mechanism: &str,
        client_cb: ChannelBinding,
    ) -> (Result<(), ScramError>, Option<usize>) {
        let mut server = ScramServer::new(v, cb_data);
        let mut client = ScramSha256::new(password, client_cb);
        let server_first = match server.client_first(mechanism, client.message()) {
            Ok(m) => m,
            Err(e) => return (Err(e), server.matched()),
        };
        client
            .update(&server_first)
            .expect("client accepts server-first");
        let server_final = match server.client_final(client.message()) {
            Ok(m) => m,
            Err(e) => return (Err(e), server.matched()),
        };
        client
            .finish(&server_final)
            .expect("client accepts server-final");
        (Ok(()), server.matched())
    }

    fn server_cert() -> (Vec<u8>, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = ck.cert.der().to_vec();
        let hash = tls_server_end_point(&der);
        (der, hash)
    }

    /// A verifier in Postgres' own `rolpassword` form: the reference client proves its
    /// password against it, and the ClientKey recovered from the proof is the one the
    /// password derives (what then logs in to Postgres as the role).
    #[test]
    fn a_postgres_verifier_checks_a_proof_and_yields_the_client_key() {
        let salted: Key = pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(PW_READ, SALT, TEST_ITERS);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let server_key = hmac_sha256(&salted, &[b"Server Key"]);
        let rolpassword = format!(
            "SCRAM-SHA-256${TEST_ITERS}:{}${}:{}",
            B64.encode(SALT),
            B64.encode(sha256(&client_key)),
            B64.encode(server_key)
        );
        let v = ScramVerifier::from_postgres(&rolpassword).unwrap();
        assert_eq!(v.iterations(), TEST_ITERS);
        assert_eq!(v.salt(), SALT);
        assert_eq!(v.server_key(), Some(server_key));

        let mut server = ScramServer::new(&v, None);
        let mut client = ScramSha256::new(PW_READ, ChannelBinding::unsupported());
        let first = server
            .client_first(SCRAM_SHA_256, client.message())
            .unwrap();
        client.update(&first).unwrap();
        let fin = server.client_final(client.message()).unwrap();
        client.finish(&fin).unwrap();
        assert_eq!(server.client_key(), Some(client_key));

        // A wrong password yields nothing.
        let (result, _) = exchange(
            &v,
            PW_RW,
            None,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
        );
        assert_eq!(result, Err(ScramError::AuthFailed));

        for bad in [
            "md5e8a48653851e28c69d0506508fb27fc5",
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$4096:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!$AAAA:AAAA",
            "SCRAM-SHA-256$4096:AAAA",
        ] {
            assert!(ScramVerifier::from_postgres(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mechanisms_offer_plus_first() {
        assert_eq!(
            ScramServer::mechanisms(true),
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        );
        assert_eq!(ScramServer::mechanisms(false), &[SCRAM_SHA_256]);
    }

    /// The exchange recorded from psql against PostgreSQL (also in postgres-protocol's tests).
    #[test]
    fn known_answer_from_postgresql() {
        let salt = B64.decode("fs3IXBy7U7+IvVjZ").unwrap();
        let v = ScramVerifier::new(&[b"foobar"], &salt, 4096);
        let mut server = ScramServer::new(&v, None);
        server.state = State::Failed;
        let raw: [u8; 18] = B64
            .decode("jx/oIRLs02gGSHcw1KEty3eY")
            .unwrap()
            .try_into()
            .unwrap();
        let first = server
            .client_first_with_nonce(SCRAM_SHA_256, b"n,,n=,r=9IZ2O01zb9IgiIZ1WJ/zgpJB", &raw)
            .unwrap();
        assert_eq!(
            first,
            b"r=9IZ2O01zb9IgiIZ1WJ/zgpJBjx/oIRLs02gGSHcw1KEty3eY,s=fs3IXBy7U7+IvVjZ,i=4096"
        );
        let fin = server
            .client_final(
                b"c=biws,r=9IZ2O01zb9IgiIZ1WJ/zgpJBjx/oIRLs02gGSHcw1KEty3eY,\
                  p=AmNKosjJzS31NTlQYNs5BTeQjdHdk7lOflDo5re2an8=",
            )
            .unwrap();
        assert_eq!(fin, b"v=U+ppxD5XUKtradnv8e2MkeupiA8FU87Sg8CXzXHDAzw=");
        assert_eq!(server.matched(), Some(0));
    }

    #[test]
    fn plain_without_channel_binding() {
        let v = verifier();
        // No TLS: client does not support channel binding.
        let r = exchange(
            &v,
            PW_READ,
            None,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
        );
        assert_eq!(r, (Ok(()), Some(0)));
        // TLS available (PLUS offered) but the client cannot bind: `n` is legitimate.
        let (_, hash) = server_cert();
        let r = exchange(
            &v,
            PW_RW,
            Some(hash),
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
        );
        assert_eq!(r, (Ok(()), Some(1)));
    }

    #[test]
    fn client_supports_binding_server_offered_plain_only() {
        let v = verifier();
        let r = exchange(
            &v,
            PW_READ,
            None,
            SCRAM_SHA_256,
            ChannelBinding::unrequested(),
        );
        assert_eq!(r, (Ok(()), Some(0)));
    }

    #[test]
    fn downgrade_is_detected() {
        let v = verifier();
        let (_, hash) = server_cert();
        let r = exchange(
            &v,
            PW_READ,
            Some(hash),
            SCRAM_SHA_256,
            ChannelBinding::unrequested(),
        );
        assert!(matches!(r.0, Err(ScramError::Protocol(_))), "{r:?}");
        assert_eq!(r.1, None);
    }

    #[test]
    fn plus_with_tls_server_end_point() {
        let v = verifier();
        let (_, hash) = server_cert();
        let r = exchange(
            &v,
            PW_RW,
            Some(hash.clone()),
            SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(hash),
        );
        assert_eq!(r, (Ok(()), Some(1)));
    }

    #[test]
    fn plus_with_wrong_hash_fails() {
        let v = verifier();
        let (_, hash) = server_cert();
        let mut wrong = hash.clone();
        wrong[0] ^= 1;
        let r = exchange(
            &v,
            PW_RW,
            Some(hash.clone()),
            SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(wrong),
        );
        assert_eq!(
            r,
            (
                Err(ScramError::Protocol("channel binding check failed")),
                None
            )
        );
        // Hash of another certificate (a MITM's) fails the same way.
        let (_, other) = server_cert();
        let r = exchange(
            &v,
            PW_RW,
            Some(hash),
            SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(other),
        );
        assert_eq!(
            r.0,
            Err(ScramError::Protocol("channel binding check failed"))
        );
    }

    #[test]
    fn mechanism_and_flag_mismatches() {
        let v = verifier();
        let (_, hash) = server_cert();
        // PLUS without TLS.
        let r = exchange(
            &v,
            PW_READ,
            None,
            SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(hash.clone()),
        );
        assert!(matches!(r.0, Err(ScramError::Protocol(_))));
        // Binding data with the plain mechanism.
        let r = exchange(
            &v,
            PW_READ,
            Some(hash.clone()),
            SCRAM_SHA_256,
            ChannelBinding::tls_server_end_point(hash.clone()),
        );
        assert!(matches!(r.0, Err(ScramError::Protocol(_))));
        // PLUS selected with `n` / `y`.
        let r = exchange(
            &v,
            PW_READ,
            Some(hash.clone()),
            SCRAM_SHA_256_PLUS,
            ChannelBinding::unsupported(),
        );
        assert!(matches!(r.0, Err(ScramError::Protocol(_))));
        let r = exchange(
            &v,
            PW_READ,
            Some(hash.clone()),
            SCRAM_SHA_256_PLUS,
            ChannelBinding::unrequested(),
        );
        assert!(matches!(r.0, Err(ScramError::Protocol(_))));
        // Unknown mechanism.
        let r = exchange(
            &v,
            PW_READ,
            Some(hash),
            "SCRAM-SHA-1",
            ChannelBinding::unsupported(),
        );
        assert_eq!(r.0, Err(ScramError::Protocol("unsupported SASL mechanism")));
    }

    #[test]
    fn two_passwords_and_wrong_password() {
        let v = verifier();
        assert_eq!(
            exchange(
                &v,
                PW_READ,
                None,
                SCRAM_SHA_256,
                ChannelBinding::unsupported()
            ),
            (Ok(()), Some(0))
        );
        assert_eq!(
            exchange(
                &v,
                PW_RW,
                None,
                SCRAM_SHA_256,
                ChannelBinding::unsupported()
            ),
            (Ok(()), Some(1))
        );
        let (_, hash) = server_cert();
        for pw in [&b"wrong"[..], b"", b"read-secret ", b"READ-SECRET"] {
            assert_eq!(
                exchange(&v, pw, None, SCRAM_SHA_256, ChannelBinding::unsupported()),
                (Err(ScramError::AuthFailed), None)
            );
            assert_eq!(
                exchange(
                    &v,
                    pw,
                    Some(hash.clone()),
                    SCRAM_SHA_256_PLUS,
                    ChannelBinding::tls_server_end_point(hash.clone())
                ),
                (Err(ScramError::AuthFailed), None)
            );
        }
        // A role accepting only the read-write secret rejects the read secret.
        let rw_only = ScramVerifier::new(&[PW_RW], SALT, TEST_ITERS);
        assert_eq!(
            exchange(
                &rw_only,
                PW_READ,
                None,
                SCRAM_SHA_256,
                ChannelBinding::unsupported()
            )
            .0,
            Err(ScramError::AuthFailed)
        );
        // No passwords: nothing matches.
        let none = ScramVerifier::new(&[], SALT, TEST_ITERS);
        assert_eq!(
            exchange(
                &none,
                b"",
                None,
                SCRAM_SHA_256,
                ChannelBinding::unsupported()
            )
            .0,
            Err(ScramError::AuthFailed)
        );
        // Same password twice: the first index wins.
        let dup = ScramVerifier::new(&[PW_READ, PW_READ], SALT, TEST_ITERS);
        assert_eq!(
            exchange(
                &dup,
                PW_READ,
                None,
                SCRAM_SHA_256,
                ChannelBinding::unsupported()
            )
            .1,
            Some(0)
        );
    }

    fn salt_sent(v: &ScramVerifier) -> Vec<u8> {
        let mut server = ScramServer::new(v, None);
        let first = server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap();
        let first = String::from_utf8(first).unwrap();
        let s = first.split(',').nth(1).unwrap().strip_prefix("s=").unwrap();
        B64.decode(s).unwrap()
    }

    #[test]
    fn decoy_never_succeeds_and_has_stable_salt() {
        let secret = [7u8; 32];
        let d1 = ScramVerifier::decoy(&secret, "alice", DEFAULT_ITERATIONS);
        let d2 = ScramVerifier::decoy(&secret, "alice", DEFAULT_ITERATIONS);
        let other = ScramVerifier::decoy(&secret, "bob", DEFAULT_ITERATIONS);
        let other_secret = ScramVerifier::decoy(&[8u8; 32], "alice", DEFAULT_ITERATIONS);
        assert_eq!(d1.salt(), d2.salt());
        assert_eq!(d1.salt().len(), SALT_LEN);
        assert_ne!(d1.salt(), other.salt());
        assert_ne!(d1.salt(), other_secret.salt());
        assert_eq!(salt_sent(&d1), d1.salt());
        assert_eq!(salt_sent(&d1), salt_sent(&d2));
        assert_eq!(d1.iterations(), DEFAULT_ITERATIONS);
        let (_, hash) = server_cert();
        for pw in [&b""[..], b"alice", b"password", PW_READ] {
            assert_eq!(
                exchange(&d1, pw, None, SCRAM_SHA_256, ChannelBinding::unsupported()),
                (Err(ScramError::AuthFailed), None)
            );
            assert_eq!(
                exchange(
                    &d1,
                    pw,
                    Some(hash.clone()),
                    SCRAM_SHA_256_PLUS,
                    ChannelBinding::tls_server_end_point(hash.clone())
                ),
                (Err(ScramError::AuthFailed), None)
            );
        }
    }

    #[test]
    fn verifier_debug_has_no_keys() {
        let v = verifier();
        let d = ScramVerifier::decoy(&[9u8; 32], "u", 4096);
        for v in [&v, &d] {
            let dbg = format!("{v:?} {v:#?}");
            assert!(dbg.contains("<redacted>"));
            assert!(!dbg.contains("decoy"));
            for pair in &v.keys {
                for key in [&pair.stored_key, &pair.server_key] {
                    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                    assert!(!dbg.contains(&hex));
                    assert!(!dbg.contains(&B64.encode(key)));
                    assert!(!dbg.contains(&format!("{key:?}")));
                    assert!(!dbg.contains(&format!("{:?}", &key[..4])));
                }
            }
            assert!(!dbg.contains(&format!("{:?}", v.salt())));
        }
        let s = ScramServer::new(&v, Some(vec![1, 2, 3, 4]));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("[1, 2, 3, 4]"), "{dbg}");
        // Errors are static.
        assert_eq!(ScramError::AuthFailed.to_string(), "authentication failed");
    }

    #[test]
    fn random_salt_is_random() {
        let a = ScramVerifier::random_salt().unwrap();
        let b = ScramVerifier::random_salt().unwrap();
        assert_ne!(a, b);
    }

    // ---- Malformed-input fixtures -------------------------------------------------------

    /// Client-first messages with the mechanism used and the Protocol error expected.
    /// The server has channel binding data available.
    const BAD_CLIENT_FIRST: &[(&str, &[u8], &str)] = &[
        (SCRAM_SHA_256, b"", "empty message"),
        (SCRAM_SHA_256, b"n", "malformed gs2 header"),
        (SCRAM_SHA_256, b"n,", "malformed gs2 header"),
        (SCRAM_SHA_256, b"n,,", "missing username attribute"),
        (SCRAM_SHA_256, b"x,,n=,r=abc", "malformed gs2 header"),
        (SCRAM_SHA_256, b"N,,n=,r=abc", "malformed gs2 header"),
        (SCRAM_SHA_256, b",,n=,r=abc", "malformed gs2 header"),
        (SCRAM_SHA_256, b"nn,,n=,r=abc", "malformed gs2 header"),
        (SCRAM_SHA_256, b"n,x,n=,r=abc", "malformed gs2 header"),
        (
            SCRAM_SHA_256,
            b"n,a=admin,n=,r=abc",
            "authorization identity is not supported",
        ),
        (
            SCRAM_SHA_256,
            b"n,a,n=,r=abc",
            "authorization identity is not supported",
        ),
        (
            SCRAM_SHA_256,
            b"y,,n=,r=abc",
            "channel binding downgrade: client supports it and the server offered it",
        ), // downgrade (server offered PLUS)
        (
            SCRAM_SHA_256,
            b"p=tls-server-end-point,,n=,r=abc",
            "channel binding data sent with SCRAM-SHA-256 (not -PLUS)",
        ),
        (
            SCRAM_SHA_256_PLUS,
            b"p=tls-unique,,n=,r=abc",
            "unsupported channel binding type",
        ),
        (
            SCRAM_SHA_256_PLUS,
            b"p=tls-exporter,,n=,r=abc",
            "unsupported channel binding type",
        ),
        (
            SCRAM_SHA_256_PLUS,
            b"p=,,n=,r=abc",
            "unsupported channel binding type",
        ),
        (
            SCRAM_SHA_256_PLUS,
            b"p=tls-server-end-point",
            "malformed gs2 header",
        ),
        (
            SCRAM_SHA_256_PLUS,
            b"p=tls-server-end-point,a=x,n=,r=abc",
            "authorization identity is not supported",
        ),
        (
            SCRAM_SHA_256_PLUS,
            b"n,,n=,r=abc",
            "SCRAM-SHA-256-PLUS selected without channel binding data",
        ),
        (
            SCRAM_SHA_256_PLUS,
            b"y,,n=,r=abc",
            "SCRAM-SHA-256-PLUS selected without channel binding data",
        ),
        (
            "scram-sha-256",
            b"n,,n=,r=abc",
            "unsupported SASL mechanism",
        ),
        ("", b"n,,n=,r=abc", "unsupported SASL mechanism"),
        (
            SCRAM_SHA_256,
            b"n,,m=ext,n=,r=abc",
            "unsupported mandatory extension",
        ),
        (SCRAM_SHA_256, b"n,,r=abc", "missing username attribute"),
        (SCRAM_SHA_256, b"n,,n=user", "missing nonce attribute"),
        (SCRAM_SHA_256, b"n,,n=user,", "missing nonce attribute"),
        (SCRAM_SHA_256, b"n,,n=user,r=", "invalid client nonce"),
        (SCRAM_SHA_256, b"n,,n=user,x=abc", "missing nonce attribute"),
        (SCRAM_SHA_256, b"n,,n=user,r=ab c", "invalid client nonce"),
        (SCRAM_SHA_256, b"n,,n=user,r=ab\x7f", "invalid client nonce"),
        (
            SCRAM_SHA_256,
            b"n,,n=user,r=\xc3\xa9",
            "invalid client nonce",
        ),
        (
            SCRAM_SHA_256,
            b"n,,n=user,r=abc,",
            "malformed attribute in client-first-message",
        ),
        (
            SCRAM_SHA_256,
            b"n,,n=user,r=abc,=x",
            "malformed attribute in client-first-message",
        ),
        (
            SCRAM_SHA_256,
            b"n,,n=user,r=abc,1=x",
            "malformed attribute in client-first-message",
        ),
        (
            SCRAM_SHA_256,
            b"n,,n=user,r=abc,xy",
            "malformed attribute in client-first-message",
        ),
        (
            SCRAM_SHA_256,
            b"n,,n=\xff,r=abc",
            "message is not valid UTF-8",
        ), // non-UTF-8
        (
            SCRAM_SHA_256,
            b"n,,n=\0,r=abc",
            "message contains a NUL byte",
        ), // NUL
        (
            SCRAM_SHA_256,
            b"n,,n=,r=abc\0",
            "message contains a NUL byte",
        ), // NUL
        (
            SCRAM_SHA_256,
            b"\xef\xbb\xbfn,,n=,r=abc",
            "malformed gs2 header",
        ), // BOM
    ];

    /// Client-first messages that are valid (with the plain mechanism, no TLS).
    const GOOD_CLIENT_FIRST: &[&[u8]] = &[
        b"n,,n=,r=abc",
        b"y,,n=,r=abc",
        b"n,,n=alice,r=abc",
        b"n,,n=\xc3\xa9l=2Cise,r=abc",
        b"n,,n=,r=!\"#$%&'()*+-./0123456789:;<=>?@AZ[\\]^_`az{|}~",
        b"n,,n=,r=abc,x=ignored,y=",
    ];

    #[test]
    fn client_first_fixtures() {
        let v = verifier();
        let (_, hash) = server_cert();
        for (mech, msg, want) in BAD_CLIENT_FIRST {
            let mut s = ScramServer::new(&v, Some(hash.clone()));
            let r = s.client_first(mech, msg);
            assert_eq!(
                r,
                Err(ScramError::Protocol(want)),
                "{mech} {:?}",
                String::from_utf8_lossy(msg)
            );
            // An error is final.
            assert!(matches!(
                s.client_first(SCRAM_SHA_256, b"n,,n=,r=abc"),
                Err(ScramError::Protocol(_))
            ));
            assert!(matches!(
                s.client_final(b"c=biws,r=abc,p=x"),
                Err(ScramError::Protocol(_))
            ));
        }
        for msg in GOOD_CLIENT_FIRST {
            let mut s = ScramServer::new(&v, None);
            let r = s.client_first(SCRAM_SHA_256, msg);
            assert!(r.is_ok(), "{:?} -> {r:?}", String::from_utf8_lossy(msg));
        }
        // Nonce bounds.
        let mut s = ScramServer::new(&v, None);
        let msg = format!("n,,n=,r={}", "a".repeat(MAX_CLIENT_NONCE_LEN));
        assert!(s.client_first(SCRAM_SHA_256, msg.as_bytes()).is_ok());
        let mut s = ScramServer::new(&v, None);
        let msg = format!("n,,n=,r={}", "a".repeat(MAX_CLIENT_NONCE_LEN + 1));
        assert_eq!(
            s.client_first(SCRAM_SHA_256, msg.as_bytes()),
            Err(ScramError::Protocol("invalid client nonce"))
        );
    }

    #[test]
    fn oversize_messages() {
        let v = verifier();
        let mut s = ScramServer::new(&v, None);
        let mut msg = b"n,,n=".to_vec();
        msg.resize(MAX_MESSAGE_LEN - 6, b'u');
        msg.extend_from_slice(b",r=abc");
        assert_eq!(msg.len(), MAX_MESSAGE_LEN);
        assert!(s.client_first(SCRAM_SHA_256, &msg).is_ok());
        let mut s = ScramServer::new(&v, None);
        msg.insert(5, b'u');
        assert_eq!(
            s.client_first(SCRAM_SHA_256, &msg),
            Err(ScramError::Protocol("message too long"))
        );
        let huge = vec![b'a'; 1 << 20];
        let mut s = ScramServer::new(&v, None);
        assert!(s.client_first(SCRAM_SHA_256, &huge).is_err());
        // Oversize final.
        let (mut s, nonce) = started(&v, None, SCRAM_SHA_256, b"n,,n=,r=abc");
        let msg = format!("c=biws,r={nonce},p={}", "A".repeat(MAX_MESSAGE_LEN));
        assert_eq!(
            s.client_final(msg.as_bytes()),
            Err(ScramError::Protocol("message too long"))
        );
    }

    /// A server after client_first with a fixed server nonce; returns the combined nonce.
    fn started<'a>(
        v: &'a ScramVerifier,
        cb: Option<Vec<u8>>,
        mech: &str,
        first: &[u8],
    ) -> (ScramServer<'a>, String) {
        let mut s = ScramServer::new(v, cb);
        s.state = State::Failed;
        let sf = s.client_first_with_nonce(mech, first, &[0x5a; 18]).unwrap();
        let sf = String::from_utf8(sf).unwrap();
        let nonce = sf
            .split(',')
            .next()
            .unwrap()
            .strip_prefix("r=")
            .unwrap()
            .to_string();
        (s, nonce)
    }

    /// Builds a correct client-final for `password` (the reference computation).
    fn correct_final(
        password: &[u8],
        first_bare: &str,
        server_first: &str,
        cbind: &str,
        nonce: &str,
    ) -> String {
        let salted: Key = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, SALT, TEST_ITERS);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let stored = sha256(&client_key);
        let without_proof = format!("c={cbind},r={nonce}");
        let auth = format!("{first_bare},{server_first},{without_proof}");
        let sig = hmac_sha256(&stored, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn client_final_fixtures() {
        let v = verifier();
        let (_, hash) = server_cert();
        let (_, n) = started(&v, None, SCRAM_SHA_256, b"n,,n=,r=abc");
        let sf = format!("r={n},s={},i={TEST_ITERS}", B64.encode(SALT));
        let good = correct_final(PW_READ, "n=,r=abc", &sf, "biws", &n);
        let proof = good.rsplit_once(",p=").unwrap().1.to_string();
        let bad: Vec<(Vec<u8>, ScramError)> = vec![
            (b"".to_vec(), ScramError::Protocol("empty message")),
            (
                format!("r={n},p={proof}").into_bytes(),
                ScramError::Protocol("missing channel binding attribute"),
            ),
            (
                format!("c=biws,p={proof}").into_bytes(),
                ScramError::Protocol("missing nonce attribute"),
            ),
            (
                b"c=biws".to_vec(),
                ScramError::Protocol("missing nonce attribute"),
            ),
            (
                format!("c=biws,r={n}").into_bytes(),
                ScramError::Protocol("missing proof attribute"),
            ),
            (
                format!("c=biws,r={n},").into_bytes(),
                ScramError::Protocol("missing proof attribute or unsupported extension"),
            ),
            (
                format!("c=biws,r={n},x=ext,p={proof}").into_bytes(),
                ScramError::Protocol("missing proof attribute or unsupported extension"),
            ),
            (
                format!("c=biws,r={n},p={proof},x=ext").into_bytes(),
                ScramError::Protocol("trailing data after proof"),
            ),
            (
                format!("c=biws,r={n},p={proof},").into_bytes(),
                ScramError::Protocol("trailing data after proof"),
            ),
            (
                format!("c=eSws,r={n},p={proof}").into_bytes(),
                ScramError::Protocol("channel binding check failed"),
            ),
            (
                format!("c=,r={n},p={proof}").into_bytes(),
                ScramError::Protocol("channel binding check failed"),
            ),
            (
                format!("c=biws=,r={n},p={proof}").into_bytes(),
                ScramError::Protocol("channel binding check failed"),
            ),
            (
                format!("c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r={n},p={proof}").into_bytes(),
                ScramError::Protocol("channel binding check failed"),
            ),
            (
                format!("c=biws,r=abc,p={proof}").into_bytes(),
                ScramError::Protocol("nonce mismatch"),
            ),
            (
                format!("c=biws,r={n}x,p={proof}").into_bytes(),
                ScramError::Protocol("nonce mismatch"),
            ),
            (
                format!("c=biws,r=,p={proof}").into_bytes(),
                ScramError::Protocol("nonce mismatch"),
            ),
            (
                format!("c=biws,r={n},p=").into_bytes(),
                ScramError::Protocol("malformed proof"),
            ),
            (
                format!("c=biws,r={n},p=!!!!{}", &proof[4..]).into_bytes(),
                ScramError::Protocol("malformed proof"),
            ),
            (
                format!("c=biws,r={n},p={}", &proof[..43]).into_bytes(),
                ScramError::Protocol("malformed proof"),
            ),
            (
                format!("c=biws,r={n},p={proof}A").into_bytes(),
                ScramError::Protocol("malformed proof"),
            ),
            (
                format!("c=biws,r={n},p={}", B64.encode([0u8; 31])).into_bytes(),
                ScramError::Protocol("malformed proof"),
            ),
            (
                format!("c=biws,r={n},p={}", B64.encode([0u8; 33])).into_bytes(),
                ScramError::Protocol("malformed proof"),
            ),
            (
                format!("c=biws,r={n},p={}AA==", &proof[..40]).into_bytes(),
                ScramError::Protocol("malformed proof"),
            ),
            (
                format!("c=biws,r={n},p={}", B64.encode([0u8; 32])).into_bytes(),
                ScramError::AuthFailed,
            ),
            (
                format!("c=biws,r={n},p={proof}\0").into_bytes(),
                ScramError::Protocol("message contains a NUL byte"),
            ),
            (
                [format!("c=biws,r={n},p=").as_bytes(), b"\xff\xfe"].concat(),
                ScramError::Protocol("message is not valid UTF-8"),
            ),
        ];
        for (msg, want) in &bad {
            let (mut s, _) = started(&v, None, SCRAM_SHA_256, b"n,,n=,r=abc");
            assert_eq!(
                s.client_final(msg).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
            assert_eq!(s.matched(), None);
            // After an error the correct message is refused too.
            assert_eq!(
                s.client_final(good.as_bytes()),
                Err(ScramError::Protocol("unexpected client-final-message"))
            );
        }
        // The reference computation is right: the good message passes.
        let (mut s, _) = started(&v, None, SCRAM_SHA_256, b"n,,n=,r=abc");
        assert!(s.client_final(good.as_bytes()).is_ok());
        assert_eq!(s.matched(), Some(0));

        // With -PLUS, `c=` must carry the gs2 header and exactly our hash.
        let first = b"p=tls-server-end-point,,n=,r=abc";
        let (_, n) = started(&v, Some(hash.clone()), SCRAM_SHA_256_PLUS, first);
        let sf = format!("r={n},s={},i={TEST_ITERS}", B64.encode(SALT));
        let cb_ok = B64.encode([b"p=tls-server-end-point,,".as_slice(), &hash].concat());
        let mut short = hash.clone();
        short.pop();
        for (cbind, ok) in [
            (cb_ok.clone(), true),
            ("biws".to_string(), false),
            (B64.encode(b"p=tls-server-end-point,,"), false),
            (
                B64.encode([b"p=tls-server-end-point,,".as_slice(), &short].concat()),
                false,
            ),
            (B64.encode([b"n,,".as_slice(), &hash].concat()), false),
            (B64.encode(&hash), false),
        ] {
            let (mut s, _) = started(&v, Some(hash.clone()), SCRAM_SHA_256_PLUS, first);
            let msg = correct_final(PW_RW, "n=,r=abc", &sf, &cbind, &n);
            let r = s.client_final(msg.as_bytes());
            if ok {
                assert!(r.is_ok());
                assert_eq!(s.matched(), Some(1));
            } else {
                assert_eq!(r, Err(ScramError::Protocol("channel binding check failed")));
            }
        }
    }

    #[test]
    fn out_of_order_calls() {
        let v = verifier();
        // Final before first.
        let mut s = ScramServer::new(&v, None);
        assert_eq!(
            s.client_final(b"c=biws,r=abc,p=x"),
            Err(ScramError::Protocol("unexpected client-final-message"))
        );
        // First twice.
        let mut s = ScramServer::new(&v, None);
        assert!(s.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").is_ok());
        assert_eq!(
            s.client_first(SCRAM_SHA_256, b"n,,n=,r=abc"),
            Err(ScramError::Protocol("unexpected client-first-message"))
        );
        // Anything after success.
        let mut s = ScramServer::new(&v, None);
        let mut c = ScramSha256::new(PW_READ, ChannelBinding::unsupported());
        let sf = s.client_first(SCRAM_SHA_256, c.message()).unwrap();
        c.update(&sf).unwrap();
        let fin_msg = c.message().to_vec();
        assert!(s.client_final(&fin_msg).is_ok());
        assert_eq!(s.matched(), Some(0));
        assert!(matches!(
            s.client_final(&fin_msg),
            Err(ScramError::Protocol(_))
        ));
        assert_eq!(s.matched(), None);
        let mut s2 = ScramServer::new(&v, None);
        assert!(s2.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").is_ok());
        assert!(s2.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").is_err());
        // Replay of a recorded client-final on a new exchange fails (fresh server nonce).
        let mut s3 = ScramServer::new(&v, None);
        let c2 = ScramSha256::new(PW_READ, ChannelBinding::unsupported());
        assert!(s3.client_first(SCRAM_SHA_256, c2.message()).is_ok());
        assert_eq!(
            s3.client_final(&fin_msg),
            Err(ScramError::Protocol("nonce mismatch"))
        );
    }

    /// xorshift64* — deterministic, dependency-free.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const ALPHABET: &[u8] = b"nypcrsima=,-+/ABZaz09\0\xff\xc3\xa9tls-server-end-point";

    fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
        let mut m = seed.to_vec();
        match rng.below(4) {
            0 => {
                // Fully random message.
                let len = rng.below(96);
                m = (0..len)
                    .map(|_| {
                        if rng.below(2) == 0 {
                            ALPHABET[rng.below(ALPHABET.len())]
                        } else {
                            rng.next() as u8
                        }
                    })
                    .collect();
            }
            _ => {
                for _ in 0..=rng.below(4) {
                    let pos = if m.is_empty() {
                        0
                    } else {
                        rng.below(m.len() + 1)
                    };
                    match rng.below(5) {
                        0 if pos < m.len() => m[pos] = rng.next() as u8,
                        1 if pos < m.len() => {
                            m.remove(pos);
                        }
                        2 => m.insert(pos, ALPHABET[rng.below(ALPHABET.len())]),
                        3 => m.truncate(pos),
                        _ => {
                            let start = rng.below(m.len() + 1);
                            let end = (start + rng.below(16)).min(m.len());
                            let chunk = m[start..end].to_vec();
                            let at = rng.below(m.len() + 1);
                            m.splice(at..at, chunk);
                        }
                    }
                }
            }
        }
        m
    }

    #[test]
    fn fuzz_no_panic() {
        let v = verifier();
        let (_, hash) = server_cert();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let firsts: [(&str, &[u8]); 4] = [
            (SCRAM_SHA_256, b"n,,n=,r=abcdefgh"),
            (SCRAM_SHA_256, b"y,,n=user,r=abcdefgh"),
            (SCRAM_SHA_256_PLUS, b"p=tls-server-end-point,,n=,r=abcdefgh"),
            (SCRAM_SHA_256, b"n,,n=,r=abcdefgh,x=y"),
        ];
        let mut accepted_first = 0;
        let mut accepted_final = 0;
        for i in 0..10_000 {
            let cb = if rng.below(2) == 0 {
                Some(hash.clone())
            } else {
                None
            };
            let (mech, seed) = firsts[rng.below(firsts.len())];
            let mech = if rng.below(8) == 0 {
                [SCRAM_SHA_256, SCRAM_SHA_256_PLUS][rng.below(2)]
            } else {
                mech
            };
            let mut s = ScramServer::new(&v, cb.clone());
            let first = if i % 3 == 0 {
                seed.to_vec()
            } else {
                mutate(&mut rng, seed)
            };
            let Ok(sf) = s.client_first(mech, &first) else {
                assert!(s.client_final(b"c=biws,r=a,p=b").is_err());
                continue;
            };
            accepted_first += 1;
            let sf = String::from_utf8(sf).unwrap();
            let nonce = sf.split(',').next().unwrap().strip_prefix("r=").unwrap();
            let parsed = parse_client_first(std::str::from_utf8(&first).unwrap()).unwrap();
            let mut header = parsed.gs2_header.as_bytes().to_vec();
            if parsed.flag == CbindFlag::Plus {
                header.extend_from_slice(cb.as_deref().unwrap());
            }
            let bare = parsed.bare.to_string();
            let pw = [PW_READ, PW_RW, b"nope"][rng.below(3)];
            let good = correct_final(pw, &bare, &sf, &B64.encode(&header), nonce);
            let fin = if rng.below(4) == 0 {
                good.into_bytes()
            } else {
                mutate(&mut rng, good.as_bytes())
            };
            if s.client_final(&fin).is_ok() {
                accepted_final += 1;
                assert!(s.matched().is_some());
            } else {
                assert_eq!(s.matched(), None);
            }
            assert!(s.client_final(&fin).is_err());
        }
        // The loop exercised both accepting and rejecting paths.
        assert!(accepted_first > 1000, "{accepted_first}");
        assert!(accepted_final > 100, "{accepted_final}");
    }

    // ---- tls-server-end-point ---------------------------------------------------------

    #[test]
    fn end_point_hash_follows_signature_algorithm() {
        // rcgen's default: ECDSA P-256 with SHA-256.
        let (der, hash) = server_cert();
        assert_eq!(cert_signature_hash(&der), Some(CertHash::Sha256));
        assert_eq!(hash, Sha256::digest(&der).to_vec());

        // ECDSA P-384 with SHA-384.
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let der = cert.der().to_vec();
        assert_eq!(cert_signature_hash(&der), Some(CertHash::Sha384));
        assert_eq!(tls_server_end_point(&der), Sha384::digest(&der).to_vec());

        // Ed25519: no SHA-2 in the OID, SHA-256 default.
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let der = cert.der().to_vec();
        assert_eq!(cert_signature_hash(&der), None);
        assert_eq!(tls_server_end_point(&der), Sha256::digest(&der).to_vec());
    }

    /// A skeleton certificate: SEQUENCE { SEQUENCE {} (tbs), SEQUENCE { OID }, BIT STRING }.
    fn skeleton(oid: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut cert = vec![0x30, 0x81, body.len() as u8];
        cert.extend_from_slice(&body);
        cert
    }

    #[test]
    fn end_point_hash_oids() {
        let pkcs1 = |x: u8| [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, x];
        let ecdsa = |x: u8| [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, x];
        let cases: &[(Vec<u8>, Option<CertHash>)] = &[
            (pkcs1(0x04).to_vec(), None), // md5WithRSAEncryption
            (pkcs1(0x05).to_vec(), None), // sha1WithRSAEncryption
            (pkcs1(0x0a).to_vec(), None), // RSASSA-PSS
            (pkcs1(0x0b).to_vec(), Some(CertHash::Sha256)),
            (pkcs1(0x0c).to_vec(), Some(CertHash::Sha384)),
            (pkcs1(0x0d).to_vec(), Some(CertHash::Sha512)),
            (pkcs1(0x0e).to_vec(), Some(CertHash::Sha224)),
            (vec![0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], None), // ecdsa-with-SHA1
            (ecdsa(0x01).to_vec(), Some(CertHash::Sha224)),
            (ecdsa(0x02).to_vec(), Some(CertHash::Sha256)),
            (ecdsa(0x03).to_vec(), Some(CertHash::Sha384)),
            (ecdsa(0x04).to_vec(), Some(CertHash::Sha512)),
            (vec![], None),
        ];
        for (oid, want) in cases {
            let der = skeleton(oid);
            assert_eq!(cert_signature_hash(&der), *want, "{oid:02x?}");
            let len = match want {
                Some(CertHash::Sha224) => 28,
                Some(CertHash::Sha384) => 48,
                Some(CertHash::Sha512) => 64,
                _ => 32,
            };
            assert_eq!(tls_server_end_point(&der).len(), len);
        }
        assert_eq!(
            tls_server_end_point(&skeleton(&pkcs1(0x0d))),
            Sha512::digest(skeleton(&pkcs1(0x0d))).to_vec()
        );
    }

    #[test]
    fn end_point_hash_garbage_defaults_to_sha256() {
        let (der, _) = server_cert();
        // Every truncation, and some corruptions, never panic and default to SHA-256.
        for end in 0..der.len() {
            let h = tls_server_end_point(&der[..end]);
            assert_eq!(h, Sha256::digest(&der[..end]).to_vec());
        }
        let garbage: &[&[u8]] = &[
            b"",
            &[0x30],
            &[0x30, 0x80, 0x00, 0x00],             // indefinite length
            &[0x30, 0x85, 1, 0, 0, 0, 0],          // 5 length bytes
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], // length past the end
            &[0x30, 0x82, 0x00],                   // truncated length
            &[0x1f, 0x81, 0x00],                   // multi-byte tag
            &[0x31, 0x00],
            &[0x30, 0x02, 0x30, 0x00],             // no algorithm
            &[0x30, 0x04, 0x30, 0x00, 0x31, 0x00], // algorithm not a SEQUENCE
            &[0x30, 0x06, 0x30, 0x00, 0x30, 0x02, 0x05, 0x00], // no OID
        ];
        for g in garbage {
            assert_eq!(cert_signature_hash(g), None, "{g:02x?}");
            assert_eq!(tls_server_end_point(g), Sha256::digest(g).to_vec());
        }
        let mut rng = XorShift(42);
        for _ in 0..2000 {
            let mut m = der.clone();
            for _ in 0..=rng.below(8) {
                let p = rng.below(m.len());
                m[p] = rng.next() as u8;
            }
            let h = tls_server_end_point(&m);
            assert!(matches!(h.len(), 28 | 32 | 48 | 64));
        }
    }
}
