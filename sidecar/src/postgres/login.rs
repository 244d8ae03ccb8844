//! The sidecar's own login to Postgres (127.0.0.1:5432 or a unix socket), as the role
//! the client authenticated for: trust, password, md5 or SCRAM-SHA-256 (client side
//! from postgres-protocol). Also the passthrough login, where the client's own
//! authentication exchange is relayed to Postgres unchanged (mode B).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use postgres_protocol::authentication::sasl::SCRAM_SHA_256;

use crate::auth::scram_client::{KeyCache, ScramClient, ScramKeys};

/// SCRAM keys of the backend password, per salt and iteration count: Postgres sends the
/// same ones for every login of a role, so PBKDF2 runs once per role, not per connection.
static BACKEND_KEYS: KeyCache = KeyCache::new();
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::auth::Secret;
use crate::config::{BackendAddr, BackendMethod};
use crate::pgwire::{self, WireError, decode};

/// Largest message accepted from Postgres during login (ParameterStatus, notices, …).
const MAX_LOGIN_MESSAGE: usize = 1024 * 1024;

/// A connection to Postgres over TCP or a unix socket.
#[derive(Debug)]
pub enum BackendStream {
    /// TCP, with Nagle's algorithm off (`TCP_NODELAY`).
    Tcp(TcpStream),
    /// The unix socket `<dir>/.s.PGSQL.<port>`.
    Unix(UnixStream),
}

impl BackendStream {
    /// Connect to `addr` (TCP or `<dir>/.s.PGSQL.<port>`); no time limit of its own.
    pub async fn connect(addr: &BackendAddr) -> std::io::Result<Self> {
        match addr {
            BackendAddr::Tcp(host, port) => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Ok(Self::Tcp(s))
            }
            BackendAddr::Unix(dir, port) => Ok(Self::Unix(
                UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?,
            )),
        }
    }

    /// Whether an idle connection is still quiet: Postgres sends nothing unasked to an
    /// idle session except when it is ending it (a FATAL for `idle_session_timeout` or a
    /// shutdown, then end of stream). Never blocks.
    pub fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        let r = match self {
            Self::Tcp(s) => s.try_read(&mut probe),
            Self::Unix(s) => s.try_read(&mut probe),
        };
        matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// A session logged in to Postgres, with what Postgres said after AuthenticationOk.
#[derive(Debug)]
pub struct LoggedIn {
    /// The connection, just past Postgres' first ReadyForQuery.
    pub stream: BackendStream,
    /// ParameterStatus messages, in order.
    pub params: Vec<(String, String)>,
    /// Postgres' own cancel key (pid, key).
    pub cancel_key: Option<(i32, Vec<u8>)>,
    /// NoticeResponse messages, raw, to pass on to the client.
    pub notices: Vec<u8>,
}

/// Why the login to Postgres failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Connecting to Postgres (TCP or unix socket) failed.
    #[error("cannot reach Postgres at {addr}: {source}")]
    Unreachable {
        /// `host:port` or the socket path, as [`BackendAddr::describe`] spells it.
        addr: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// Postgres answered with an ErrorResponse during login (a 28xxx SQLSTATE for a
    /// failed authentication, 3D000 for an unknown database, …).
    #[error("Postgres refused the login: {code} {message}")]
    Refused {
        /// The ErrorResponse's SQLSTATE (field `C`); empty if Postgres sent none.
        code: String,
        /// The ErrorResponse's primary message (field `M`); empty if Postgres sent none.
        message: String,
        /// The ErrorResponse as Postgres sent it, to pass on to the client.
        raw: Vec<u8>,
    },
    /// Postgres asked for an authentication the sidecar cannot give (e.g. a password
    /// with `backend.method = trust`, GSSAPI, a non-SCRAM SASL mechanism); names the request.
    #[error("Postgres asked for {0}, but the sidecar's backend.method cannot answer it")]
    Method(String),
    /// A malformed or unexpected message, a SCRAM failure, or an I/O error mid-login.
    #[error("protocol error talking to Postgres: {0}")]
    Protocol(String),
    /// The login did not reach ReadyForQuery within `backend.connect_timeout_ms` (the
    /// duration given).
    #[error("Postgres did not finish the login within {0:?}")]
    Timeout(Duration),
    /// Writing the session's attested identity (`teesql.session_identity`, for
    /// `teesql.identity()`) after login failed.
    #[error("recording the session's attested identity failed: {0}")]
    Identity(#[source] crate::postgres::identity_rows::RecordError),
}

impl From<WireError> for BackendError {
    fn from(e: WireError) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// What a login passes on to Postgres: the role and database the sidecar chose, and the
/// client's settings that `params::StartupParameters` let through (user, database,
/// replication and protocol options are never among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The Postgres role to log in as: the client's `user`, or the role a tenant user's
    /// verifier grant chose.
    pub user: String,
    /// The client's `database` (its user name when it named none, as Postgres does).
    pub database: String,
    /// Settings, in the client's order.
    pub settings: Vec<(String, String)>,
}

impl Forwarded {
    /// `settings` as checked by the startup-parameter allowlist.
    pub fn new(user: &str, database: &str, settings: &[(String, String)]) -> Self {
        Self {
            user: user.to_string(),
            database: database.to_string(),
            settings: settings.to_vec(),
        }
    }

    /// The StartupMessage parameters: user, database, then the settings.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        let mut out = vec![
            ("user", self.user.as_str()),
            ("database", self.database.as_str()),
        ];
        out.extend(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        out
    }
}

