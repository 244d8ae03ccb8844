//! A real, temporary PostgreSQL server for end-to-end tests.
//!
//! [`TempPostgres::start`] runs `initdb` on a fresh data directory, starts `postgres` on a free
//! 127.0.0.1 port with a private unix-socket directory, and waits until it accepts connections.
//! Every instance has its own temporary directory and port, so tests may run in parallel, each
//! with its own cluster. Dropping the [`TempPostgres`] stops the server (fast shutdown) and
//! removes the temporary directory.
//!
//! # Running as root
//!
//! `initdb` and `postgres` refuse to run as root. When the test process runs as root, the
//! harness runs them as the unprivileged OS user `postgres` (which must exist): it `chown`s the
//! directories it creates to that user and sets the child's uid/gid through
//! [`std::os::unix::process::CommandExt`] — no `sudo`/`su` needed. As any other user, they run
//! as that user. `psql` is only a client and runs as the current user.
//!
//! # Layout
//!
//! ```text
//! $TMPDIR/teesql-pg-XXXXXX/   (or /tmp/… when $TMPDIR is long; owned by `postgres` when root)
//!     data/         the cluster, unless PgOptions::data_dir is given
//!     sock/         unix_socket_directories (kept short: sun_path is ~107 bytes)
//!     pg_hba.conf   written from PgOptions::hba, used through `-c hba_file=…`
//!     server.log    the server's stdout/stderr (appended to across restarts)
//! ```
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use teesql_tests::postgres::{PgOptions, TempPostgres};
//!
//! let pg = TempPostgres::start(PgOptions::default())?;
//! assert_eq!(pg.psql("postgres", "postgres", "SELECT 1")?, "1");
//! let url = pg.url("postgres", "postgres"); // postgres://postgres@127.0.0.1:PORT/postgres
//! # let _ = url;
//! # Ok(())
//! # }
//! ```
//!
//! The `postgres` child is stopped by `Drop`, which runs on normal returns and on panics that
//! unwind. A process that aborts (or is killed) leaves the server running; it then holds only
//! its temporary directory and port.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};
use tempfile::TempDir;

/// Environment variable naming the directory that holds `initdb` and `postgres`.
pub const PG_BIN_ENV: &str = "TEESQL_PG_BIN";

/// Name of the database superuser created by `initdb -U`.
pub const SUPERUSER: &str = "postgres";

/// The unprivileged OS user the server runs as when the test process is root.
pub const SERVER_OS_USER: &str = "postgres";

/// Server settings always passed as `-c name=value` (before [`PgOptions::settings`], which
/// therefore override them). The harness also passes `unix_socket_directories` (a directory
/// inside the temp dir) and `hba_file` (written from [`PgOptions::hba`]); the server's
/// stdout/stderr go to the log file returned by [`TempPostgres::log_path`].
pub const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "300"),
    ("listen_addresses", "127.0.0.1"),
    ("log_destination", "stderr"),
    ("logging_collector", "off"),
];

/// Where Debian installs the versioned server binaries (`<root>/<version>/bin`).
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

/// How long [`TempPostgres::stop`] waits after SIGINT before sending SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a start is tried when it failed for a passing reason (port taken, shared
/// memory still attached by a killed server's processes).
const START_ATTEMPTS: usize = 5;

/// How many lines of the server log an error carries.
const LOG_TAIL_LINES: usize = 40;

/// Errors from the harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// Neither `$TEESQL_PG_BIN`, nor `PATH`, nor `/usr/lib/postgresql/*/bin` has the server.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found: install Debian's postgresql package (apt-get install postgresql) or set TEESQL_PG_BIN"
    )]
    BinariesNotFound,
    /// Running as root, but there is no `postgres` OS user to run the server as.
    #[error(
        "running as root, but the OS user `postgres` (which initdb and postgres must run as) does not exist: install Debian's postgresql package or run `useradd --system --user-group postgres`"
    )]
    NoServerUser,
    /// An I/O error, with what the harness was doing.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The given data directory cannot be used.
    #[error("{0}")]
    DataDir(String),
    /// `initdb` failed.
    #[error("initdb failed ({status}):\n{output}{hint}")]
    Initdb {
        /// Exit status of initdb.
        status: String,
        /// initdb's stdout and stderr.
        output: String,
        /// A hint about directory permissions, or empty.
        hint: String,
    },
    /// The server did not come up.
    #[error("PostgreSQL failed to start: {reason}{hint}\n--- server log (tail) ---\n{log_tail}")]
    Start {
        /// What went wrong.
        reason: String,
        /// A hint about directory permissions, or empty.
        hint: String,
        /// The last lines the server logged during this attempt.
        log_tail: String,
    },
    /// `psql` exited with an error.
    #[error("psql as user {user:?} on database {db:?} failed ({status}): {stderr}")]
    Psql {
        /// The role psql connected as.
        user: String,
        /// The database psql connected to.
        db: String,
        /// psql's exit status.
        status: String,
        /// psql's stderr.
        stderr: String,
    },
}

