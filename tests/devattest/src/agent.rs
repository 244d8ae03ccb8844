//! A dstack-compatible guest agent for development, and a PCCS for its PKI.
//!
//! Serves the guest agent API that dstack's SDKs speak (Python dstack-sdk 0.5.x, Rust
//! dstack-sdk 0.1.x: `POST /<Method>` with JSON, bytes as lowercase hex, errors as 400
//! `{"error": …}`) over a unix socket and/or TCP: `GetTlsKey`, `GetQuote`, `Attest`,
//! `Info` (with dstack 0.5's `tcb_info`), `GetKey` and `Sign` (keys and signature chains
//! from a development KMS, see [`super::kms`]), `Verify`, `Version`, `EmitEvent`. It keeps a dstack-like event log whose replay equals
//! the RTMR3 of every quote it issues. The same server answers the PCCS v4 collateral
//! endpoints for its PKI, so the verifier's network collateral path runs for real.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha384};
use tokio::sync::Mutex;

use super::kms::{DevKms, KeyAlgorithm, KmsError};
use super::pki::{DevPki, DevPkiError, DevTdReport, PlatformTcb};
use super::ratls::{AppCa, CertAttestation, RaTlsIssued, RaTlsRequest};
use teesql_appraisal::eventlog::{DSTACK_RUNTIME_EVENT_TYPE, RuntimeEvent, TdxEvent, replay_rtmr3};
use teesql_appraisal::evidence::DstackAttestation;

/// The agent's version string (`Version`).
pub const AGENT_VERSION: &str = concat!("teesql-dev-agent ", env!("CARGO_PKG_VERSION"));

/// How to run the development agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub seed: [u8; 32],
    /// Exact bytes of the app-compose.json; `compose-hash` is their SHA-256.
    pub app_compose: Vec<u8>,
    pub app_name: String,
    /// Also put the legacy `.1` (quote) and `.2` (event log) extensions in certificates,
    /// for clients older than dstack v0.5.9.
    pub legacy_cert_extensions: bool,
    /// Lifetime of issued TLS certificates.
    pub cert_validity: Duration,
    /// Start of the collateral window (unix seconds); default: today, 00:00 UTC.
    pub collateral_issued_at: Option<u64>,
    /// Length of the collateral window (Intel's is about 30 days).
    pub collateral_validity: Duration,
    /// The TCB level the platform's TCB Info states (default `UpToDate`, no advisories).
    pub platform_tcb: PlatformTcb,
    /// A TCB recovery to rehearse: the PCCS serves Intel-shaped early and standard sets
    /// around it (see [`crate::pki::TcbRecovery`]).
    pub tcb_recovery: Option<crate::pki::TcbRecovery>,
    /// Which dstack the agent speaks (default 0.5).
    pub dstack: DstackVersion,
    /// The app id the CVM measures. Default: the compose hash's first 20 bytes, as dstack
    /// derives it for a self-deployed app. Under a KMS it is the app's id there (its
    /// contract); without one, dstack 0.6 measures whatever its operator sets.
    pub app_id: Option<[u8; 20]>,
    /// Where the CVM's keys come from (default a KMS, the development KMS of the seed).
    pub key_provider: KeyProviderKind,
    /// Run as a dstack 0.6 SEV-SNP CVM on this AMD product instead of TDX: certificates
    /// carry SEV-SNP reports (attestation kind 3: report, `[ASK, VCEK]`, the MrConfigV3
    /// document HOST_DATA commits to) signed by a development AMD chain
    /// ([`crate::snp::DevSnpPki`], new keys each start; its ARK is what a verifier is
    /// given with `--snp-dev-ark`).
    pub snp: Option<teesql_appraisal::snp::Product>,
}

/// The dstack version a development agent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DstackVersion {
    /// dstack 0.5.x: version 1 runtime events, the V0 (SCALE) attestation in `.8`, an
    /// 8-field `.9`, `EmitEvent`.
    #[default]
    #[value(name = "0.5")]
    V05,
    /// dstack 0.6: version 2 runtime events (`event_log_version: 2`), so the V1 (msgpack)
    /// attestation in `.8` and `Attest`; `gpu-policy-hash` among the boot events; a
    /// 9-field `.9`; `GetQuote` runtime events stripped of their digests and carrying
    /// their preimages; no `EmitEvent`.
    #[value(name = "0.6")]
    V06,
}

/// A CVM's key provider, as its `key-provider` event names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyProviderKind {
    /// The development KMS (`{"name":"kms","id":<its root CA's SPKI>}`).
    #[default]
    Kms,
    /// No KMS (`{"name":"none","id":""}`): keys are the CVM's own, and in dstack 0.6 the
    /// app id is whatever the operator chose.
    None,
}

