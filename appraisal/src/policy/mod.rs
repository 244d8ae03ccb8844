//! Rego policies (regorus): load a profile, compile once, evaluate with a time limit.
//!
//! A profile is a directory of `*.rego` files and an optional `data.json`, merged at the
//! data root. A profile may extend others with a `profile.toml` (`extends = ["../teesql"]`):
//! the bases load first, and the profile's own data is merged over theirs. Each purpose has
//! a package `teesql.<purpose>` with `allow` (bool) and `deny` (set of `{code, message}`);
//! a decision allows only when `allow` is true and `deny` is empty. A package may also
//! define `grants` (`{"roles": [...], "attributes": {...}}`): what an allowed peer gets,
//! e.g. the Postgres role of its tenant.

pub mod bundle;
mod load;
pub mod testing;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use regorus::utils::limits::ExecutionTimerConfig;
use serde::{Deserialize, Serialize};

pub use load::PolicyFile;

/// Purposes the shipped policies define.
pub const PURPOSES: &[&str] = &["quote", "sidecar", "client", "manifest", "report"];

/// Default time limit for one evaluation.
pub const DEFAULT_EVAL_LIMIT: Duration = Duration::from_millis(250);

/// Why a policy set could not be loaded or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A profile or one of its files could not be read (missing, too large, bad
    /// `profile.toml`, extends too deep), or the set reads `data.…` paths nothing defines.
    #[error("policy directory {path}: {detail}")]
    Load {
        /// The directory or file at fault, as given or as read from disk.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An OPA bundle cannot be read, is not what its signature covers, or breaks its
    /// manifest's roots.
    #[error("policy bundle {location}: {detail}")]
    Bundle {
        /// The bundle's file or URL (empty until the caller names it).
        location: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A Rego file does not parse or compile, or a purpose package fails its trial
    /// evaluation at load.
    #[error("policy {path} does not compile: {detail}")]
    Compile {
        /// `<profile>/<file>` of the Rego file, or the package (`(all)` when unknown).
        path: String,
        /// The regorus error, with its causes.
        detail: String,
    },
    /// A `data.json` (or `testdata/` file) is not a JSON object, or the merged data is
    /// refused (e.g. tenants sharing a Postgres role without `shared_role`).
    #[error("data file {path}: {detail}")]
    Data {
        /// The file's path; `data.json` for the merged data of the whole set.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// No loaded package `teesql.<purpose>` decides the purpose asked for.
    #[error(
        "no policy for purpose {purpose:?}: package teesql.{purpose} is not loaded (loaded: {loaded})"
    )]
    UnknownPurpose {
        /// The purpose asked for.
        purpose: String,
        /// The purposes the set does decide, `, `-separated.
        loaded: String,
    },
    /// The purpose asked for is empty, longer than 64 bytes, or not `[a-z0-9_]+`.
    #[error("purpose {0:?} is not a valid name (lowercase letters, digits and _ only)")]
    BadPurpose(String),
    /// Evaluation failed: a Rego runtime error, the time or VM instruction limit, or
    /// claims that do not serialize.
    #[error("evaluating teesql.{purpose}: {detail}")]
    Eval {
        /// The purpose being decided.
        purpose: String,
        /// The error, with its causes.
        detail: String,
    },
    /// The grants a policy gave fail [`Grants::check`].
    #[error("evaluating teesql.{purpose}: grants: {source}")]
    Grants {
        /// The purpose being decided.
        purpose: String,
        /// What is wrong with them.
        #[source]
        source: GrantsError,
    },
    /// A rule evaluated to a value of the wrong type.
    #[error("teesql.{purpose}.{rule} must be {expected}, got {got}")]
    Shape {
        /// The purpose being decided.
        purpose: String,
        /// `allow`, `deny` or `grants`.
        rule: &'static str,
        /// The type the rule must have, in words.
        expected: &'static str,
        /// The value it had, as JSON, cut at 200 bytes.
        got: String,
    },
}

/// The reason codes the verifier's own code gives (every other code comes from the
/// policies). The README's table of reason codes lists these and every code in
/// `policies/**/*.rego`; a test keeps it so.
pub mod reason_codes {
    /// The evidence cannot be decoded.
    pub const EVIDENCE_MALFORMED: &str = "evidence_malformed";
    /// The policy failed to evaluate (the decision is a denial).
    pub const POLICY_ERROR: &str = "policy_error";
    /// `allow` was not true and the policy gave no reason.
    pub const NOT_ALLOWED: &str = "not_allowed";
    /// Every code above.
    pub const ALL: &[&str] = &[EVIDENCE_MALFORMED, POLICY_ERROR, NOT_ALLOWED];
}

