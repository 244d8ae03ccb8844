//! Which startup parameters a client may send, and which reach Postgres.
//!
//! A StartupMessage's parameters become settings of the Postgres session the sidecar
//! opens for the client. Only settings a client may change anyway (`SET`) are passed on;
//! `options` (`-c name=value` for any setting, command-line switches) is refused, as are
//! unknown parameters, with an error that names them: a driver that needs one can have it
//! added by the operator (`backend.forward_parameters`), or accepted and dropped
//! (`backend.ignore_parameters`), as PgBouncer's `ignore_startup_parameters` does.

/// Why a client's startup parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParameterError {
    /// A name or value with control characters: refused before anything logs it.
    #[error("startup parameter {0:?} has control characters")]
    ControlCharacters(String),
    /// Neither passed on nor ignored (`options` among them).
    #[error("startup parameter {0:?} refused")]
    Refused(String),
}

/// Passed on to Postgres by default. Postgres matches setting names without regard to
/// case; so does this list.
pub const FORWARDED_BY_DEFAULT: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "bytea_output",
];

/// Handled by the sidecar itself, never passed on as settings.
const HANDLED: &[&str] = &["user", "database", "replication"];

/// The allowlist.
#[derive(Debug, Clone)]
pub struct StartupParameters {
    forwarded: Vec<String>,
    ignored: Vec<String>,
}

impl Default for StartupParameters {
    fn default() -> Self {
        Self {
            forwarded: FORWARDED_BY_DEFAULT
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            ignored: Vec::new(),
        }
    }
}

/// What a StartupMessage's parameters come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Parameters to pass on, in the client's order.
    pub forwarded: Vec<(String, String)>,
    /// Protocol options (`_pq_.*`) the client asked for: none is supported, which the
    /// sidecar says with NegotiateProtocolVersion, as Postgres does.
    pub protocol_options: Vec<String>,
}

/// A parameter named in `backend.forward_parameters` that cannot be passed on
/// (`options`, one the sidecar handles itself, or a protocol option).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend.forward_parameters: {name:?} cannot be passed on")]
pub struct NotForwardable {
    /// The name as given.
    pub name: String,
}

impl StartupParameters {
    /// The defaults plus `extra` forwarded names and `ignored` ones. `options` cannot be
    /// forwarded.
    pub fn new(extra: Vec<String>, ignored: Vec<String>) -> Result<Self, NotForwardable> {
        let mut p = Self::default();
        for name in extra {
            let lower = name.to_ascii_lowercase();
            if lower == "options" || HANDLED.contains(&lower.as_str()) || lower.starts_with("_pq_.")
            {
                return Err(NotForwardable { name });
            }
            p.forwarded.push(lower);
        }
        p.ignored = ignored.iter().map(|n| n.to_ascii_lowercase()).collect();
        Ok(p)
    }

    /// Check every parameter; the first one refused is the error.
    pub fn check(&self, params: &[(String, String)]) -> Result<Checked, ParameterError> {
        let mut forwarded = Vec::new();
        let mut protocol_options = Vec::new();
        for (name, value) in params {
            if has_control(name) || has_control(value) {
                return Err(ParameterError::ControlCharacters(name.clone()));
            }
            let lower = name.to_ascii_lowercase();
            if name.starts_with("_pq_.") {
                protocol_options.push(name.clone());
                continue;
            }
            if HANDLED.contains(&lower.as_str()) || self.ignored.contains(&lower) {
                continue;
            }
            if self.forwarded.contains(&lower) {
                forwarded.push((name.clone(), value.clone()));
            } else {
                return Err(ParameterError::Refused(name.clone()));
            }
        }
        Ok(Checked {
            forwarded,
            protocol_options,
        })
    }
}

/// Control characters (a newline in a user name would forge a log line).
fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_clients_may_set_are_passed_on_in_any_case() {
        let c = StartupParameters::default()
            .check(&p(&[
                ("user", "u"),
                ("database", "d"),
                ("application_name", "psql"),
                ("client_encoding", "UTF8"),
                ("datestyle", "ISO, MDY"),
                ("_pq_.test", "x"),
            ]))
            .unwrap();
        assert_eq!(
            c.forwarded,
            p(&[
                ("application_name", "psql"),
                ("client_encoding", "UTF8"),
                ("datestyle", "ISO, MDY")
            ])
        );
    }

    #[test]
    fn options_and_unknown_parameters_are_refused_by_name() {
        for name in [
            "options",
            "OPTIONS",
            "session_authorization",
            "role",
            "log_statement",
        ] {
            let e = StartupParameters::default()
                .check(&p(&[("user", "u"), (name, "x")]))
                .unwrap_err();
            assert!(
                matches!(e, ParameterError::Refused(ref n) if n == name),
                "{e}"
            );
        }
        assert!(StartupParameters::new(vec!["options".into()], vec![]).is_err());
        let with = StartupParameters::new(vec!["geqo".into()], vec!["x_driver".into()]).unwrap();
        let c = with
            .check(&p(&[("GEQO", "off"), ("x_driver", "1")]))
            .unwrap();
        assert_eq!(c.forwarded, p(&[("GEQO", "off")]));
    }

    #[test]
    fn control_characters_are_refused_before_anything_logs_them() {
        for (k, v) in [
            ("user", "evil\nFAKE LOG LINE"),
            ("application_name", "a\rb"),
            ("a\u{1b}[31m", "x"),
        ] {
            let e = StartupParameters::default()
                .check(&p(&[(k, v)]))
                .unwrap_err();
            assert!(matches!(e, ParameterError::ControlCharacters(_)), "{e}");
            // The name is shown escaped.
            assert!(!e.to_string().contains('\n') && !e.to_string().contains('\u{1b}'));
        }
    }
}