impl AgentConfig {
    /// Defaults for a seed: a minimal compose file, modern certificates, 30-day collateral.
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            app_compose: DEFAULT_APP_COMPOSE.as_bytes().to_vec(),
            app_name: "teesql-dev".into(),
            legacy_cert_extensions: false,
            cert_validity: Duration::from_secs(7 * 24 * 3600),
            collateral_issued_at: None,
            collateral_validity: Duration::from_secs(30 * 24 * 3600),
            platform_tcb: PlatformTcb::default(),
            tcb_recovery: None,
            dstack: DstackVersion::default(),
            app_id: None,
            key_provider: KeyProviderKind::default(),
            snp: None,
        }
    }

    /// The app id the CVM measures.
    pub fn measured_app_id(&self) -> [u8; 20] {
        self.app_id.unwrap_or_else(|| app_id_of(&self.app_compose))
    }

    /// Refuse what no dstack would boot: dstack 0.5 (0.5.6–0.5.11) measures the compose
    /// hash's first 20 bytes as the app id of a CVM without a KMS, whatever it was told.
    fn check(&self) -> Result<(), AgentError> {
        if self.dstack == DstackVersion::V05
            && self.key_provider == KeyProviderKind::None
            && self.measured_app_id() != app_id_of(&self.app_compose)
        {
            return Err(AgentError::BadRequest(
                "dstack 0.5 measures the compose hash's first 20 bytes as the app id of a CVM without a KMS; choosing another app id needs --dstack 0.6".into(),
            ));
        }
        Ok(())
    }
}

/// The compose file used when none is given.
pub const DEFAULT_APP_COMPOSE: &str = r#"{"manifest_version":2,"name":"teesql-dev","runner":"docker-compose","docker_compose_file":"services:\n  postgres:\n    image: postgres:17\n  sidecar:\n    image: teesql-sidecar\n","kms_enabled":true,"gateway_enabled":false,"local_key_provider_enabled":false,"public_logs":true,"public_sysinfo":true}"#;

/// The development guest agent. Cheap to clone; all clones share state.
#[derive(Clone, Debug)]
pub struct DevAgent {
    state: Arc<AgentState>,
}

struct AgentState {
    config: AgentConfig,
    pki: DevPki,
    app_ca: AppCa,
    kms: DevKms,
    identity: Identity,
    events: Mutex<Vec<RuntimeEvent>>,
    collateral_issued_at: u64,
    pccs_requests: AtomicU64,
    snp: Option<Arc<crate::snp::DevSnpPki>>,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("app_name", &self.config.app_name)
            .finish_non_exhaustive()
    }
}

/// Fixed facts about the simulated CVM, derived from the seed and the compose file.
#[derive(Debug, Clone)]
struct Identity {
    app_id: [u8; 20],
    compose_hash: [u8; 32],
    instance_id: [u8; 20],
    device_id: [u8; 32],
    os_image_hash: [u8; 32],
    mrtd: [u8; 48],
    rtmr: [[u8; 48]; 3],
    key_provider: String,
    vm_config: String,
    dstack: DstackVersion,
}

fn derive<const N: usize>(seed: &[u8; 32], label: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let digest = Sha384::new()
        .chain_update(b"teesql-dev-agent:")
        .chain_update(label.as_bytes())
        .chain_update(seed)
        .finalize();
    out.copy_from_slice(&digest[..N]);
    out
}

/// dstack's convention: the app id of a self-deployed app is its first compose hash.
fn app_id_of(app_compose: &[u8]) -> [u8; 20] {
    let mut app_id = [0u8; 20];
    app_id.copy_from_slice(&Sha256::digest(app_compose)[..20]);
    app_id
}

impl Identity {
    fn new(config: &AgentConfig, pki: &DevPki, kms: &DevKms) -> Self {
        let compose_hash: [u8; 32] = Sha256::digest(&config.app_compose).into();
        let app_id = config.measured_app_id();
        let os_image_hash: [u8; 32] = derive(&config.seed, "os-image-hash");
        let vm_config = json!({
            "spec_version": 1,
            "os_image_hash": hex::encode(os_image_hash),
            "cpu_count": 2,
            "memory_size": 4u64 << 30,
            "tdx_attestation_variant": "teesql-dev",
        })
        .to_string();
        Self {
            app_id,
            compose_hash,
            instance_id: derive(&config.seed, "instance-id"),
            // As dstack's KMS computes it: SHA-256 of the PPID (in the PCK certificate).
            device_id: Sha256::digest(pki.ppid()).into(),
            os_image_hash,
            mrtd: derive(&config.seed, "mrtd"),
            rtmr: [
                derive(&config.seed, "rtmr0"),
                derive(&config.seed, "rtmr1"),
                derive(&config.seed, "rtmr2"),
            ],
            key_provider: match config.key_provider {
                KeyProviderKind::Kms => kms.key_provider_info(),
                KeyProviderKind::None => r#"{"name":"none","id":""}"#.to_string(),
            },
            vm_config,
            dstack: config.dstack,
        }
    }