/// What the sidecar proves itself with when it logs in to Postgres.
#[derive(Debug)]
enum Credential<'a> {
    /// The configured method and backend password.
    Configured {
        method: BackendMethod,
        password: Option<&'a Secret>,
    },
    /// A passthrough role's SCRAM keys, recovered from its client's proof: SCRAM only.
    Scram(ScramKeys),
}

/// Log in to Postgres as `user` with the configured method.
pub async fn login(
    addr: &BackendAddr,
    method: BackendMethod,
    password: Option<&Secret>,
    params: &[(&str, &str)],
    timeout: Duration,
) -> Result<LoggedIn, BackendError> {
    let credential = Credential::Configured { method, password };
    match tokio::time::timeout(timeout, login_inner(addr, credential, params)).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout(timeout)),
    }
}

/// Log in to Postgres as a passthrough role with the SCRAM keys its client proved (see
/// [`crate::postgres::passthrough`]). Postgres decides: it checks the proof against the
/// role's verifier as for any client.
pub async fn login_with_keys(
    addr: &BackendAddr,
    keys: ScramKeys,
    params: &[(&str, &str)],
    timeout: Duration,
) -> Result<LoggedIn, BackendError> {
    let credential = Credential::Scram(keys);
    match tokio::time::timeout(timeout, login_inner(addr, credential, params)).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout(timeout)),
    }
}

/// Connect to Postgres; a failure names the address.
async fn connect(addr: &BackendAddr) -> Result<BackendStream, BackendError> {
    BackendStream::connect(addr)
        .await
        .map_err(|source| BackendError::Unreachable {
            addr: addr.describe(),
            source,
        })
}

async fn login_inner(
    addr: &BackendAddr,
    credential: Credential<'_>,
    params: &[(&str, &str)],
) -> Result<LoggedIn, BackendError> {
    let mut stream = connect(addr).await?;
    let user = params
        .iter()
        .find(|(k, _)| *k == "user")
        .map(|(_, v)| *v)
        .unwrap_or_default();
    write(&mut stream, &pgwire::startup_message(params)).await?;
    let mut scram: Option<ScramClient<'static>> = None;
    let mut credential = Some(credential);
    // The configured password for Postgres' request `asked`.
    let configured = |credential: &Option<Credential<'_>>, asked: &str| match credential {
        Some(Credential::Configured { method, password }) => {
            password_for(*method, *password, asked).map(<[u8]>::to_vec)
        }
        _ => Err(BackendError::Method(format!(
            "{asked}: a passthrough role's SCRAM keys log in only with SCRAM-SHA-256"
        ))),
    };
    loop {
        let (tag, body) = pgwire::read_message(&mut stream, MAX_LOGIN_MESSAGE).await?;
        match tag {
            b'R' => {
                let mut out = Vec::new();
                match decode::authentication(&body)? {
                    decode::Authentication::Ok => return finish_login(stream).await,
                    decode::Authentication::CleartextPassword => {
                        let pw = configured(&credential, "a cleartext password")?;
                        pgwire::frontend::password_message(&mut out, &pw);
                    }
                    decode::Authentication::Md5Password(salt) => {
                        let pw = configured(&credential, "an md5 password")?;
                        let hash =
                            postgres_protocol::authentication::md5_hash(user.as_bytes(), &pw, salt);
                        pgwire::frontend::password_message(&mut out, hash.as_bytes());
                    }
                    decode::Authentication::Sasl(mechanisms) => {
                        if !mechanisms.contains(&SCRAM_SHA_256) {
                            return Err(BackendError::Method(format!("SASL {mechanisms:?}")));
                        }
                        let client = match credential.take() {
                            Some(Credential::Scram(keys)) => ScramClient::with_keys(keys),
                            other => {
                                let pw = configured(&other, "SCRAM-SHA-256")?;
                                ScramClient::new(&pw, &BACKEND_KEYS)
                            }
                        }
                        .map_err(|e| BackendError::Protocol(format!("SCRAM: {e}")))?;
                        pgwire::frontend::sasl_initial_response(
                            &mut out,
                            SCRAM_SHA_256,
                            &client.client_first(),
                        );
                        scram = Some(client);
                    }
                    decode::Authentication::SaslContinue(data) => {
                        let client = scram.as_mut().ok_or_else(|| {
                            BackendError::Protocol("SASLContinue before SASL".into())
                        })?;
                        let reply = client
                            .server_first(data)
                            .map_err(|e| BackendError::Protocol(format!("SCRAM: {e}")))?;
                        pgwire::frontend::sasl_response(&mut out, &reply);
                    }
                    decode::Authentication::SaslFinal(data) => {
                        let client = scram.as_mut().ok_or_else(|| {
                            BackendError::Protocol("SASLFinal before SASL".into())
                        })?;
                        client.server_final(data).map_err(|e| {
                            BackendError::Protocol(format!("SCRAM server signature: {e}"))
                        })?;
                        continue;
                    }
                    decode::Authentication::Other(n) => {
                        return Err(BackendError::Method(format!("authentication type {n}")));
                    }
                }
                write(&mut stream, &out).await?;
            }
            b'E' => return Err(refused(&body)),
            b'N' | b'v' => continue,
            other => {
                return Err(BackendError::Protocol(format!(
                    "unexpected message {:?} during login",
                    other as char
                )));
            }
        }
    }
}

