//! What every TeeSQL binary does the same way around its work: log to stderr with a
//! filter, stop on SIGINT or SIGTERM, and show an error with its causes.

/// Log to stderr with `filter` (an `EnvFilter` directive such as `info` or
/// `teesql_sidecar=debug`); an invalid one falls back to `fallback`.
pub fn init_tracing(filter: &str, fallback: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(fallback));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