    /// The boot events dstack's guest writes before the app starts, in dstack's order
    /// (`dstack-util/src/system_setup.rs`; v0.5.11 and next@312dc605): 0.6 adds
    /// `gpu-policy-hash` after the compose hash (the SHA-256 of the canonical JSON GPU
    /// policy, `{}` without one); `os-image-hash` comes from the KMS, so only with one.
    fn boot_events(&self) -> Vec<RuntimeEvent> {
        let v06 = self.dstack == DstackVersion::V06;
        let with_kms = self.key_provider.contains(r#""name":"kms""#);
        let mut events = vec![
            RuntimeEvent::new("system-preparing", Vec::new()),
            RuntimeEvent::new("app-id", self.app_id.to_vec()),
            RuntimeEvent::new("compose-hash", self.compose_hash.to_vec()),
        ];
        if v06 {
            events.push(RuntimeEvent::new(
                "gpu-policy-hash",
                Sha256::digest(b"{}").to_vec(),
            ));
        }
        events.push(RuntimeEvent::new("instance-id", self.instance_id.to_vec()));
        events.push(RuntimeEvent::new("boot-mr-done", Vec::new()));
        if with_kms {
            events.push(RuntimeEvent::new(
                "os-image-hash",
                self.os_image_hash.to_vec(),
            ));
        }
        events.extend([
            RuntimeEvent::new("key-provider", self.key_provider.as_bytes().to_vec()),
            RuntimeEvent::new("storage-fs", b"ext4".to_vec()),
            RuntimeEvent::new("system-ready", Vec::new()),
        ]);
        if v06 {
            // event_log_version = 2: every event of the boot has version 2.
            for e in &mut events {
                e.version = 2;
            }
        }
        events
    }

    /// dstack 0.6's MrConfigV3 document (the JSON the VMM delivers; HOST_DATA on
    /// SEV-SNP is its digest), with the fields and order of the dstack fixture
    /// `sev-snp-attestation.bin`.
    fn mr_config_v3(&self) -> String {
        let kp: serde_json::Value =
            serde_json::from_str(&self.key_provider).unwrap_or(serde_json::Value::Null);
        let text = |k: &str| kp.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        format!(
            r#"{{"app_id":"{}","compose_hash":"{}","instance_id":"{}","key_provider":"{}","key_provider_id":"{}","version":3}}"#,
            hex::encode(self.app_id),
            hex::encode(self.compose_hash),
            hex::encode(self.instance_id),
            text("name"),
            text("id")
        )
    }

    fn mr_config_id(&self) -> [u8; 48] {
        let mut id = [0u8; 48];
        id[0] = 0x01;
        id[1..33].copy_from_slice(&self.compose_hash);
        id
    }

    /// dstack's `mr_aggregated`: SHA-256 of MRTD, RTMR0-3 and, as any of them is
    /// non-zero, MRCONFIGID, MROWNER and MROWNERCONFIG (the last two are zero here).
    fn mr_aggregated(&self, rtmr3: &[u8; 48]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.mrtd);
        for r in &self.rtmr {
            h.update(r);
        }
        h.update(rtmr3);
        h.update(self.mr_config_id());
        h.update([0u8; 96]);
        h.finalize().into()
    }

    /// The positional `.9` app info dstack writes (an issuer claim, not attested): 8
    /// fields in 0.5.6–0.5.11, 0.6 adds `init_script_hashes` (here none: `[]`).
    fn app_info(&self, rtmr3: &[u8; 48]) -> Vec<u8> {
        use rmpv::Value;
        let bin = |b: &[u8]| Value::Binary(b.to_vec());
        let mut mr_system = Sha256::new();
        mr_system.update(self.mrtd);
        for r in &self.rtmr {
            mr_system.update(r);
        }
        let value = Value::Array(vec![
            bin(&self.app_id),
            bin(&self.compose_hash),
            bin(&self.instance_id),
            bin(&self.device_id),
            bin(&mr_system.finalize()),
            bin(&self.mr_aggregated(rtmr3)),
            bin(&self.os_image_hash),
            bin(self.key_provider.as_bytes()),
        ]);
        let value = match (value, self.dstack) {
            (Value::Array(mut fields), DstackVersion::V06) => {
                fields.push(Value::Array(Vec::new()));
                Value::Array(fields)
            }
            (value, _) => value,
        };
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut out, &value);
        out
    }
}