/// One reason a decision denies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct Reason {
    /// Stable, machine-readable code: one of [`reason_codes`] or a code from the policies.
    pub code: String,
    /// Human-readable explanation naming the values at fault; match on `code`, not this.
    pub message: String,
}

/// What a policy grants an allowed peer: Postgres roles it may log in as (the first is
/// chosen for a client that asks for the generic role) and attributes recorded with its
/// session (e.g. its tenant). Bounded and checked before use; a policy that grants
/// anything else fails to decide (a denial).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Postgres roles, lowercase SQL identifiers, at most [`MAX_GRANTED_ROLES`]; the first
    /// is the default. Empty when the policy names none.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Session attributes (e.g. the tenant), keyed by lowercase identifier; values are
    /// text without NUL, at most [`MAX_GRANT_VALUE`] bytes.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// Why grants are refused ([`Grants::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantsError {
    /// More than [`MAX_GRANTED_ROLES`] roles.
    #[error("{count} roles, at most {MAX_GRANTED_ROLES}")]
    TooManyRoles {
        /// How many were granted.
        count: usize,
    },
    /// More than [`MAX_GRANT_ATTRIBUTES`] attributes.
    #[error("{count} attributes, at most {MAX_GRANT_ATTRIBUTES}")]
    TooManyAttributes {
        /// How many were granted.
        count: usize,
    },
    /// A role name that is not a lowercase SQL identifier.
    #[error("role {role:?} is not a lowercase SQL identifier (a-z, 0-9, _; at most 63 bytes)")]
    BadRole {
        /// The role name.
        role: String,
    },
    /// An attribute key that is not a lowercase identifier.
    #[error("attribute {key:?} is not a lowercase identifier (a-z, 0-9, _; at most 63 bytes)")]
    BadAttributeKey {
        /// The key.
        key: String,
    },
    /// An attribute value with a NUL in it, or longer than [`MAX_GRANT_VALUE`] bytes.
    #[error("attribute {key}: the value must be text without NUL, at most {MAX_GRANT_VALUE} bytes")]
    BadAttributeValue {
        /// The attribute's key.
        key: String,
    },
}

/// At most this many granted roles, and this many attributes.
pub const MAX_GRANTED_ROLES: usize = 16;
/// At most this many granted attributes ([`Grants::attributes`]).
pub const MAX_GRANT_ATTRIBUTES: usize = 16;
/// Longest attribute value, bytes.
pub const MAX_GRANT_VALUE: usize = 256;

impl Grants {
    /// Role names and attribute keys are lowercase SQL identifiers (at most 63 bytes,
    /// Postgres' limit); values are text without NUL, at most [`MAX_GRANT_VALUE`] bytes.
    pub fn check(&self) -> Result<(), GrantsError> {
        if self.roles.len() > MAX_GRANTED_ROLES {
            return Err(GrantsError::TooManyRoles {
                count: self.roles.len(),
            });
        }
        if self.attributes.len() > MAX_GRANT_ATTRIBUTES {
            return Err(GrantsError::TooManyAttributes {
                count: self.attributes.len(),
            });
        }
        for r in &self.roles {
            if !is_identifier(r) {
                return Err(GrantsError::BadRole { role: r.clone() });
            }
        }
        for (k, v) in &self.attributes {
            if !is_identifier(k) {
                return Err(GrantsError::BadAttributeKey { key: k.clone() });
            }
            if v.len() > MAX_GRANT_VALUE || v.contains('\0') {
                return Err(GrantsError::BadAttributeValue { key: k.clone() });
            }
        }
        Ok(())
    }

    /// Whether it grants nothing: no role and no attribute.
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty() && self.attributes.is_empty()
    }
}