/// Wraps an [`io::Error`] with what the harness was doing.
fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> PgError {
    let context = context.into();
    move |source| PgError::Io { context, source }
}

/// Where the PostgreSQL server binaries are: `$TEESQL_PG_BIN`, else the directory of `initdb` on
/// `PATH` (the directory of the file it links to, if that has `postgres` too), else the highest
/// `/usr/lib/postgresql/*/bin`.
///
/// A set but unusable `$TEESQL_PG_BIN` is an error rather than a reason to look elsewhere.
pub fn pg_bin_dir() -> Result<PathBuf, PgError> {
    find_pg_bin_dir(
        std::env::var_os(PG_BIN_ENV),
        std::env::var_os("PATH"),
        Path::new(DEBIAN_PG_ROOT),
    )
}

/// [`pg_bin_dir`] with its inputs as parameters (so tests need not touch the environment).
fn find_pg_bin_dir(
    env_value: Option<OsString>,
    path_var: Option<OsString>,
    debian_root: &Path,
) -> Result<PathBuf, PgError> {
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(value);
        return if has_server_binaries(&dir) {
            Ok(dir)
        } else {
            Err(PgError::BinariesNotFound)
        };
    }
    if let Some(path_var) = path_var {
        for dir in std::env::split_paths(&path_var) {
            let initdb = dir.join("initdb");
            if !initdb.is_file() {
                continue;
            }
            // Prefer the directory of the real initdb (e.g. /usr/local/bin/initdb ->
            // /usr/lib/postgresql/15/bin/initdb): psql and friends are there too.
            let real_dir = fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .filter(|d| has_server_binaries(d));
            if let Some(real_dir) = real_dir {
                return Ok(real_dir);
            }
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
        }
    }
    highest_versioned_bin(debian_root).ok_or(PgError::BinariesNotFound)
}

/// Whether `dir` holds both `initdb` and `postgres`.
fn has_server_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// The `bin` directory of the highest version under `root` (`root/15/bin`, `root/9.6/bin`, …).
fn highest_versioned_bin(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// The first `name` found in the directories of `$PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH")?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Options for [`TempPostgres::start`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `pg_hba.conf` lines; default: `local all all trust`, `host all all 127.0.0.1/32 trust`,
    /// `host all all ::1/128 trust`. Written to a file in the temp dir and used through
    /// `-c hba_file=…` (a kept [`data_dir`](Self::data_dir)'s own `pg_hba.conf` is not touched).
    pub hba: Vec<String>,
    /// Extra `-c name=value` settings, passed after [`DEFAULT_SETTINGS`] (fsync=off,
    /// synchronous_commit=off, full_page_writes=off, max_connections=300,
    /// listen_addresses=127.0.0.1, logging to stderr, which goes to the log file) and after the
    /// harness's `unix_socket_directories` and `hba_file`, so they override all of these.
    /// The harness needs TCP on 127.0.0.1 at [`TempPostgres::port`]: do not change `port` or
    /// drop 127.0.0.1 from `listen_addresses`.
    pub settings: Vec<(String, String)>,
    /// Keep the cluster here across runs instead of in the temp dir: created if missing,
    /// `initdb` only if empty, never removed by the harness. When running as root, the
    /// `postgres` OS user must be able to traverse its parent directories (e.g. a directory
    /// under /tmp with mode 0755).
    pub data_dir: Option<PathBuf>,
    /// Port; `None` = a free port chosen by the OS (bind 127.0.0.1:0, read the port, release
    /// it; if the server then finds it taken, another one is chosen, up to 5 times).
    pub port: Option<u16>,
    /// Password for the `postgres` superuser (set with `initdb --pwfile`); `None` = no
    /// password. The default `hba` stays `trust`, so a password only matters with `hba` lines
    /// that ask for one; [`TempPostgres::psql`] sends it (as `PGPASSWORD`) whenever it connects
    /// as `postgres`, so the harness's own calls work with `scram-sha-256`/`md5`/`password`
    /// lines for the superuser too.
    pub superuser_password: Option<String>,
    /// How long [`TempPostgres::start`] and [`TempPostgres::restart`] wait for the server to
    /// accept connections (each attempt); default 60 s.
    pub start_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            hba: vec![
                "local all all trust".to_owned(),
                "host all all 127.0.0.1/32 trust".to_owned(),
                "host all all ::1/128 trust".to_owned(),
            ],
            settings: Vec::new(),
            data_dir: None,
            port: None,
            superuser_password: None,
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// uid/gid the server processes switch to (only when the test process is root).
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// `Some(postgres user)` when running as root, `None` otherwise.
fn server_run_as() -> Result<Option<RunAs>, PgError> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    match User::from_name(SERVER_OS_USER) {
        Ok(Some(user)) => Ok(Some(RunAs {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        Ok(None) => Err(PgError::NoServerUser),
        Err(errno) => Err(PgError::Io {
            context: format!("looking up the OS user `{SERVER_OS_USER}`"),
            source: io::Error::from(errno),
        }),
    }
}

/// Makes `path` belong to the server's OS user (when running as root).
fn give_to(path: &Path, run_as: Option<RunAs>) -> Result<(), PgError> {
    match run_as {
        Some(r) => std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid)).map_err(io_err(
            format!("chown {} to {SERVER_OS_USER}", path.display()),
        )),
        None => Ok(()),
    }
}

/// Runs `cmd` as the server's OS user (when running as root).
fn run_as_server_user(cmd: &mut Command, run_as: Option<RunAs>) {
    if let Some(r) = run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
}

/// When running as root: a hint naming the first ancestor of `path` the `postgres` OS user
/// cannot traverse (the usual cause of initdb/postgres "Permission denied"), else empty.
fn access_hint(path: &Path, run_as: Option<RunAs>) -> String {
    let Some(r) = run_as else {
        return String::new();
    };
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    for dir in path.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        let mode = meta.permissions().mode();
        let traversable = (meta.uid() == r.uid && mode & 0o100 != 0)
            || (meta.gid() == r.gid && mode & 0o010 != 0)
            || mode & 0o001 != 0;
        if !traversable {
            return format!(
                "\nhint: the OS user `{SERVER_OS_USER}` (uid {}) cannot traverse {} (mode {:o}, owner uid {}): \
                 make it traversable (chmod o+x) or use another directory",
                r.uid,
                dir.display(),
                mode & 0o7777,
                meta.uid()
            );
        }
    }
    String::new()
}