/// A request the agent refuses, with the reason the caller sees.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A KMS request the caller got wrong (an unknown algorithm, no key or signature).
    #[error("bad request: {0}")]
    KmsRequest(#[source] KmsError),
    /// The KMS could not derive or sign.
    #[error(transparent)]
    Kms(KmsError),
    #[error(transparent)]
    Pki(#[from] DevPkiError),
    #[error("{0}")]
    Io(String),
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match self {
            AgentError::BadRequest(_) | AgentError::KmsRequest(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Where the agent listens.
#[derive(Debug)]
pub enum AgentListener {
    Unix(PathBuf),
    Tcp(tokio::net::TcpListener),
}

impl DevAgent {
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        config.check()?;
        let mut pki =
            DevPki::from_seed(config.seed)?.with_platform_tcb(config.platform_tcb.clone());
        if let Some(recovery) = config.tcb_recovery {
            pki = pki.with_tcb_recovery(recovery);
        }
        let app_ca = AppCa::from_seed(&config.seed)?;
        let kms = DevKms::new(&config.seed, config.measured_app_id()).map_err(AgentError::Kms)?;
        let identity = Identity::new(&config, &pki, &kms);
        let events = identity.boot_events();
        let snp = config
            .snp
            .map(|p| crate::snp::DevSnpPki::new(p).map(Arc::new))
            .transpose()
            .map_err(|e| AgentError::Io(e.to_string()))?;
        let collateral_issued_at = config.collateral_issued_at.unwrap_or_else(|| {
            let now = teesql_appraisal::Clock::System.now();
            now - now % 86_400
        });
        Ok(Self {
            state: Arc::new(AgentState {
                config,
                pki,
                app_ca,
                kms,
                identity,
                events: Mutex::new(events),
                collateral_issued_at,
                pccs_requests: AtomicU64::new(0),
                snp,
            }),
        })
    }

    /// The development root CA (DER): the trust root to give the verifier.
    pub fn root_der(&self) -> &[u8] {
        self.state.pki.root_der()
    }

    /// The app CA that signs RA-TLS certificates (PEM): `sslrootcert` for mode B.
    pub fn app_ca_pem(&self) -> &str {
        self.state.app_ca.cert_pem()
    }

    /// The development AMD ARK (DER) of an SEV-SNP agent: `--snp-dev-ark`.
    pub fn snp_ark_der(&self) -> Option<&[u8]> {
        self.state.snp.as_ref().map(|p| p.ark_der())
    }

    /// A development KDS for an SEV-SNP agent's chain ([`crate::snp::kds_router`]),
    /// revoking the ASK serials `revoked`.
    pub fn snp_kds_router(&self, revoked: Vec<u64>) -> Option<Router> {
        let pki = self.state.snp.clone()?;
        Some(crate::snp::kds_router(pki, revoked))
    }

    /// The launch MEASUREMENT every SEV-SNP report of this agent carries (hex), for
    /// `pins.snp_measurement`.
    pub fn snp_measurement_hex(&self) -> String {
        hex::encode(self.snp_measurement())
    }

    fn snp_measurement(&self) -> [u8; 48] {
        derive(&self.state.config.seed, "snp-measurement")
    }

    /// An SEV-SNP attestation over `report_data`, as dstack 0.6 on AMD puts in `.8`
    /// (V0 SCALE, kind 3).
    fn snp_attestation(
        &self,
        pki: &crate::snp::DevSnpPki,
        report_data: [u8; 64],
    ) -> Result<DstackAttestation, DevPkiError> {
        let mr_config = self.state.identity.mr_config_v3();
        let report = pki
            .report(&crate::snp::DevSnpReport {
                measurement: self.snp_measurement(),
                host_data: teesql_appraisal::mr_config::v3_digest(mr_config.as_bytes()),
                report_data,
                ..crate::snp::DevSnpReport::default()
            })
            .map_err(|e| DevPkiError::Signing(e.to_string()))?;
        let report = teesql_appraisal::snp::Report::parse(&report)
            .map_err(|e| DevPkiError::Encoding(e.to_string()))?;
        Ok(DstackAttestation {
            format: teesql_appraisal::evidence::AttestationFormat::VersionedV0,
            quote: Vec::new(),
            snp: Some(teesql_appraisal::snp::SnpEvidence {
                report,
                cert_chain: vec![pki.ask_der().to_vec(), pki.vcek_der().to_vec()],
                mr_config,
            }),
            event_log: Vec::new(),
            runtime_events: Vec::new(),
            report_data,
            config: Some(self.state.identity.vm_config.clone()),
        })
    }

    /// The MRTD every quote of this agent carries (hex), for pinning in tests.
    pub fn mrtd_hex(&self) -> String {
        hex::encode(self.state.identity.mrtd)
    }

    /// The compose hash its event log records (hex): SHA-256 of its app-compose.
    pub fn compose_hash_hex(&self) -> String {
        hex::encode(self.state.identity.compose_hash)
    }

    /// The app id its event log records (hex).
    pub fn app_id_hex(&self) -> String {
        hex::encode(self.state.identity.app_id)
    }

    /// The root CA of its KMS (SPKI DER, hex): what `data.teesql.kms_roots` pins to trust
    /// the app ids this KMS issues.
    pub fn kms_root_hex(&self) -> String {
        hex::encode(self.state.kms.root_ca_spki())
    }

    /// The KMS's secp256k1 root public key (SEC1-compressed), which signs `GetKey`'s
    /// signature chains: what dstack's KMS publishes as `k256_pubkey` (`GetMeta`).
    pub fn kms_signing_root(&self) -> Vec<u8> {
        self.state.kms.root_public_key()
    }

    /// The dstack version it speaks.
    pub fn dstack(&self) -> DstackVersion {
        self.state.config.dstack
    }

    /// Extend RTMR3 with an event after the boot, as privileged code inside a CVM does
    /// (`dstack-util extend`; in 0.5 also the `EmitEvent` API). Its version is the boot's.
    pub async fn extend_rtmr3(&self, event: &str, payload: &[u8]) -> Result<(), AgentError> {
        if event.is_empty() || event.len() > 256 {
            return Err(AgentError::BadRequest(
                "event name must be 1 to 256 bytes".into(),
            ));
        }
        let mut events = self.state.events.lock().await;
        if events.len() >= 4096 {
            return Err(AgentError::BadRequest(
                "event log is full (4096 events)".into(),
            ));
        }
        let mut e = RuntimeEvent::new(event, payload.to_vec());
        e.version = events.first().map_or(1, |first| first.version);
        events.push(e);
        Ok(())
    }

    /// The instance id its event log records (hex), a manifest's `leader_instance`.
    pub fn instance_id_hex(&self) -> String {
        hex::encode(self.state.identity.instance_id)
    }

    /// The collateral for this agent's quotes.
    pub fn collateral(&self) -> Result<dcap_qvl::QuoteCollateralV3, AgentError> {
        Ok(self.state.pki.collateral(
            self.state.collateral_issued_at,
            self.state.config.collateral_validity.as_secs(),
        )?)
    }

    /// How many PCCS requests the agent has answered.
    pub fn pccs_requests(&self) -> u64 {
        self.state.pccs_requests.load(Ordering::Relaxed)
    }

    /// Write the files a verifier and clients need: `dev-root.der`, `dev-root.pem`,
    /// `dev-collateral.json`, `dev-app-ca.pem`, and an example RA-TLS server certificate
    /// for `localhost` (`example-ra-tls-cert.pem`) to try `teesql-verifier verify` on.
    pub async fn write_out_dir(&self, dir: &Path) -> Result<Vec<PathBuf>, AgentError> {
        let io = |e: std::io::Error| AgentError::Io(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let collateral = serde_json::to_vec_pretty(&self.collateral()?)
            .map_err(|e| AgentError::Io(e.to_string()))?;
        let example = self
            .issue_tls_key(&RaTlsRequest {
                subject: "localhost".into(),
                alt_names: vec!["localhost".into(), "127.0.0.1".into()],
                usage_ra_tls: true,
                usage_server_auth: true,
                usage_client_auth: false,
                ..Default::default()
            })
            .await?;
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("dev-root.der", self.root_der().to_vec()),
            ("dev-root.pem", self.state.pki.root_pem().into_bytes()),
            ("dev-collateral.json", collateral),
            ("dev-app-ca.pem", self.app_ca_pem().as_bytes().to_vec()),
            (
                "example-ra-tls-cert.pem",
                example.chain_pem.concat().into_bytes(),
            ),
        ];
        let mut written = Vec::new();
        for (name, bytes) in files {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(io)?;
            written.push(path);
        }
        Ok(written)
    }

    /// The HTTP routes: guest agent API and PCCS (`EmitEvent` only for dstack 0.5: 0.6
    /// removed it).
    pub fn router(&self) -> Router {
        let router = Router::new()
            .route("/GetTlsKey", post(get_tls_key))
            .route("/GetQuote", post(get_quote))
            .route("/Attest", post(attest))
            .route("/Info", post(info).get(info))
            .route("/GetKey", post(get_key))
            .route("/Sign", post(sign))
            .route("/Verify", post(verify))
            .route("/Version", post(version).get(version));
        let router = match self.dstack() {
            DstackVersion::V05 => router.route("/EmitEvent", post(emit_event)),
            DstackVersion::V06 => router,
        };
        router
            .merge(crate::pccs::routes::<DevAgent>())
            .with_state(self.clone())
            .layer(axum::middleware::from_fn(read_whole_body))
    }

    /// Serve HTTP on 127.0.0.1:`port` (0 = any) and on `extra` listeners in the
    /// background until the returned sender is dropped. Returns the HTTP base URL.
    pub async fn spawn_on_loopback(
        &self,
        port: u16,
        extra: Vec<AgentListener>,
    ) -> Result<(String, tokio::sync::oneshot::Sender<()>), AgentError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| AgentError::Io(format!("127.0.0.1:{port}: {e}")))?;
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(|e| AgentError::Io(e.to_string()))?
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut listeners = extra;
        listeners.push(AgentListener::Tcp(listener));
        let agent = self.clone();
        tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            if let Err(e) = agent.serve(listeners, stop).await {
                tracing::error!(error = %e, "dev agent stopped");
            }
        });
        Ok((url, tx))
    }

    /// Serve on every listener until `shutdown` completes. A unix socket path is
    /// replaced if a stale socket file is there, and removed on exit.
    pub async fn serve(
        &self,
        listeners: Vec<AgentListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AgentError> {
        let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = tokio::task::JoinSet::new();
        let mut sockets = Vec::new();
        for l in listeners {
            let router = self.router();
            let mut rx = tx.subscribe();
            let stop = async move {
                let _ = rx.recv().await;
            };
            match l {
                AgentListener::Unix(path) => {
                    if path.exists() {
                        std::fs::remove_file(&path)
                            .map_err(|e| AgentError::Io(format!("{}: {e}", path.display())))?;
                    }
                    let listener = tokio::net::UnixListener::bind(&path)
                        .map_err(|e| AgentError::Io(format!("{}: {e}", path.display())))?;
                    sockets.push(path);
                    tasks.spawn(async move {
                        axum::serve(listener, router)
                            .with_graceful_shutdown(stop)
                            .await
                    });
                }
                AgentListener::Tcp(listener) => {
                    tasks.spawn(async move {
                        axum::serve(listener, router)
                            .with_graceful_shutdown(stop)
                            .await
                    });
                }
            }
        }
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(());
        });
        while let Some(res) = tasks.join_next().await {
            if let Ok(Err(e)) = res {
                tracing::warn!(error = %e, "agent listener stopped");
            }
        }
        for path in sockets {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// A snapshot of the runtime events and the RTMR3 they replay to.
    async fn events(&self) -> (Vec<RuntimeEvent>, [u8; 48]) {
        let events = self.state.events.lock().await.clone();
        let rtmr3 = replay_rtmr3(&events);
        (events, rtmr3)
    }

    fn td_report(&self, rtmr3: [u8; 48], report_data: [u8; 64]) -> DevTdReport {
        let id = &self.state.identity;
        DevTdReport {
            mrtd: id.mrtd,
            rtmr: [id.rtmr[0], id.rtmr[1], id.rtmr[2], rtmr3],
            report_data,
            mr_config_id: id.mr_config_id(),
            ..DevTdReport::default()
        }
    }

    /// A quote over `report_data`, with the events it was taken over.
    pub async fn quote(
        &self,
        report_data: [u8; 64],
    ) -> Result<(Vec<u8>, Vec<RuntimeEvent>), AgentError> {
        let (events, rtmr3) = self.events().await;
        let quote = self.state.pki.quote(&self.td_report(rtmr3, report_data))?;
        Ok((quote, events))
    }

    /// A versioned attestation over `report_data`, as `Attest` returns it.
    pub async fn attestation(
        &self,
        report_data: [u8; 64],
    ) -> Result<DstackAttestation, AgentError> {
        let (quote, events) = self.quote(report_data).await?;
        Ok(DstackAttestation {
            format: attestation_format(self.dstack()),
            quote,
            snp: None,
            event_log: tdx_events(&events, EventForm::Full),
            runtime_events: events,
            report_data,
            config: Some(self.state.identity.vm_config.clone()),
        })
    }

    /// Issue a TLS key and certificate chain, as `GetTlsKey` does.
    pub async fn issue_tls_key(&self, req: &RaTlsRequest) -> Result<RaTlsIssued, AgentError> {
        // The attestation depends on the key, which the CA generates; compute it inside.
        let (events, rtmr3) = self.events().await;
        let legacy = self.state.config.legacy_cert_extensions;
        let with_app_info = req.with_app_info;
        let this = self.clone();
        let issued =
            self.state
                .app_ca
                .issue(req, self.state.config.cert_validity, move |spki| {
                    let report_data = teesql_appraisal::eventlog::ra_tls_report_data(spki);
                    if let Some(pki) = &this.state.snp {
                        let att = this.snp_attestation(pki, report_data)?;
                        return Ok(CertAttestation {
                            versioned: crate::encode::versioned_attestation(&att),
                            legacy: None,
                            app_id: this.state.identity.app_id.to_vec(),
                            app_info: None,
                        });
                    }
                    let quote = this.state.pki.quote(&this.td_report(rtmr3, report_data))?;
                    let event_log = match this.dstack() {
                        DstackVersion::V05 => tdx_events(&events, EventForm::Full),
                        DstackVersion::V06 => tdx_events(&events, EventForm::Stripped),
                    };
                    let legacy = legacy.then(|| {
                        let log = serde_json::to_vec(&event_log).unwrap_or_default();
                        (quote.clone(), log)
                    });
                    let att = DstackAttestation {
                        format: attestation_format(this.dstack()),
                        quote,
                        snp: None,
                        event_log,
                        runtime_events: events,
                        report_data,
                        config: Some(this.state.identity.vm_config.clone()),
                    };
                    Ok(CertAttestation {
                        versioned: crate::encode::versioned_attestation(&att),
                        legacy,
                        app_id: this.state.identity.app_id.to_vec(),
                        app_info: with_app_info.then(|| this.state.identity.app_info(&rtmr3)),
                    })
                })?;
        Ok(issued)
    }
}