/// A lowercase SQL identifier: `[a-z_][a-z0-9_]*`, 1 to 63 bytes.
pub fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// What a policy said about one input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `allow` was true and `deny` empty: only then is the input accepted.
    pub allow: bool,
    /// The `deny` set, sorted and deduplicated; a lone `not_allowed` when `allow` was not
    /// true and `deny` was empty; empty exactly when allowed.
    pub reasons: Vec<Reason>,
    /// What the policy grants, when it allowed and defines `grants`.
    pub grants: Option<Grants>,
    /// The `warn` set (sorted, deduplicated) of an allowed decision: what holds now but
    /// an operator must act on (a TCB grace, Intel's next TCB set). Empty when denied.
    pub warnings: Vec<Reason>,
    /// `teesql.<purpose>`.
    pub policy_id: String,
    /// Hash of every file of the loaded set.
    pub policy_hash: String,
}

impl Verdict {
    /// What a caller is told with the decision: the reasons of a denial, the warnings of
    /// an allow.
    pub fn told(&self) -> &[Reason] {
        if self.allow {
            &self.warnings
        } else {
            &self.reasons
        }
    }
}

impl Verdict {
    /// The one way a decision is refused without the policy's word (the evidence did not
    /// decode, the policy could not decide): `policy_id` is the purpose's package, as an
    /// evaluated verdict's is.
    pub fn refusal(purpose: &str, policy_hash: &str, reason: Reason) -> Self {
        Self {
            allow: false,
            reasons: vec![reason],
            grants: None,
            warnings: Vec::new(),
            policy_id: package_of(purpose),
            policy_hash: policy_hash.to_string(),
        }
    }
}

/// The reason of a decision the policy could not make.
pub fn policy_error(e: &PolicyError) -> Reason {
    Reason {
        code: reason_codes::POLICY_ERROR.into(),
        message: format!("the policy could not decide: {e}"),
    }
}

/// The Rego package that decides `purpose`: `teesql.<purpose>`.
pub fn package_of(purpose: &str) -> String {
    format!("teesql.{purpose}")
}

/// A loaded, compiled policy set. Cheap to share.
///
/// Decisions run on regorus' register VM (RVM), compiled once per load: about 4x faster
/// than its tree-walking interpreter, which stays as the reference (`policy test` runs on
/// it, tests compare the two) and as the fallback if a set does not compile for the VM.
#[derive(Clone)]
pub struct PolicySet {
    engine: regorus::Engine,
    vm: Option<VmPrograms>,
    data: regorus::Value,
    eval_limit: Duration,
    packages: Vec<String>,
    files: Vec<PolicyFile>,
    hash: String,
    dirs: Vec<PathBuf>,
    /// The OPA bundle's `revision`, when the set came from a bundle.
    revision: Option<String>,
    /// `data.teesql.manifest_signers`, lowercase: the signers whose manifests' epochs the
    /// verifier remembers.
    manifest_signers: Vec<String>,
}

