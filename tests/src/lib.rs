//! Test harness for TeeSQL's end-to-end tests and the `teesql-dev` local cluster: real
//! processes and real services on loopback ports chosen by the OS.

pub mod agent;
pub mod clients;
pub mod cluster;
pub mod dns;
pub mod forwarders;
pub mod ita;
pub mod postgres;
pub mod tenants;

/// Send the harness's and the services' logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