/// How an event log is shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventForm {
    /// Digests computed (`Info`'s tcb_info, 0.5's `GetQuote` and certificates).
    Full,
    /// Runtime events without their digests (dstack 0.6 `TdxEvent::stripped`, as in
    /// certificates).
    Stripped,
    /// Stripped, with version 2 events carrying their preimage (0.6 `GetQuote`:
    /// `fill_v2_preimages`).
    StrippedWithPreimages,
}

/// The RTMR3 events as a TDX event log.
fn tdx_events(events: &[RuntimeEvent], form: EventForm) -> Vec<TdxEvent> {
    events
        .iter()
        .map(|e| TdxEvent {
            imr: 3,
            event_type: DSTACK_RUNTIME_EVENT_TYPE,
            digest: match form {
                EventForm::Full => e.digest().to_vec(),
                _ => Vec::new(),
            },
            event: e.event.clone(),
            event_payload: e.payload.clone(),
            version: e.version,
            preimage: (form == EventForm::StrippedWithPreimages && e.version == 2)
                .then(|| e.preimage()),
        })
        .collect()
}

fn attestation_format(dstack: DstackVersion) -> teesql_appraisal::evidence::AttestationFormat {
    match dstack {
        DstackVersion::V05 => teesql_appraisal::evidence::AttestationFormat::VersionedV0,
        DstackVersion::V06 => teesql_appraisal::evidence::AttestationFormat::VersionedV1,
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, AgentError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| AgentError::BadRequest(format!("invalid JSON: {e}")))
}

