//! What every TeeSQL binary does the same way around its work: log to stderr with a
//! filter, stop on SIGINT or SIGTERM, and show an error with its causes.

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the
    /// event's structured fields at the top level, and under `span` the fields of the
    /// span it happened in (a sidecar session's `session_id` and `client.addr`).
    Json,
}

impl LogFormat {
    /// The environment variable both binaries read it from.
    pub const ENV: &'static str = "TEESQL_LOG_FORMAT";

    /// `--log-format` when given, else `TEESQL_LOG_FORMAT`, else text. An unknown value
    /// in the environment is an error naming the variable.
    pub fn resolve(flag: Option<Self>) -> Result<Self, UnknownLogFormat> {
        if let Some(f) = flag {
            return Ok(f);
        }
        match std::env::var(Self::ENV) {
            Err(_) => Ok(Self::Text),
            Ok(v) => <Self as clap::ValueEnum>::from_str(v.trim(), true)
                .map_err(|_| UnknownLogFormat { value: v }),
        }
    }
}

/// `TEESQL_LOG_FORMAT` set to neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{env}={value:?}: expected text or json", env = LogFormat::ENV)]
pub struct UnknownLogFormat {
    /// The variable's value.
    pub value: String,
}

/// Log to stderr with `filter` (an `EnvFilter` directive such as `info` or
/// `teesql_sidecar=debug`); an invalid one falls back to `fallback`.
pub fn init_tracing(filter: &str, fallback: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(fallback));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// An error and each of its causes, `: `-separated (what a message to an operator shows
/// of a transport or database error, whose `Display` alone often says only "error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A metric family described on every scrape (`# HELP`, `# TYPE`), also before its first
/// sample: prometheus-client leaves out families without samples, and a family whose
/// series only come with their first count (denials, renewals, revoked sessions) would
/// look unexported to whoever checks that an alert rule's metric exists.
#[derive(Debug)]
pub struct Described<M>(pub M);

impl<M: prometheus_client::encoding::EncodeMetric> prometheus_client::encoding::EncodeMetric
    for Described<M>
{
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}
