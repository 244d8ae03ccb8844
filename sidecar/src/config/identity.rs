//! `[identity]`: the server certificate the guest agent issues.

use std::time::Duration;

use serde::Deserialize;
use teesql_proto::settings::{Env, Problems, first};

use super::{Overrides, defaults, env};

/// The `[identity]` table as written; every key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// Certificate subject CN [default: first alt name].
    pub subject: Option<String>,
    /// Subject alternative names of the server certificate [default: localhost, 127.0.0.1].
    pub alt_names: Option<Vec<String>>,
    /// Renew the certificate this often, seconds [default: 3600].
    pub renew_secs: Option<u64>,
    /// Guest agent endpoint [default: DSTACK_SIMULATOR_ENDPOINT, else the dstack socket].
    pub endpoint: Option<String>,
}

/// The `[identity]` settings, checked: what the sidecar asks the guest agent for.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Certificate subject CN; the first alt name unless `identity.subject` is set.
    pub subject: String,
    /// Subject alternative names, never empty (default `localhost`, `127.0.0.1`).
    pub alt_names: Vec<String>,
    /// Certificate renewal period (`identity.renew_secs`, default 1 h, at least 10 s).
    pub renew_every: Duration,
    /// Guest agent endpoint; `None` = `DSTACK_SIMULATOR_ENDPOINT`, else the dstack socket.
    pub endpoint: Option<String>,
}

impl IdentityFile {
    pub(super) fn resolve(
        self,
        e: &dyn Env,
        flags: &mut Overrides,
        p: &mut Problems,
    ) -> IdentityConfig {
        let alt_names = first([
            flags.alt_names.take(),
            e.var(env::SIDECAR_ALT_NAMES)
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
            self.alt_names,
        ])
        .unwrap_or_else(|| defaults::ALT_NAMES.map(String::from).to_vec());
        if alt_names.is_empty() {
            p.report("identity.alt_names", "at least one name is needed");
        }
        IdentityConfig {
            subject: self
                .subject
                .unwrap_or_else(|| alt_names.first().cloned().unwrap_or_default()),
            renew_every: Duration::from_secs(p.at_least(
                "identity.renew_secs",
                self.renew_secs.unwrap_or(defaults::RENEW_SECS),
                defaults::MIN_RENEW_SECS,
            )),
            endpoint: self.endpoint,
            alt_names,
        }
    }
}