/// A port the OS reports free on 127.0.0.1, never handed out before by this process.
fn pick_free_port() -> Result<u16, PgError> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io_err("binding 127.0.0.1:0 to find a free port"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("reading the port of 127.0.0.1:0"))?
            .port();
        drop(listener);
        if HANDED_OUT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(PgError::Io {
        context: "finding a free port".to_owned(),
        source: io::Error::new(io::ErrorKind::AddrInUse, "no new free port in 100 tries"),
    })
}

/// Base for the runtime temp dir: `$TMPDIR`, unless it is so long that the socket path
/// (`…/teesql-pg-XXXXXX/sock/.s.PGSQL.65535`) could exceed sun_path; then /tmp.
fn runtime_base() -> PathBuf {
    let base = std::env::temp_dir();
    if base.is_absolute() && base.as_os_str().len() <= 60 {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

/// Whether the cluster at `dir` must be created: creates `dir` if missing and, if it is empty,
/// hands it to the server user with mode 0700. A non-empty `dir` must hold a cluster.
fn prepare_data_dir(dir: &Path, run_as: Option<RunAs>) -> Result<bool, PgError> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let empty = fs::read_dir(dir)
        .map_err(io_err(format!("reading {}", dir.display())))?
        .next()
        .is_none();
    if empty {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod 0700 {}", dir.display())))?;
        give_to(dir, run_as)?;
        Ok(true)
    } else if dir.join("PG_VERSION").is_file() {
        Ok(false)
    } else {
        Err(PgError::DataDir(format!(
            "{} is neither empty nor a PostgreSQL data directory (it has no PG_VERSION)",
            dir.display()
        )))
    }
}

/// Whether `postmaster.pid` in `data_dir` belongs to `pid` and says the server is ready.
fn postmaster_ready(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    // Line 1: the postmaster's pid; line 8: its status ("starting", "ready", "stopping", …).
    lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
        && lines.get(7).map(|l| l.trim()) == Some("ready")
}

/// Whether something on 127.0.0.1:`port` answers a PostgreSQL SSLRequest with 'N' or 'S'.
fn ssl_probe(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
        || stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .is_err()
        || stream
            .write_all(&teesql_sidecar::pgwire::ssl_request())
            .is_err()
    {
        return false;
    }
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).is_ok() && matches!(answer[0], b'N' | b'S')
}