/// Tenants sharing one Postgres role have only row-level security between them: each
/// sees the other's query text in `pg_stat_activity`, can cancel its backends, and a kept
/// backend may pass from one to the other. A role shared by tenants is refused unless
/// every tenant naming it says `"shared_role": true`.
fn check_tenants(data: &serde_json::Value) -> Result<(), PolicyError> {
    let Some(tenants) = data["teesql"]["tenants"].as_object() else {
        return Ok(());
    };
    let mut by_role: std::collections::BTreeMap<&str, Vec<(&str, bool)>> = Default::default();
    for (name, spec) in tenants {
        if let Some(role) = spec["role"].as_str() {
            let shared = spec["shared_role"].as_bool().unwrap_or(false);
            by_role.entry(role).or_default().push((name, shared));
        }
    }
    for (role, names) in by_role {
        if names.len() > 1 && names.iter().any(|(_, shared)| !shared) {
            let list: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
            return Err(PolicyError::Data {
                path: "data.json".into(),
                detail: format!(
                    "teesql.tenants: tenants {} share the Postgres role {role}: give each tenant a role of its own, or set \"shared_role\": true on each of them (then only row-level security separates them: each sees the other's query text in pg_stat_activity and can cancel its backends)",
                    list.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The VM program with one entry point per purpose.
#[derive(Clone)]
struct VmPrograms {
    program: Arc<Program>,
    purposes: Vec<String>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("hash", &self.hash)
            .field("dirs", &self.dirs)
            .field("packages", &self.packages)
            .field("vm", &self.vm.as_ref().map(|v| &v.purposes))
            .finish()
    }
}

/// Upper bound on VM instructions per decision, besides the time limit.
const MAX_VM_INSTRUCTIONS: usize = 5_000_000;

impl PolicySet {
    /// Load and compile the profiles in `dirs` (later ones merge over earlier ones).
    pub fn load(dirs: &[PathBuf], eval_limit: Duration) -> Result<Self, PolicyError> {
        let loaded = load::load_profiles(dirs)?;
        Self::compile(loaded, dirs, None, eval_limit)
    }

    /// Load and compile an OPA bundle read with [`bundle::read`]; its `revision` goes
    /// with every decision.
    pub fn from_bundle(b: bundle::Bundle, eval_limit: Duration) -> Result<Self, PolicyError> {
        Self::compile(b.loaded, &[], Some(b.revision), eval_limit)
    }

    fn compile(
        loaded: load::Loaded,
        dirs: &[PathBuf],
        revision: Option<String>,
        eval_limit: Duration,
    ) -> Result<Self, PolicyError> {
        let data = regorus::Value::from(loaded.data.clone());
        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(timer(eval_limit));
        for file in loaded.files.iter().filter(|f| f.is_rego()) {
            engine
                .add_policy(file.display_path.clone(), file.contents.clone())
                .map_err(|e| PolicyError::Compile {
                    path: file.display_path.clone(),
                    detail: format!("{e:#}"),
                })?;
        }
        engine
            .add_data(data.clone())
            .map_err(|e| PolicyError::Data {
                path: "data.json".into(),
                detail: format!("{e:#}"),
            })?;
        let mut packages: Vec<String> = engine
            .get_packages()
            .map_err(|e| PolicyError::Compile {
                path: "(all)".into(),
                detail: format!("{e:#}"),
            })?
            .into_iter()
            .map(|p| p.trim_start_matches("data.").to_string())
            .collect();
        packages.sort();
        packages.dedup();
        check_references(&loaded.files, &packages, &loaded.data)?;
        check_tenants(&loaded.data)?;
        let manifest_signers = loaded.data["teesql"]["manifest_signers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str())
                    .map(|s| s.trim().to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();

        // Analyse and schedule once, here, so every clone starts prepared and a set that
        // cannot be evaluated is rejected at load time rather than on the first request.
        engine.set_input(regorus::Value::new_object());
        for pkg in packages.iter().filter(|p| is_purpose_package(p)) {
            engine
                .eval_rule(format!("data.{pkg}.allow"))
                .map_err(|e| PolicyError::Compile {
                    path: pkg.clone(),
                    detail: format!("{e:#}"),
                })?;
        }
        let purposes: Vec<String> = packages
            .iter()
            .filter(|p| is_purpose_package(p))
            .map(|p| p.trim_start_matches("teesql.").to_string())
            .collect();
        let vm = match compile_vm(&loaded.files, &data, &purposes) {
            Ok(program) => Some(VmPrograms { program, purposes }),
            Err(e) => {
                tracing::warn!(error = %e, "policy set does not compile for the regorus VM; decisions use the interpreter");
                None
            }
        };
        Ok(Self {
            engine,
            vm,
            data,
            eval_limit,
            packages,
            hash: loaded.hash,
            files: loaded.files,
            dirs: dirs.to_vec(),
            revision,
            manifest_signers,
        })
    }

    /// Whether the policy data pins `signer` (an address, `0x` + 40 hex) as a manifest
    /// signer (`data.teesql.manifest_signers`).
    pub fn pins_manifest_signer(&self, signer: &str) -> bool {
        let signer = signer.trim().to_ascii_lowercase();
        self.manifest_signers.contains(&signer)
    }

    /// The time limit of one evaluation.
    pub fn eval_limit(&self) -> Duration {
        self.eval_limit
    }

    /// Whether decisions run on the VM (`true`) or the interpreter.
    pub fn uses_vm(&self) -> bool {
        self.vm.is_some()
    }

    /// `sha256:<hex>` over the path and contents of every file in the set.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The files of the set, in load order.
    pub fn files(&self) -> &[PolicyFile] {
        &self.files
    }

    /// The OPA bundle revision the set came from; `None` for directories.
    pub fn revision(&self) -> Option<&str> {
        self.revision.as_deref()
    }

    /// The directories this set was loaded from.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Purposes this set can decide (packages `teesql.<purpose>` with rules).
    pub fn purposes(&self) -> Vec<String> {
        self.packages
            .iter()
            .filter(|p| is_purpose_package(p))
            .map(|p| p.trim_start_matches("teesql.").to_string())
            .collect()
    }

    /// Evaluate `input` (the claims) for `purpose`.
    pub fn evaluate(
        &self,
        purpose: &str,
        input: &serde_json::Value,
    ) -> Result<Verdict, PolicyError> {
        self.evaluate_value(purpose, regorus::Value::from(input.clone()))
    }

    /// Evaluate `input` (converted for regorus), or, when the policy cannot decide, the
    /// refusal saying why (`policy_error`): never an error, never an allow by default.
    pub fn decide_value(&self, purpose: &str, input: regorus::Value) -> Verdict {
        self.evaluate_value(purpose, input).unwrap_or_else(|e| {
            tracing::error!(purpose, error = %e, "policy evaluation failed; denying");
            Verdict::refusal(purpose, self.hash(), policy_error(&e))
        })
    }

    /// Evaluate an input already converted for regorus.
    pub fn evaluate_value(
        &self,
        purpose: &str,
        input: regorus::Value,
    ) -> Result<Verdict, PolicyError> {
        check_purpose(purpose)?;
        let pkg = package_of(purpose);
        if !self.packages.contains(&pkg) {
            return Err(PolicyError::UnknownPurpose {
                purpose: purpose.to_string(),
                loaded: self.purposes().join(", "),
            });
        }
        let (allow, deny, grants, warn) = match &self.vm {
            Some(vm) if vm.purposes.iter().any(|p| p == purpose) => {
                self.run_vm(&vm.program, purpose, input)?
            }
            _ => self.run_interpreter(purpose, input)?,
        };
        let allow = match allow {
            regorus::Value::Bool(b) => b,
            regorus::Value::Undefined => false,
            other => {
                return Err(PolicyError::Shape {
                    purpose: purpose.to_string(),
                    rule: "allow",
                    expected: "a boolean",
                    got: shown(&other),
                });
            }
        };
        let mut reasons = reasons_of(purpose, "deny", deny)?;
        let mut warnings = reasons_of(purpose, "warn", warn)?;
        warnings.sort();
        warnings.dedup();
        reasons.sort();
        reasons.dedup();
        let allowed = allow && reasons.is_empty();
        let grants = match grants {
            regorus::Value::Undefined | regorus::Value::Null => None,
            value => {
                let shape = || PolicyError::Shape {
                    purpose: purpose.to_string(),
                    rule: "grants",
                    expected: "an object {\"roles\": [role, ...], \"attributes\": {key: text}}",
                    got: shown(&value),
                };
                let json = serde_json::to_value(&value).map_err(|_| shape())?;
                let grants: Grants = serde_json::from_value(json).map_err(|_| shape())?;
                grants.check().map_err(|source| PolicyError::Grants {
                    purpose: purpose.to_string(),
                    source,
                })?;
                Some(grants)
            }
        };
        if !allowed && reasons.is_empty() {
            reasons.push(Reason {
                code: reason_codes::NOT_ALLOWED.into(),
                message: format!("{pkg}.allow is not true and the policy gave no reason"),
            });
        }
        Ok(Verdict {
            allow: allowed,
            reasons,
            // Nothing is granted to a peer that is not allowed in.
            grants: grants.filter(|_| allowed),
            warnings: if allowed { warnings } else { Vec::new() },
            policy_id: pkg,
            policy_hash: self.hash.clone(),
        })
    }
}

impl PolicySet {
    /// Evaluate with the interpreter only: the reference the VM is tested against.
    pub fn evaluate_interpreted(
        &self,
        purpose: &str,
        input: &serde_json::Value,
    ) -> Result<Verdict, PolicyError> {
        let vm = None;
        let this = Self { vm, ..self.clone() };
        this.evaluate(purpose, input)
    }

    fn run_interpreter(
        &self,
        purpose: &str,
        input: regorus::Value,
    ) -> Result<Outputs, PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let err = |e: anyhow::Error| PolicyError::Eval {
            purpose: purpose.to_string(),
            detail: format!("{e:#}"),
        };
        let mut eval = |rule: &str| {
            engine
                .eval_rule(format!("data.teesql.{purpose}.{rule}"))
                .map_err(err)
        };
        let (allow, deny) = (eval("allow")?, eval("deny")?);
        // `grants` and `warn` are optional: a query, which is undefined (no result) when
        // no rule defines it, where `eval_rule` would fail.
        let mut optional = |rule: &str| {
            engine
                .eval_query(format!("data.teesql.{purpose}.{rule}"), false)
                .map_err(err)
                .map(|r| {
                    r.result
                        .into_iter()
                        .next()
                        .and_then(|r| r.expressions.into_iter().next())
                        .map_or(regorus::Value::Undefined, |e| e.value)
                })
        };
        let grants = optional("grants")?;
        let warn = optional("warn")?;
        Ok((allow, deny, grants, warn))
    }

    fn run_vm(
        &self,
        program: &Arc<Program>,
        purpose: &str,
        input: regorus::Value,
    ) -> Result<Outputs, PolicyError> {
        let err = |detail: String| PolicyError::Eval {
            purpose: purpose.to_string(),
            detail,
        };
        let mut vm = RegoVM::new();
        vm.load_program(program.clone());
        vm.set_data(self.data.clone())
            .map_err(|e| err(format!("{e:#}")))?;
        vm.set_max_instructions(MAX_VM_INSTRUCTIONS);
        vm.set_execution_timer_config(Some(timer(self.eval_limit)));
        vm.set_input(input);
        let result = vm
            .execute_entry_point_by_name(&entry_point(purpose))
            .map_err(|e| err(format!("{e:#}")))?;
        let field = |name: &str| {
            result
                .as_object()
                .ok()
                .and_then(|o| o.get(&regorus::Value::from(name)).cloned())
                .unwrap_or(regorus::Value::Undefined)
        };
        Ok((
            field("allow"),
            field("deny"),
            field("grants"),
            field("warn"),
        ))
    }
}

/// What one evaluation yields: `allow`, `deny`, `grants`, `warn`.
type Outputs = (
    regorus::Value,
    regorus::Value,
    regorus::Value,
    regorus::Value,
);

/// A `deny` or `warn` set as reasons; undefined is none.
fn reasons_of(
    purpose: &str,
    rule: &'static str,
    value: regorus::Value,
) -> Result<Vec<Reason>, PolicyError> {
    let shape = |got: &regorus::Value| PolicyError::Shape {
        purpose: purpose.to_string(),
        rule,
        expected: "a set of {code, message} objects",
        got: shown(got),
    };
    match value {
        regorus::Value::Undefined => Ok(Vec::new()),
        value @ (regorus::Value::Set(_) | regorus::Value::Array(_)) => {
            let json = serde_json::to_value(&value).map_err(|e| PolicyError::Eval {
                purpose: purpose.to_string(),
                detail: e.to_string(),
            })?;
            serde_json::from_value::<Vec<Reason>>(json).map_err(|_| shape(&value))
        }
        other => Err(shape(&other)),
    }
}

fn timer(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::MIN.saturating_add(63),
    }
}

/// The VM entry point that evaluates one purpose's `allow` and `deny` together.
fn entry_point(purpose: &str) -> String {
    format!("data.teesql_decision.{purpose}.result")
}

/// Compile the set for the VM, with a synthesized package per purpose that reads
/// `allow` (default false) and `deny` (default empty) in one evaluation.
fn compile_vm(
    files: &[PolicyFile],
    data: &regorus::Value,
    purposes: &[String],
) -> Result<Arc<Program>, String> {
    if purposes.is_empty() {
        return Err("no purpose packages".into());
    }
    let mut modules: Vec<regorus::PolicyModule> = files
        .iter()
        .filter(|f| f.is_rego())
        .map(|f| regorus::PolicyModule {
            id: f.display_path.as_str().into(),
            content: f.contents.as_str().into(),
        })
        .collect();
    for p in purposes {
        modules.push(regorus::PolicyModule {
            id: format!("(decision of teesql.{p})").into(),
            content: format!(
                "package teesql_decision.{p}\n\
                 import rego.v1\n\
                 default allow := false\n\
                 allow := data.teesql.{p}.allow\n\
                 default deny := set()\n\
                 deny := data.teesql.{p}.deny\n\
                 default grants := null\n\
                 grants := data.teesql.{p}.grants\n\
                 default warn := set()\n\
                 warn := data.teesql.{p}.warn\n\
                 result := {{\"allow\": allow, \"deny\": deny, \"grants\": grants, \"warn\": warn}}\n"
            )
            .into(),
        });
    }
    let entries: Vec<String> = purposes.iter().map(|p| entry_point(p)).collect();
    let policy =
        regorus::compile_policy_with_entrypoint(data.clone(), &modules, entries[0].as_str().into())
            .map_err(|e| format!("{e:#}"))?;
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    Compiler::compile_from_policy(&policy, &refs).map_err(|e| format!("{e:#}"))
}

/// Every `data.…` path a policy reads must lead to a loaded package or into data.json:
/// a profile missing a file (a library, its data) is refused at load, instead of
/// evaluating rules over undefined values, which Rego treats as "no objection".
fn check_references(
    files: &[PolicyFile],
    packages: &[String],
    data: &serde_json::Value,
) -> Result<(), PolicyError> {
    let mut missing: Vec<String> = Vec::new();
    for file in files.iter().filter(|f| f.is_rego() && !f.is_test()) {
        for path in data_references(&file.contents) {
            let segments: Vec<&str> = path.split('.').collect();
            let in_package = (1..=segments.len())
                .any(|n| packages.iter().any(|p| *p == segments[..n].join(".")));
            if in_package {
                continue;
            }
            let mut cur = data;
            let mut defined = true;
            for seg in &segments {
                match cur {
                    serde_json::Value::Object(map) => match map.get(*seg) {
                        Some(next) => cur = next,
                        None => {
                            defined = false;
                            break;
                        }
                    },
                    _ => break,
                }
            }
            if !defined {
                let shown = format!("{} reads data.{path}", file.display_path);
                if !missing.contains(&shown) {
                    missing.push(shown);
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::Load {
            path: files
                .first()
                .map(|f| f.path.display().to_string())
                .unwrap_or_default(),
            detail: format!(
                "incomplete policy set (a file or a data.json key is missing), refused rather than deciding without it: {}; neither a loaded package nor data.json defines these",
                missing.join("; ")
            ),
        })
    }
}

/// The `data.a.b.c` paths a Rego source names, outside comments and strings.
fn data_references(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        // Drop strings and comments: a `#` outside a string starts a comment.
        let mut code = String::new();
        let mut in_string = false;
        let mut escaped = false;
        for c in line.chars() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
                code.push(' ');
                continue;
            }
            match c {
                '"' => {
                    in_string = true;
                    code.push(' ');
                }
                '#' => break,
                _ => code.push(c),
            }
        }
        let bytes = code.as_bytes();
        let mut i = 0;
        while let Some(found) = code[i..].find("data.") {
            let start = i + found;
            let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
            let boundary = start == 0 || !(ident(bytes[start - 1]) || bytes[start - 1] == b'.');
            let mut end = start + 5;
            while end < bytes.len() && (ident(bytes[end]) || bytes[end] == b'.') {
                end += 1;
            }
            if boundary {
                let path = code[start + 5..end].trim_end_matches('.');
                if !path.is_empty() {
                    out.push(path.to_string());
                }
            }
            i = end.max(start + 5);
        }
    }
    out
}

/// A package that decides a purpose: `teesql.<name>`, not a library or a test package.
fn is_purpose_package(pkg: &str) -> bool {
    pkg.strip_prefix("teesql.").is_some_and(|rest| {
        !rest.contains('.')
            && !rest.ends_with("_test")
            && rest != "lib"
            && check_purpose(rest).is_ok()
    })
}

fn check_purpose(purpose: &str) -> Result<(), PolicyError> {
    let ok = !purpose.is_empty()
        && purpose.len() <= 64
        && purpose
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadPurpose(purpose.to_string()))
    }
}

fn shown(v: &regorus::Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_else(|_| "?".into());
    if s.len() > 200 {
        format!("{}…", &s[..s.floor_char_boundary(200)])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_references_skip_strings_and_comments() {
        let src = r#"package teesql.x
import data.teesql.lib
# data.teesql.in_a_comment
allow if data.teesql.flag == true # data.teesql.trailing
msg := "data.teesql.in_a_string \" data.teesql.escaped"
pins := data.teesql.pins[reg]
x := mydata.teesql.not_a_reference
"#;
        assert_eq!(
            data_references(src),
            ["teesql.lib", "teesql.flag", "teesql.pins"]
        );
    }
}