/// Report data as dstack takes it: hex, at most 64 bytes, zero-padded.
fn report_data(hex_text: &str) -> Result<[u8; 64], AgentError> {
    let bytes = teesql_appraisal::evidence::decode_hex("report_data", hex_text, 64)
        .map_err(|e| AgentError::BadRequest(e.to_string()))?;
    let mut out = [0u8; 64];
    out[..bytes.len()].copy_from_slice(&bytes);
    Ok(out)
}

#[derive(Deserialize)]
struct TlsKeyBody {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    alt_names: Vec<String>,
    #[serde(default)]
    usage_ra_tls: bool,
    #[serde(default = "yes")]
    usage_server_auth: bool,
    #[serde(default)]
    usage_client_auth: bool,
    #[serde(default)]
    not_before: Option<u64>,
    #[serde(default)]
    not_after: Option<u64>,
    #[serde(default)]
    with_app_info: bool,
}

fn yes() -> bool {
    true
}

async fn get_tls_key(
    State(agent): State<DevAgent>,
    body: Bytes,
) -> Result<axum::Json<Value>, AgentError> {
    let b: TlsKeyBody = parse(&body)?;
    let issued = agent
        .issue_tls_key(&RaTlsRequest {
            subject: b.subject,
            alt_names: b.alt_names,
            usage_ra_tls: b.usage_ra_tls,
            usage_server_auth: b.usage_server_auth,
            usage_client_auth: b.usage_client_auth,
            not_before: b.not_before,
            not_after: b.not_after,
            with_app_info: b.with_app_info,
        })
        .await?;
    Ok(axum::Json(json!({
        "key": issued.key_pem,
        "certificate_chain": issued.chain_pem,
    })))
}