/// The log file's current length (where the next attempt's output starts).
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The contents of `path` from byte `offset` on (lossy UTF-8; empty if unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    let opened = fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        Ok(file)
    });
    if let Ok(mut file) = opened {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether a failed start's log says the port was taken.
fn port_conflict(log: &str) -> bool {
    log.contains("Address already in use")
}

/// Whether a failed start's log says processes of a killed server still hold its shared memory
/// (they exit soon after noticing the postmaster is gone).
fn shared_memory_in_use(log: &str) -> bool {
    log.contains("pre-existing shared memory block")
}

/// Quotes a libpq key/value connection-string value when needed.
fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\' || c == '=');
    if plain {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A running (or stopped) temporary PostgreSQL server. See the [module docs](self).
pub struct TempPostgres {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The unix socket directory (`unix_socket_directories`).
    pub socket_dir: PathBuf,
    /// The cluster's data directory.
    pub data_dir: PathBuf,
    bin_dir: PathBuf,
    runtime_dir: PathBuf,
    log_path: PathBuf,
    hba_path: PathBuf,
    settings: Vec<(String, String)>,
    superuser_password: Option<String>,
    start_timeout: Duration,
    run_as: Option<RunAs>,
    ran_initdb: bool,
    child: Option<Child>,
    /// Removed when dropped, after `Drop::drop` has stopped the server; declared last.
    _runtime: TempDir,
}

impl std::fmt::Debug for TempPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempPostgres")
            .field("port", &self.port)
            .field("socket_dir", &self.socket_dir)
            .field("data_dir", &self.data_dir)
            .field("bin_dir", &self.bin_dir)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl TempPostgres {
    /// Creates the cluster (`initdb --auth=trust -U postgres -E UTF8 --locale=C --no-sync`,
    /// plus `--pwfile` for [`PgOptions::superuser_password`]) unless a kept
    /// [`PgOptions::data_dir`] already holds one, starts `postgres`, and waits until it accepts
    /// connections: its `postmaster.pid` says `ready` and 127.0.0.1:`port` answers an
    /// SSLRequest. When running as root, `initdb` and `postgres` run as the OS user `postgres`.
    ///
    /// On failure the error carries initdb's output or the tail of the server log.
    pub fn start(opts: PgOptions) -> Result<Self, PgError> {
        let bin_dir = pg_bin_dir()?;
        let run_as = server_run_as()?;

        let runtime = tempfile::Builder::new()
            .prefix("teesql-pg-")
            .tempdir_in(runtime_base())
            .map_err(io_err("creating the temporary directory"))?;
        let runtime_dir = runtime.path().to_path_buf();
        give_to(&runtime_dir, run_as)?;

        let socket_dir = runtime_dir.join("sock");
        fs::create_dir(&socket_dir)
            .map_err(io_err(format!("creating {}", socket_dir.display())))?;
        give_to(&socket_dir, run_as)?;

        let log_path = runtime_dir.join("server.log");
        fs::write(&log_path, b"").map_err(io_err(format!("creating {}", log_path.display())))?;

        let hba_path = runtime_dir.join("pg_hba.conf");
        let mut hba = opts.hba.join("\n");
        hba.push('\n');
        fs::write(&hba_path, hba).map_err(io_err(format!("writing {}", hba_path.display())))?;
        give_to(&hba_path, run_as)?;

        let data_dir = match &opts.data_dir {
            Some(dir) if dir.is_absolute() => dir.clone(),
            Some(dir) => std::env::current_dir()
                .map_err(io_err("reading the current directory"))?
                .join(dir),
            None => runtime_dir.join("data"),
        };
        let needs_initdb = prepare_data_dir(&data_dir, run_as)?;

        let (port, auto_port) = match opts.port {
            Some(port) => (port, false),
            None => (pick_free_port()?, true),
        };

        let mut pg = TempPostgres {
            port,
            socket_dir,
            data_dir,
            bin_dir,
            runtime_dir,
            log_path,
            hba_path,
            settings: opts.settings,
            superuser_password: opts.superuser_password,
            start_timeout: opts.start_timeout,
            run_as,
            ran_initdb: false,
            child: None,
            _runtime: runtime,
        };
        if needs_initdb {
            pg.initdb()?;
            pg.ran_initdb = true;
        }
        pg.launch(auto_port)?;
        Ok(pg)
    }

    /// Stops the server: SIGINT (fast shutdown), wait up to 10 s, then SIGKILL. Idempotent; a
    /// server that already exited is just reaped.
    pub fn stop(&mut self) -> Result<(), PgError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        if let Ok(raw) = i32::try_from(child.id()) {
            // The child is not reaped yet, so its pid cannot have been reused.
            let _ = kill(Pid::from_raw(raw), Signal::SIGINT);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        child
            .wait()
            .map(drop)
            .map_err(io_err("waiting for postgres after SIGKILL"))
    }

    /// Starts the server again on the same port and data directory (stopping it first if it
    /// is running), for "PostgreSQL went down and came back" tests. Also works after the
    /// server was killed (e.g. SIGKILL to [`pid`](Self::pid)): PostgreSQL runs crash recovery.
    /// With the default `synchronous_commit=off`, commits from the last fraction of a second
    /// before such a kill may be lost; [`stop`](Self::stop) loses nothing.
    pub fn restart(&mut self) -> Result<(), PgError> {
        self.stop()?;
        self.launch(false)
    }

    /// Whether the `postgres` process is alive (it may still be starting or stopping).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The postmaster's pid while the harness has it running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether this instance ran `initdb` (false when a kept data directory was reused).
    pub fn ran_initdb(&self) -> bool {
        self.ran_initdb
    }

    /// The directory the server binaries came from.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// libpq key/value connection string: `host=127.0.0.1 port=… user=… dbname=…`.
    pub fn conninfo(&self, user: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.port,
            conninfo_value(user),
            conninfo_value(db)
        )
    }

    /// `postgres://user@127.0.0.1:port/db` (user and db percent-encoded).
    pub fn url(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            url_encode(user),
            self.port,
            url_encode(db)
        )
    }

    /// Runs `sql` with the real `psql -X -v ON_ERROR_STOP=1 -At -c SQL` over TCP as `user` and
    /// returns its stdout without the trailing newline, or an error with its stderr. Connecting
    /// as `postgres`, it sends [`PgOptions::superuser_password`] if one was set; otherwise no
    /// password (see [`psql_with_password`](Self::psql_with_password)).
    pub fn psql(&self, user: &str, db: &str, sql: &str) -> Result<String, PgError> {
        let password = if user == SUPERUSER {
            self.superuser_password.as_deref()
        } else {
            None
        };
        self.psql_with_password(user, password, db, sql)
    }

    /// Like [`psql`](Self::psql), with `password` passed as `PGPASSWORD` (`None`: none). psql
    /// runs with every `PG*` variable of the test process removed and `PGPASSFILE` pointing at
    /// a missing file, so neither the environment nor `~/.pgpass` supplies a password.
    pub fn psql_with_password(
        &self,
        user: &str,
        password: Option<&str>,
        db: &str,
        sql: &str,
    ) -> Result<String, PgError> {
        let mut cmd = Command::new(Self::psql_path());
        for (key, _) in std::env::vars_os() {
            if key.as_bytes().starts_with(b"PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("PGPASSFILE", self.runtime_dir.join("no-such-pgpass"))
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGCLIENTENCODING", "UTF8")
            .env("LC_ALL", "C");
        if let Some(password) = password {
            cmd.env("PGPASSWORD", password);
        }
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql, "-d"])
            .arg(self.conninfo(user, db))
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .map_err(io_err(format!("running {}", Self::psql_path().display())))?;
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            Ok(stdout.strip_suffix('\n').unwrap_or(&stdout).to_owned())
        } else {
            Err(PgError::Psql {
                user: user.to_owned(),
                db: db.to_owned(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_owned(),
            })
        }
    }

    /// The `psql` binary: `psql` in [`pg_bin_dir`], else the first on `PATH`, else plain
    /// `"psql"`.
    pub fn psql_path() -> PathBuf {
        pg_bin_dir()
            .ok()
            .map(|dir| dir.join("psql"))
            .filter(|p| p.is_file())
            .or_else(|| find_on_path("psql"))
            .unwrap_or_else(|| PathBuf::from("psql"))
    }

    /// The server log so far (all starts of this instance).
    pub fn log(&self) -> String {
        read_from(&self.log_path, 0)
    }

    /// Runs initdb on the (empty) data directory.
    fn initdb(&self) -> Result<(), PgError> {
        let initdb = self.bin_dir.join("initdb");
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "--auth=trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(&self.runtime_dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        let pwfile = self.runtime_dir.join("superuser-password");
        if let Some(password) = &self.superuser_password {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pwfile)
                .map_err(io_err(format!("creating {}", pwfile.display())))?;
            writeln!(file, "{password}")
                .map_err(io_err(format!("writing {}", pwfile.display())))?;
            give_to(&pwfile, self.run_as)?;
            cmd.arg(format!("--pwfile={}", pwfile.display()));
        }
        run_as_server_user(&mut cmd, self.run_as);
        let result = cmd.output();
        if self.superuser_password.is_some() {
            let _ = fs::remove_file(&pwfile);
        }
        let out = result.map_err(|source| PgError::Io {
            context: format!(
                "running {}{}",
                initdb.display(),
                access_hint(&self.data_dir, self.run_as)
            ),
            source,
        })?;
        if out.status.success() {
            return Ok(());
        }
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        Err(PgError::Initdb {
            status: out.status.to_string(),
            output: tail(&output, LOG_TAIL_LINES),
            hint: access_hint(&self.data_dir, self.run_as),
        })
    }

    /// Starts the server. A start that failed for a passing reason is tried again (up to 5
    /// times): a port found taken is replaced by a new one if `new_port_on_conflict` (else the
    /// same port is tried again after a pause), and the shared memory of a killed server's
    /// lingering processes is waited out.
    fn launch(&mut self, new_port_on_conflict: bool) -> Result<(), PgError> {
        let mut attempt = 1;
        loop {
            let offset = file_len(&self.log_path);
            let err = match self.spawn_and_wait(offset) {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            let log = read_from(&self.log_path, offset);
            let retry = matches!(err, PgError::Start { .. })
                && attempt < START_ATTEMPTS
                && (port_conflict(&log) || shared_memory_in_use(&log));
            if !retry {
                return Err(err);
            }
            if new_port_on_conflict && port_conflict(&log) {
                self.port = pick_free_port()?;
            } else {
                sleep(Duration::from_millis(300));
            }
            attempt += 1;
        }
    }

    /// The `-c` settings for the server, in order (later ones win).
    fn server_settings(&self) -> Vec<(String, String)> {
        let mut settings: Vec<(String, String)> = DEFAULT_SETTINGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        settings.push((
            "unix_socket_directories".to_owned(),
            self.socket_dir.display().to_string(),
        ));
        settings.push(("hba_file".to_owned(), self.hba_path.display().to_string()));
        settings.extend(self.settings.iter().cloned());
        settings
    }

    /// Spawns `postgres` and waits until it is ready; `log_offset` is where its log starts.
    fn spawn_and_wait(&mut self, log_offset: u64) -> Result<(), PgError> {
        let log = OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .map_err(io_err(format!("opening {}", self.log_path.display())))?;
        let log_for_stderr = log
            .try_clone()
            .map_err(io_err("duplicating the log file handle"))?;
        let postgres = self.bin_dir.join("postgres");
        let mut cmd = Command::new(&postgres);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string());
        for (name, value) in self.server_settings() {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.current_dir(&self.data_dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr);
        run_as_server_user(&mut cmd, self.run_as);
        let child = cmd.spawn().map_err(|source| PgError::Io {
            context: format!(
                "starting {}{}",
                postgres.display(),
                access_hint(&self.data_dir, self.run_as)
            ),
            source,
        })?;
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + self.start_timeout;
        loop {
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Ok(None)) => None,
                Some(Err(e)) => Some(format!("cannot check the postgres process: {e}")),
                None => Some("the postgres process is gone".to_owned()),
            };
            if let Some(status) = exited {
                self.child = None;
                return Err(self.start_error(
                    format!("postgres exited during startup ({status})"),
                    log_offset,
                ));
            }
            if postmaster_ready(&self.data_dir, pid) && ssl_probe(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.stop();
                return Err(self.start_error(
                    format!(
                        "not accepting connections on 127.0.0.1:{} after {:?}",
                        self.port, self.start_timeout
                    ),
                    log_offset,
                ));
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// A [`PgError::Start`] with the tail of the log written since `log_offset`.
    fn start_error(&self, reason: String, log_offset: u64) -> PgError {
        let since = read_from(&self.log_path, log_offset);
        let log = if since.trim().is_empty() {
            self.log()
        } else {
            since
        };
        PgError::Start {
            reason,
            hint: access_hint(&self.data_dir, self.run_as),
            log_tail: tail(&log, LOG_TAIL_LINES),
        }
    }
}

impl Drop for TempPostgres {
    /// Stops the server; the temporary directory (with the data directory, unless it was a
    /// kept [`PgOptions::data_dir`]) is removed right after.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_default() -> TempPostgres {
        match TempPostgres::start(PgOptions::default()) {
            Ok(pg) => pg,
            Err(e) => panic!("start failed: {e}"),
        }
    }

    fn sql(pg: &TempPostgres, query: &str) -> String {
        match pg.psql(SUPERUSER, "postgres", query) {
            Ok(out) => out,
            Err(e) => panic!("psql {query:?} failed: {e}\nserver log:\n{}", pg.log()),
        }
    }

    #[test]
    fn select_one_and_table_round_trip() {
        let mut pg = start_default();
        assert!(pg.is_running());
        assert_eq!(sql(&pg, "SELECT 1"), "1");
        sql(
            &pg,
            "CREATE TABLE t (id int PRIMARY KEY, name text); \
             INSERT INTO t VALUES (1, 'alice'), (2, 'bob')",
        );
        assert_eq!(
            sql(&pg, "SELECT id, name FROM t ORDER BY id"),
            "1|alice\n2|bob"
        );
        assert_eq!(sql(&pg, "SHOW fsync"), "off");
        assert_eq!(sql(&pg, "SHOW max_connections"), "300");
        assert_eq!(sql(&pg, "SHOW server_encoding"), "UTF8");
        assert!(pg.ran_initdb());
        assert!(pg.socket_dir.join(format!(".s.PGSQL.{}", pg.port)).exists());
        assert!(
            pg.log().contains("ready to accept connections"),
            "{}",
            pg.log()
        );
        assert_eq!(
            pg.conninfo("postgres", "postgres"),
            format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                pg.port
            )
        );
        assert_eq!(
            pg.url("postgres", "my db"),
            format!("postgres://postgres@127.0.0.1:{}/my%20db", pg.port)
        );
        // SQL errors come back as errors carrying psql's stderr.
        match pg.psql(SUPERUSER, "postgres", "SELECT * FROM no_such_table") {
            Err(PgError::Psql { stderr, .. }) => assert!(stderr.contains("no_such_table")),
            other => panic!("expected a psql error, got {other:?}"),
        }
    }

    #[test]
    fn two_clusters_at_once() {
        let a = std::thread::spawn(start_default);
        let b = start_default();
        let a = match a.join() {
            Ok(pg) => pg,
            Err(_) => panic!("starting cluster a panicked"),
        };
        assert_ne!(a.port, b.port);
        assert_ne!(a.data_dir, b.data_dir);
        assert_ne!(a.socket_dir, b.socket_dir);
        sql(
            &a,
            "CREATE TABLE which (v text); INSERT INTO which VALUES ('a')",
        );
        sql(
            &b,
            "CREATE TABLE which (v text); INSERT INTO which VALUES ('b')",
        );
        assert_eq!(sql(&a, "SELECT v FROM which"), "a");
        assert_eq!(sql(&b, "SELECT v FROM which"), "b");
    }

    #[test]
    fn stop_then_restart_keeps_data() {
        let mut pg = start_default();
        sql(
            &pg,
            "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)",
        );
        let port = pg.port;
        let first_pid = pg.pid();

        pg.stop().unwrap();
        assert!(!pg.is_running());
        assert!(pg.pid().is_none());
        assert!(pg.psql(SUPERUSER, "postgres", "SELECT 1").is_err());
        pg.stop().unwrap(); // idempotent

        pg.restart().unwrap();
        assert!(pg.is_running());
        assert_eq!(pg.port, port);
        assert_ne!(pg.pid(), first_pid);
        assert_eq!(sql(&pg, "SELECT v FROM kept"), "42");

        // restart() of a running server stops it first.
        pg.restart().unwrap();
        assert_eq!(sql(&pg, "SELECT v FROM kept"), "42");
    }

    #[test]
    fn restart_after_sigkill() {
        let mut pg = start_default();
        sql(
            &pg,
            "SET synchronous_commit = on; CREATE TABLE crash (v int); INSERT INTO crash VALUES (7)",
        );
        let pid = i32::try_from(pg.pid().unwrap()).unwrap();
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pg.is_running() && Instant::now() < deadline {
            sleep(Duration::from_millis(10));
        }
        assert!(!pg.is_running());
        assert!(pg.psql(SUPERUSER, "postgres", "SELECT 1").is_err());
        pg.restart().unwrap();
        assert_eq!(sql(&pg, "SELECT v FROM crash"), "7");
    }

    #[test]
    fn custom_hba_requires_password_for_other_roles() {
        let opts = PgOptions {
            hba: vec![
                "local all postgres trust".to_owned(),
                "host all postgres 127.0.0.1/32 trust".to_owned(),
                "host all all 127.0.0.1/32 scram-sha-256".to_owned(),
            ],
            ..PgOptions::default()
        };
        let pg = TempPostgres::start(opts).unwrap();
        sql(&pg, "CREATE ROLE alice LOGIN PASSWORD 'alice-secret'");

        assert_eq!(
            pg.psql_with_password(
                "alice",
                Some("alice-secret"),
                "postgres",
                "SELECT current_user"
            )
            .unwrap(),
            "alice"
        );
        let no_password = pg.psql("alice", "postgres", "SELECT 1");
        assert!(
            matches!(&no_password, Err(PgError::Psql { stderr, .. }) if stderr.contains("password")),
            "{no_password:?}"
        );
        assert!(
            pg.psql_with_password("alice", Some("wrong"), "postgres", "SELECT 1")
                .is_err()
        );

        // The same with psql run by hand, PGPASSWORD in its environment.
        let run = |password: Option<&str>| {
            let mut cmd = Command::new(TempPostgres::psql_path());
            cmd.env_remove("PGPASSWORD")
                .env("PGPASSFILE", "/nonexistent")
                .args(["-X", "-At", "-c", "SELECT 7", "-d"])
                .arg(pg.conninfo("alice", "postgres"))
                .stdin(Stdio::null());
            if let Some(p) = password {
                cmd.env("PGPASSWORD", p);
            }
            cmd.output().unwrap()
        };
        let ok = run(Some("alice-secret"));
        assert!(ok.status.success(), "{ok:?}");
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "7");
        assert!(!run(None).status.success());
    }

    #[test]
    fn superuser_password_with_scram_hba() {
        let opts = PgOptions {
            hba: vec![
                "local all all scram-sha-256".to_owned(),
                "host all all 127.0.0.1/32 scram-sha-256".to_owned(),
            ],
            superuser_password: Some("super secret".to_owned()),
            ..PgOptions::default()
        };
        let pg = TempPostgres::start(opts).unwrap();
        // The harness sends the superuser password itself.
        assert_eq!(sql(&pg, "SELECT current_user"), "postgres");
        assert!(
            pg.psql_with_password(SUPERUSER, None, "postgres", "SELECT 1")
                .is_err()
        );
        assert!(
            pg.psql_with_password(SUPERUSER, Some("nope"), "postgres", "SELECT 1")
                .is_err()
        );
        // The password file given to initdb is gone.
        assert!(!pg.runtime_dir.join("superuser-password").exists());
    }

    #[test]
    fn data_dir_persists_across_instances() {
        let keep = tempfile::Builder::new()
            .prefix("teesql-pg-keep-")
            .tempdir_in("/tmp")
            .unwrap();
        // When running as root, the `postgres` OS user must be able to traverse the parent.
        fs::set_permissions(keep.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let data_dir = keep.path().join("cluster");
        let opts = PgOptions {
            data_dir: Some(data_dir.clone()),
            ..PgOptions::default()
        };

        let first = TempPostgres::start(opts.clone()).unwrap();
        assert!(first.ran_initdb());
        assert_eq!(first.data_dir, data_dir);
        sql(
            &first,
            "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')",
        );
        let system_id = sql(&first, "SELECT system_identifier FROM pg_control_system()");
        let first_port = first.port;
        drop(first);
        assert!(!ssl_probe(first_port), "server still answering after drop");
        assert!(
            data_dir.join("PG_VERSION").is_file(),
            "kept data dir was removed"
        );

        let second = TempPostgres::start(opts).unwrap();
        assert!(!second.ran_initdb());
        assert_eq!(sql(&second, "SELECT v FROM kept"), "still here");
        assert_eq!(
            sql(&second, "SELECT system_identifier FROM pg_control_system()"),
            system_id,
            "initdb was re-run"
        );
    }

    #[test]
    fn non_cluster_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("stray"), b"x").unwrap();
        let err = TempPostgres::start(PgOptions {
            data_dir: Some(dir.path().to_path_buf()),
            ..PgOptions::default()
        })
        .unwrap_err();
        assert!(matches!(err, PgError::DataDir(_)), "{err}");
    }

    #[test]
    fn untraversable_data_dir_parent_is_explained() {
        if server_run_as().unwrap().is_none() {
            return; // only root switches to the `postgres` OS user
        }
        let private = tempfile::tempdir().unwrap(); // owned by root
        fs::set_permissions(private.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let err = TempPostgres::start(PgOptions {
            data_dir: Some(private.path().join("cluster")),
            ..PgOptions::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot traverse"), "{err}");
    }

    #[test]
    fn drop_stops_server_and_removes_temp_dir() {
        let pg = start_default();
        let port = pg.port;
        let data_dir = pg.data_dir.clone();
        let runtime_dir = pg.runtime_dir.clone();
        assert!(data_dir.join("PG_VERSION").is_file());
        drop(pg);
        assert!(!ssl_probe(port));
        assert!(!runtime_dir.exists());
        assert!(!data_dir.exists());
    }

    #[test]
    fn panic_unwinding_stops_server() {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let pg = start_default();
            let _ = tx.send((pg.port, pg.runtime_dir.clone(), pg.pid()));
            panic!("test body panicked while holding the server");
        });
        assert!(handle.join().is_err());
        let (port, runtime_dir, pid) = rx.recv().unwrap();
        assert!(pid.is_some());
        assert!(!ssl_probe(port));
        assert!(!runtime_dir.exists());
    }

    #[test]
    fn server_runs_as_unprivileged_user_when_root() {
        let pg = start_default();
        let pid = pg.pid().unwrap();
        let owner = fs::metadata(format!("/proc/{pid}")).unwrap().uid();
        match server_run_as().unwrap() {
            Some(r) => assert_eq!(owner, r.uid),
            None => assert_eq!(owner, geteuid().as_raw()),
        }
        assert_ne!(owner, 0);
    }

    #[test]
    fn startup_failure_includes_log_tail() {
        let opts = PgOptions {
            settings: vec![("shared_buffers".to_owned(), "lots".to_owned())],
            ..PgOptions::default()
        };
        let err = TempPostgres::start(opts).unwrap_err().to_string();
        assert!(err.contains("exited during startup"), "{err}");
        assert!(err.contains("server log"), "{err}");
        assert!(err.contains("shared_buffers"), "{err}");
    }

    #[test]
    fn explicit_port_in_use_is_reported() {
        let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = holder.local_addr().unwrap().port();
        let err = TempPostgres::start(PgOptions {
            port: Some(port),
            ..PgOptions::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("Address already in use"), "{err}");
    }

    #[test]
    fn missing_bin_dir_gives_one_line_fix() {
        let err = find_pg_bin_dir(
            Some(OsString::from("/nonexistent")),
            std::env::var_os("PATH"),
            Path::new(DEBIAN_PG_ROOT),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "PostgreSQL server binaries (initdb, postgres) not found: install Debian's postgresql \
             package (apt-get install postgresql) or set TEESQL_PG_BIN"
        );
        assert!(!err.contains('\n'));

        // Nothing on PATH and no Debian tree: the same error.
        let err =
            find_pg_bin_dir(None, Some(OsString::new()), Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(err, PgError::BinariesNotFound));
    }

    #[test]
    fn bin_dir_lookup_order() {
        let found = pg_bin_dir().unwrap();
        assert!(has_server_binaries(&found), "{}", found.display());

        // The Debian tree alone.
        let debian = find_pg_bin_dir(None, None, Path::new(DEBIAN_PG_ROOT)).unwrap();
        assert!(has_server_binaries(&debian));

        // An `initdb` symlink on PATH leads to the directory that also has `postgres`.
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(found.join("initdb"), dir.path().join("initdb")).unwrap();
        let via_link = find_pg_bin_dir(
            None,
            Some(dir.path().as_os_str().to_owned()),
            Path::new("/nonexistent"),
        )
        .unwrap();
        let real = fs::canonicalize(found.join("initdb")).unwrap();
        assert_eq!(Some(via_link.as_path()), real.parent());

        // An explicit TEESQL_PG_BIN wins.
        let explicit = find_pg_bin_dir(
            Some(found.as_os_str().to_owned()),
            None,
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(explicit, found);
        assert!(TempPostgres::psql_path().is_file());
    }

    #[test]
    fn conninfo_and_url_escaping() {
        assert_eq!(conninfo_value("plain"), "plain");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value(r"it's\x"), r"'it\'s\\x'");
        assert_eq!(url_encode("a b/c@d"), "a%20b%2Fc%40d");
        assert_eq!(tail("1\n2\n3", 2), "2\n3");
    }
}