/// After AuthenticationOk: collect ParameterStatus, BackendKeyData and notices until
/// ReadyForQuery.
async fn finish_login(mut stream: BackendStream) -> Result<LoggedIn, BackendError> {
    let mut params = Vec::new();
    let mut cancel_key = None;
    let mut notices = Vec::new();
    loop {
        let (tag, body) = pgwire::read_message(&mut stream, MAX_LOGIN_MESSAGE).await?;
        match tag {
            b'S' => {
                let (k, v) = decode::parameter_status(&body)?;
                params.push((k.to_string(), v.to_string()));
            }
            b'K' => {
                let (pid, key) = decode::backend_key_data(&body)?;
                cancel_key = Some((pid, key.to_vec()));
            }
            b'N' => notices.extend_from_slice(&raw_message(b'N', &body)),
            b'Z' => {
                return Ok(LoggedIn {
                    stream,
                    params,
                    cancel_key,
                    notices,
                });
            }
            b'E' => return Err(refused(&body)),
            other => {
                return Err(BackendError::Protocol(format!(
                    "unexpected message {:?} before ReadyForQuery",
                    other as char
                )));
            }
        }
    }
}

/// Relay the client's authentication exchange with Postgres unchanged (passthrough
/// roles). Authentication failures are reported as `Refused` with SQLSTATE 28xxx so the
/// caller can answer with the generic refusal.
pub async fn passthrough_login<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    addr: &BackendAddr,
    params: &[(&str, &str)],
    timeout: Duration,
) -> Result<LoggedIn, BackendError> {
    let run = async {
        let mut stream = connect(addr).await?;
        write(&mut stream, &pgwire::startup_message(params)).await?;
        loop {
            let (tag, body) = pgwire::read_message(&mut stream, MAX_LOGIN_MESSAGE).await?;
            match tag {
                b'R' => {
                    if matches!(decode::authentication(&body)?, decode::Authentication::Ok) {
                        return finish_login(stream).await;
                    }
                    client
                        .write_all(&raw_message(b'R', &body))
                        .await
                        .map_err(|e| BackendError::Protocol(format!("client: {e}")))?;
                    client
                        .flush()
                        .await
                        .map_err(|e| BackendError::Protocol(format!("client: {e}")))?;
                    // SASLFinal needs no answer; every other request does.
                    if matches!(
                        decode::authentication(&body)?,
                        decode::Authentication::SaslFinal(_)
                    ) {
                        continue;
                    }
                    let (ctag, cbody) =
                        pgwire::read_message(client, pgwire::MAX_AUTH_MESSAGE_LEN).await?;
                    if ctag != b'p' {
                        return Err(BackendError::Protocol(format!(
                            "client sent {:?} during authentication",
                            ctag as char
                        )));
                    }
                    write(&mut stream, &raw_message(b'p', &cbody)).await?;
                }
                b'E' => return Err(refused(&body)),
                b'N' | b'v' => continue,
                other => {
                    return Err(BackendError::Protocol(format!(
                        "unexpected message {:?} during login",
                        other as char
                    )));
                }
            }
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout(timeout)),
    }
}

fn password_for<'a>(
    method: BackendMethod,
    password: Option<&'a Secret>,
    asked: &str,
) -> Result<&'a [u8], BackendError> {
    match (method, password) {
        (BackendMethod::Trust, _) | (_, None) => Err(BackendError::Method(format!(
            "{asked} (configure backend.method and the backend password)"
        ))),
        (_, Some(p)) => Ok(p.expose()),
    }
}

fn refused(body: &[u8]) -> BackendError {
    let fields = decode::error_fields(body).unwrap_or_default();
    let get = |t: u8| {
        fields
            .iter()
            .find(|(f, _)| *f == t)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    };
    BackendError::Refused {
        code: get(b'C'),
        message: get(b'M'),
        raw: raw_message(b'E', body),
    }
}

/// A typed message re-assembled from its tag and body.
pub fn raw_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

async fn write(stream: &mut BackendStream, bytes: &[u8]) -> Result<(), BackendError> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| BackendError::Protocol(format!("writing to Postgres: {e}")))
}

/// Forward a cancel request to Postgres.
pub async fn cancel(addr: &BackendAddr, pid: i32, key: &[u8]) -> std::io::Result<()> {
    let mut s = BackendStream::connect(addr).await?;
    s.write_all(&pgwire::cancel_request(pid, key)).await?;
    s.flush().await?;
    // Postgres closes the connection after processing the request.
    let mut buf = [0u8; 1];
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await;
    Ok(())
}