#[derive(Deserialize)]
struct ReportDataBody {
    #[serde(default)]
    report_data: String,
}

async fn get_quote(
    State(agent): State<DevAgent>,
    body: Bytes,
) -> Result<axum::Json<Value>, AgentError> {
    let b: ReportDataBody = parse(&body)?;
    let rd = report_data(&b.report_data)?;
    let (quote, events) = agent.quote(rd).await?;
    let form = match agent.dstack() {
        DstackVersion::V05 => EventForm::Full,
        DstackVersion::V06 => EventForm::StrippedWithPreimages,
    };
    let event_log = serde_json::to_string(&tdx_events(&events, form))
        .map_err(|e| AgentError::Io(e.to_string()))?;
    Ok(axum::Json(json!({
        "quote": hex::encode(quote),
        "event_log": event_log,
        "report_data": hex::encode(rd),
        "vm_config": agent.state.identity.vm_config,
    })))
}

async fn attest(
    State(agent): State<DevAgent>,
    body: Bytes,
) -> Result<axum::Json<Value>, AgentError> {
    let b: ReportDataBody = parse(&body)?;
    let att = agent.attestation(report_data(&b.report_data)?).await?;
    Ok(axum::Json(
        json!({ "attestation": hex::encode(crate::encode::versioned_attestation(&att)) }),
    ))
}

async fn info(State(agent): State<DevAgent>) -> Result<axum::Json<Value>, AgentError> {
    let id = &agent.state.identity;
    let (events, rtmr3) = agent.events().await;
    let app_compose = String::from_utf8_lossy(&agent.state.config.app_compose).into_owned();
    let mr_aggregated = hex::encode(id.mr_aggregated(&rtmr3));
    let tcb_info = json!({
        "mrtd": hex::encode(id.mrtd),
        "rtmr0": hex::encode(id.rtmr[0]),
        "rtmr1": hex::encode(id.rtmr[1]),
        "rtmr2": hex::encode(id.rtmr[2]),
        "rtmr3": hex::encode(rtmr3),
        "mr_aggregated": mr_aggregated,
        "os_image_hash": hex::encode(id.os_image_hash),
        "compose_hash": hex::encode(id.compose_hash),
        "device_id": hex::encode(id.device_id),
        "app_compose": app_compose,
        "event_log": tdx_events(&events, EventForm::Full),
    });
    Ok(axum::Json(json!({
        "app_id": hex::encode(id.app_id),
        "instance_id": hex::encode(id.instance_id),
        "app_cert": agent.app_ca_pem(),
        "tcb_info": tcb_info.to_string(),
        "app_name": agent.state.config.app_name,
        "device_id": hex::encode(id.device_id),
        "mr_aggregated": mr_aggregated,
        "os_image_hash": hex::encode(id.os_image_hash),
        "key_provider_info": id.key_provider,
        "compose_hash": hex::encode(id.compose_hash),
        "vm_config": id.vm_config,
    })))
}

#[derive(Deserialize)]
struct GetKeyBody {
    #[serde(default)]
    path: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    algorithm: String,
}

/// The secp256k1 key `GetKey(path)` returns on an agent with `config` (the same bytes a
/// caller of the running agent gets), for tools that need it before the agent runs.
pub fn derived_key(config: &AgentConfig, path: &str) -> Result<[u8; 32], KmsError> {
    let kms = DevKms::new(&config.seed, config.measured_app_id())?;
    Ok(kms.get_key(path, "", KeyAlgorithm::Secp256k1)?.secret)
}

/// Keys derived from the app's KMS key and the path, with dstack's signature chain.
async fn get_key(
    State(agent): State<DevAgent>,
    body: Bytes,
) -> Result<axum::Json<Value>, AgentError> {
    let b: GetKeyBody = parse(&body)?;
    let algorithm = KeyAlgorithm::parse(&b.algorithm).map_err(AgentError::KmsRequest)?;
    let key = agent
        .state
        .kms
        .get_key(&b.path, &b.purpose, algorithm)
        .map_err(AgentError::Kms)?;
    Ok(axum::Json(json!({
        "key": hex::encode(key.secret),
        "signature_chain": key.signature_chain.iter().map(hex::encode).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
struct SignBody {
    algorithm: String,
    #[serde(default)]
    data: String,
}

async fn sign(State(agent): State<DevAgent>, body: Bytes) -> Result<axum::Json<Value>, AgentError> {
    let b: SignBody = parse(&body)?;
    let data = teesql_appraisal::evidence::decode_hex("data", &b.data, 64 * 1024)
        .map_err(|e| AgentError::BadRequest(e.to_string()))?;
    let signed = agent
        .state
        .kms
        .sign(&b.algorithm, &data)
        .map_err(AgentError::KmsRequest)?;
    Ok(axum::Json(json!({
        "signature": hex::encode(&signed.signature),
        "signature_chain": signed.signature_chain.iter().map(hex::encode).collect::<Vec<_>>(),
        "public_key": hex::encode(&signed.public_key),
    })))
}

#[derive(Deserialize)]
struct VerifyBody {
    algorithm: String,
    #[serde(default)]
    data: String,
    signature: String,
    public_key: String,
}

async fn verify(body: Bytes) -> Result<axum::Json<Value>, AgentError> {
    let b: VerifyBody = parse(&body)?;
    let hex_field = |name: &'static str, text: &str| {
        teesql_appraisal::evidence::decode_hex(name, text, 64 * 1024)
            .map_err(|e| AgentError::BadRequest(e.to_string()))
    };
    let valid = super::kms::verify(
        &b.algorithm,
        &hex_field("data", &b.data)?,
        &hex_field("signature", &b.signature)?,
        &hex_field("public_key", &b.public_key)?,
    )
    .map_err(AgentError::KmsRequest)?;
    Ok(axum::Json(json!({ "valid": valid })))
}

async fn version() -> axum::Json<Value> {
    axum::Json(json!({ "version": AGENT_VERSION, "rev": "dev" }))
}

#[derive(Deserialize)]
struct EmitEventBody {
    event: String,
    #[serde(default)]
    payload: String,
}

async fn emit_event(
    State(agent): State<DevAgent>,
    body: Bytes,
) -> Result<axum::Json<Value>, AgentError> {
    let b: EmitEventBody = parse(&body)?;
    let payload = teesql_appraisal::evidence::decode_hex("payload", &b.payload, 64 * 1024)
        .map_err(|e| AgentError::BadRequest(e.to_string()))?;
    agent.extend_rtmr3(&b.event, &payload).await?;
    Ok(axum::Json(Value::Null))
}

impl crate::pccs::PccsSource for DevAgent {
    fn pki(&self) -> &DevPki {
        &self.state.pki
    }

    fn window(&self) -> (u64, u64) {
        (
            self.state.collateral_issued_at,
            self.state.config.collateral_validity.as_secs(),
        )
    }

    fn on_request(&self) {
        self.state.pccs_requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Read every request's body before its handler runs, as the real guest agent does.
/// A handler that ignores the body (`Info`, `Version`: the SDKs send `{}`) would
/// otherwise leave it unread, and hyper then closes the keep-alive connection after the
/// response; a client that already sent its next request on it (httpx does) gets
/// "connection reset by peer".
async fn read_whole_body(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, 1 << 20).await {
        Ok(bytes) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Err(e) => (
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: {e}"),
        )
            .into_response(),
    }
}
