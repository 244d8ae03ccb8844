//! Claims: the one versioned JSON document every policy reads. See `verifier/CLAIMS.md`.
//!
//! Byte values are lowercase hex without `0x`. Absent facts are `null`, never guessed.

use serde::Serialize;

use crate::backend::{CollateralWindow, QuoteFacts};
use crate::eventlog::{AppIdAttestation, AppIdentity, KeyProvider, RuntimeEvent, replay_rtmr3};
use crate::evidence::{CertInfo, Evidence, EvidenceKind, TeeType};
use crate::mr_config::MrConfigClaims;
use crate::report::{IdentityHex, Measured, Registers, ReportClaims};
use crate::snp::SnpClaims;

/// The version of the claims document; bump on any incompatible change.
pub const CLAIMS_VERSION: u32 = 1;

/// The policy input.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    /// Always [`CLAIMS_VERSION`]; policies may check it to refuse a shape they don't know.
    pub claims_version: u32,
    /// Why the evidence is being appraised: `quote`, `sidecar`, `client`, …
    pub purpose: String,
    /// Appraisal time, unix seconds.
    pub now: u64,
    /// Which TEE the evidence comes from: `tdx`, `sev-snp`, or `null` without evidence
    /// (the same as `evidence.tee`, at the top for policies that branch on it first).
    pub tee: Option<Tee>,
    /// What was presented, as decoded (not verified).
    pub evidence: EvidenceClaims,
    /// Quote facts; `null` when no quote was presented.
    pub tdx: Option<TdxClaims>,
    /// SEV-SNP report facts; absent unless SEV-SNP evidence was presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpClaims>,
    /// Application identity from the event log (TDX) or the MrConfigV3 document HOST_DATA
    /// commits to (SEV-SNP); `null` when there is neither.
    pub app: Option<AppClaims>,
    /// Whether the quote's report data binds it to what it came with (certificate key
    /// or the caller's expected report data).
    pub binding: BindingClaims,
    /// The connection being judged (sidecar and client purposes); `null` otherwise.
    pub connection: Option<ConnectionClaims>,
    /// The signed leader manifest (purpose `manifest`); `null` otherwise.
    pub manifest: Option<crate::manifest::ManifestClaims>,
    /// The sidecar `/attestation` report (purpose `report`); `null` otherwise.
    pub report: Option<ReportClaims>,
}

/// What was presented.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceClaims {
    /// The form presented: `none`, `quote`, `ra_tls_cert`, `dstack_attestation` or
    /// `getquote`.
    pub kind: EvidenceKind,
    /// Which TEE the evidence comes from: `tdx` (a quote, TDX or SGX), `sev-snp`, or
    /// `null` when it carries neither.
    pub tee: Option<Tee>,
    /// For certificate evidence: what the certificate says of itself.
    pub cert: Option<CertInfo>,
    /// When the evidence states the report data beside the quote (attestation blobs,
    /// GetQuote), whether that statement matches the quote. `null` when not stated.
    pub report_data_consistent: Option<bool>,
    /// The VM configuration JSON the evidence carries, parsed; `null` when absent.
    pub vm_config: Option<serde_json::Value>,
}

/// Which TEE produced the evidence (`evidence.tee`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Tee {
    /// Intel TDX (or SGX): a DCAP quote, in `tdx`.
    #[serde(rename = "tdx")]
    Tdx,
    /// AMD SEV-SNP: a report, in `snp`.
    #[serde(rename = "sev-snp")]
    SevSnp,
}

impl Tee {
    /// The name the claims give it (`tdx`, `sev-snp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tdx => "tdx",
            Self::SevSnp => "sev-snp",
        }
    }
}

/// What vouches for the `app` claims (`app.attested_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppAttestedBy {
    /// TDX: the event log, when replaying it gives the quote's RTMR3 (`rtmr3_replayed`).
    Rtmr3,
    /// SEV-SNP: the MrConfigV3 document, when HOST_DATA commits to it
    /// (`snp.mr_config_bound`). Runtime events are not measured on SEV-SNP.
    HostData,
}

/// Facts about the quote.
#[derive(Debug, Clone, Serialize)]
pub struct TdxClaims {
    /// The quote verified up to the trust root with valid collateral.
    pub verified: bool,
    /// Why it did not verify.
    pub error: Option<String>,
    /// Class of the failure (`collateral_expired`, `signature_invalid`, …).
    pub error_code: Option<crate::backend::VerifyErrorCode>,
    /// Which trust root: `intel`, `dev`, `custom`, `intel-trust-authority` or
    /// `simulator`.
    pub root: crate::backend::TrustRootKind,
    /// Which backend decided: `dcap`, `ita` or `simulator`.
    pub backend: String,
    /// SHA-256 (hex) of the attestation token the facts come from (`ita`); `null` for
    /// backends that verify locally.
    pub token_sha256: Option<String>,
    /// `tdx` or `sgx`, from the quote's body (decoded, whether or not it verified).
    pub tee_type: TeeType,
    /// The quote format version from its header: 4 or 5 for TDX, 3 for SGX.
    pub quote_version: u16,
    /// DCAP TCB status (`UpToDate`, `OutOfDate`, `SWHardeningNeeded`, …; ITA's names
    /// mapped to these); `null` when not verified.
    pub tcb_status: Option<String>,
    /// Intel security advisories (`INTEL-SA-…`) for the platform's TCB level; empty when
    /// none apply or the quote did not verify.
    pub advisory_ids: Vec<String>,
    /// MRTD, lowercase hex (48 bytes); `null` when the quote is not a TDX quote.
    pub mrtd: Option<String>,
    /// RTMR0 (firmware configuration), lowercase hex; `null` for non-TDX quotes.
    pub rtmr0: Option<String>,
    /// RTMR1 (OS loader and kernel), lowercase hex; `null` for non-TDX quotes.
    pub rtmr1: Option<String>,
    /// RTMR2 (kernel command line and initrd), lowercase hex; `null` for non-TDX quotes.
    pub rtmr2: Option<String>,
    /// RTMR3 (dstack's runtime events), lowercase hex; `null` for non-TDX quotes.
    pub rtmr3: Option<String>,
    /// The quote's 64 bytes of report data, lowercase hex, for TDX and SGX alike.
    pub report_data: String,
    /// MRCONFIGID, lowercase hex; `null` for non-TDX quotes. Read in `mr_config`.
    pub mr_config_id: Option<String>,
    /// MROWNER, lowercase hex; `null` for non-TDX quotes.
    pub mr_owner: Option<String>,
    /// MROWNERCONFIG, lowercase hex; `null` for non-TDX quotes.
    pub mr_owner_config: Option<String>,
    /// MRSEAM (the TDX module's measurement), lowercase hex; `null` for non-TDX quotes.
    pub mr_seam: Option<String>,
    /// MRSIGNERSEAM (the TDX module's signer), lowercase hex; `null` for non-TDX quotes.
    pub mr_signer_seam: Option<String>,
    /// XFAM (8 bytes), lowercase hex; `null` for non-TDX quotes.
    pub xfam: Option<String>,
    /// TDATTRIBUTES (8 bytes), lowercase hex; `null` for non-TDX quotes.
    pub td_attributes: Option<String>,
    /// TEE_TCB_SVN (16 bytes), lowercase hex; `null` for non-TDX quotes.
    pub tee_tcb_svn: Option<String>,
    /// TDATTRIBUTES' TUD.DEBUG bit: the host can read the TD; `null` for non-TDX quotes.
    pub debug: Option<bool>,
    /// When the facts hold, unix seconds: the collateral's window (DCAP) or the token's
    /// (ITA); `null` when none was obtained.
    pub collateral: Option<CollateralWindow>,
    /// What MRCONFIGID commits to, and whether that agrees with the event log.
    pub mr_config: Option<MrConfigClaims>,
    /// With `ita`: what Intel Trust Authority's token said beyond the quote.
    pub ita: Option<crate::backend::ItaFacts>,
    /// The TCB lifecycle: the deciding set's number, the platform under Intel's early
    /// set, what must rise (`dcap`, verified quotes; see CLAIMS.md `tdx.tcb`).
    pub tcb: Option<crate::tcb::TcbClaims>,
}

/// What the event log says about the application. The identity fields come only from
/// the boot events, before the first `system-ready`.
#[derive(Debug, Clone, Serialize)]
pub struct AppClaims {
    /// What vouches for these claims: `rtmr3` (TDX event log) or `host_data` (SEV-SNP
    /// MrConfigV3 document).
    pub attested_by: AppAttestedBy,
    /// The boot's `app-id` event, hex (20 bytes in dstack); `null` when absent. An
    /// identity only as far as `app_id_attested_by` says.
    pub app_id: Option<String>,
    /// Why the app id is an identity: `kms` (a KMS issued the app's keys; an identity
    /// when policy pins that KMS), `compose_hash` (the compose hash's first 20 bytes) or
    /// `none` (the CVM's operator could have chosen it).
    pub app_id_attested_by: AppIdAttestation,
    /// The boot's `compose-hash` event (SHA-256 of the app compose file), hex; `null`
    /// when absent.
    pub compose_hash: Option<String>,
    /// The boot's `instance-id` event, hex: this CVM, not the application; `null` when
    /// absent.
    pub instance_id: Option<String>,
    /// The boot's `os-image-hash` event, hex: the dstack OS image; `null` when absent.
    pub os_image_hash: Option<String>,
    /// `{name, id}` from the `key-provider` event, or its raw text if not JSON.
    pub key_provider: Option<serde_json::Value>,
    /// `init-script-hash` events (dstack 0.6), hex, in order.
    pub init_script_hashes: Vec<String>,
    /// `gpu-policy-hash` (dstack 0.6), hex.
    pub gpu_policy_hash: Option<String>,
    /// `gpu-attestation` (dstack 0.6): its JSON, or its text when not JSON. What the
    /// guest reported of its GPU check; not GPU evidence.
    pub gpu_attestation: Option<serde_json::Value>,
    /// The `gpu-attestation` event read field by field, and whether GPU evidence given
    /// beside it is the one it names; `null` without the event. Never "a verified GPU":
    /// the evidence nvattest's local verifier produces is unsigned (`signed: false`).
    pub gpu: Option<GpuClaims>,
    /// The boot finished: the log has a `system-ready` event.
    pub system_ready: bool,
    /// Events after the first `system-ready`, emitted by the application at run time
    /// (attested as emitted, but not part of the boot). At most
    /// [`MAX_RUNTIME_EVENT_CLAIMS`], each payload at most [`MAX_RUNTIME_PAYLOAD_CLAIM`]
    /// bytes.
    pub runtime_events: Vec<RuntimeEventClaim>,
    /// Runtime events left out of `runtime_events` because there were more.
    pub runtime_events_dropped: usize,
    /// Replaying the runtime events reproduces the quote's RTMR3. Only then are the
    /// fields above attested.
    pub rtmr3_replayed: bool,
    /// The replayed value (hex), or `null` if the log could not be replayed.
    pub rtmr3_replay: Option<String>,
    /// Why the log could not be replayed.
    pub replay_error: Option<String>,
    /// Every runtime event, in order.
    pub events: Vec<EventClaim>,
}

/// What dstack's `gpu-attestation` event says (`app.gpu`): the guest ran nvattest at boot
/// and measured `{"version":2,"provider":"nvidia","devices":…,"cc_mode":…,"devtools":…,
/// "evidence_sha256":…}` into RTMR3. On SEV-SNP the event is measured nowhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuClaims {
    /// The event's `version`.
    pub version: Option<u64>,
    /// `provider`, e.g. `nvidia`.
    pub provider: Option<String>,
    /// `devices`: how many GPUs the guest checked.
    pub devices: Option<u64>,
    /// `cc_mode`, e.g. `on`.
    pub cc_mode: Option<String>,
    /// `devtools`: the GPUs' developer tools mode.
    pub devtools: Option<bool>,
    /// `evidence_sha256`: SHA-256 (hex) of nvattest's complete output.
    pub evidence_sha256: Option<String>,
    /// GPU evidence was given beside the attestation.
    pub evidence_given: bool,
    /// The given evidence's SHA-256 is `evidence_sha256`; `null` when none was given.
    pub evidence_matches: Option<bool>,
    /// Always `false`: nvattest's local verifier signs nothing (its JWTs are `alg: none`),
    /// so these claims say what the guest measured, not what NVIDIA attested.
    pub signed: bool,
}

impl GpuClaims {
    /// Read the event's payload; `given` is GPU evidence presented beside it.
    pub fn read(payload: &[u8], given: Option<&[u8]>) -> Self {
        use sha2::{Digest, Sha256};
        let doc: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
        let text = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let number = |k: &str| doc.get(k).and_then(serde_json::Value::as_u64);
        let evidence_sha256 = text("evidence_sha256").map(|h| h.to_lowercase());
        Self {
            version: number("version"),
            provider: text("provider"),
            devices: number("devices"),
            cc_mode: text("cc_mode"),
            devtools: doc.get("devtools").and_then(serde_json::Value::as_bool),
            evidence_given: given.is_some(),
            evidence_matches: given.map(|g| {
                evidence_sha256.as_deref() == Some(hex::encode(Sha256::digest(g)).as_str())
            }),
            evidence_sha256,
            signed: false,
        }
    }
}

/// One runtime event.
#[derive(Debug, Clone, Serialize)]
pub struct EventClaim {
    /// The event's name (`app-id`, `compose-hash`, `system-ready`, …).
    pub event: String,
    /// Payload, hex.
    pub payload: String,
}

/// Most runtime events listed in `app.runtime_events`.
pub const MAX_RUNTIME_EVENT_CLAIMS: usize = 64;
/// Most payload bytes shown per runtime event.
pub const MAX_RUNTIME_PAYLOAD_CLAIM: usize = 1024;

/// An event the application emitted after the boot.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeEventClaim {
    /// The event's name, as the application chose it.
    pub event: String,
    /// Payload, hex: its first [`MAX_RUNTIME_PAYLOAD_CLAIM`] bytes.
    pub payload: String,
    /// The payload's whole length in bytes.
    pub payload_len: usize,
}

impl RuntimeEventClaim {
    fn of(e: &RuntimeEvent) -> Self {
        Self {
            event: e.event.clone(),
            payload: hex::encode(&e.payload[..e.payload.len().min(MAX_RUNTIME_PAYLOAD_CLAIM)]),
            payload_len: e.payload.len(),
        }
    }
}

/// Whether the quote is bound to what it is presented with.
#[derive(Debug, Clone, Serialize)]
pub struct BindingClaims {
    /// `ra_tls_spki` (certificate key), `report_data` (caller's expected value) or `none`.
    pub kind: BindingKind,
    /// The quote's report data equals `expected` (data shorter than 64 bytes
    /// zero-padded); always false for kind `none`.
    pub ok: bool,
    /// The report data the binding requires (hex), when there is one.
    pub expected: Option<String>,
}

/// What the quote's report data is checked against (`binding.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingKind {
    /// Certificate evidence: `SHA-512("ratls-cert:" || leaf SPKI DER)`, dstack's RA-TLS
    /// binding ([`crate::eventlog::ra_tls_report_data`]).
    RaTlsSpki,
    /// The report data the caller expects, zero-padded to 64 bytes (longer never binds).
    ReportData,
    /// Nothing to check against: no certificate and no expected report data.
    None,
}

/// The connection a sidecar or client is deciding about.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionClaims {
    /// The Postgres user named in the connection's startup; empty when none.
    pub user: String,
    /// The Postgres database named in the connection's startup; empty when none.
    pub database: String,
    /// The TLS server name (SNI) of the connection; empty when none was sent.
    pub sni: String,
    /// The peer's socket address (`ip:port`) as the caller reports it; empty when not
    /// given.
    pub client_addr: String,
    /// The negotiated ALPN protocol (`postgresql` for Postgres direct TLS); empty when
    /// none.
    pub alpn: String,
    /// MRTDs the application itself expects (e.g. `EXPECTED_MRTD`), hex.
    pub expected_mrtds: Vec<String>,
    /// Compose hashes the application itself expects of the peer, hex.
    pub expected_compose_hashes: Vec<String>,
    /// App ids the application itself expects of the peer, hex.
    pub expected_app_ids: Vec<String>,
}

/// The part of the claims that depends only on the evidence (and the caller's expected
/// report data): what the appraisal cache keeps.
#[derive(Debug, Clone, Serialize)]
pub struct AppraisedEvidence {
    /// Becomes [`Claims::evidence`].
    pub evidence: EvidenceClaims,
    /// Becomes [`Claims::tdx`]; `None` when the evidence has no quote.
    pub tdx: Option<TdxClaims>,
    /// Becomes [`Claims::snp`]; `None` unless the evidence is SEV-SNP.
    pub snp: Option<SnpClaims>,
    /// Becomes [`Claims::app`]; `None` when the evidence has no event log.
    pub app: Option<AppClaims>,
    /// Becomes [`Claims::binding`].
    pub binding: BindingClaims,
}

impl AppraisedEvidence {
    /// The registers and identity a report is compared with.
    pub fn measured(&self) -> Measured {
        Measured {
            registers: self.tdx.as_ref().map(|t| Registers {
                mrtd: t.mrtd.clone(),
                rtmr0: t.rtmr0.clone(),
                rtmr1: t.rtmr1.clone(),
                rtmr2: t.rtmr2.clone(),
                rtmr3: t.rtmr3.clone(),
            }),
            identity: self.app.as_ref().map(|a| IdentityHex {
                app_id: a.app_id.clone(),
                compose_hash: a.compose_hash.clone(),
                instance_id: a.instance_id.clone(),
            }),
        }
    }

    /// Build the evidence claims from decoded evidence and the backend's facts.
    pub fn build(
        evidence: &Evidence,
        facts: Option<&QuoteFacts>,
        expected_report_data: Option<&[u8]>,
    ) -> Self {
        Self::build_with_snp(evidence, facts, None, expected_report_data)
    }

    /// [`Self::build`], with the facts of SEV-SNP evidence ([`crate::snp::SnpVerifier`]).
    pub fn build_with_snp(
        evidence: &Evidence,
        facts: Option<&QuoteFacts>,
        snp: Option<SnpClaims>,
        expected_report_data: Option<&[u8]>,
    ) -> Self {
        let quote = evidence.quote.as_ref();
        let mut tdx = quote.zip(facts).map(|(q, f)| {
            let td = q.td_report();
            let h = |f: fn(&crate::evidence::TdReport) -> String| td.as_ref().map(f);
            TdxClaims {
                verified: f.verified,
                error: f.error.as_ref().map(|e| e.message.clone()),
                error_code: f.error.as_ref().map(|e| e.code),
                root: f.root,
                backend: f.backend.to_string(),
                token_sha256: f.token_sha256.clone(),
                tee_type: q.tee_type(),
                quote_version: q.version(),
                tcb_status: f.tcb_status.clone(),
                advisory_ids: f.advisory_ids.clone(),
                mrtd: h(|t| hex::encode(t.mrtd)),
                rtmr0: h(|t| hex::encode(t.rtmr[0])),
                rtmr1: h(|t| hex::encode(t.rtmr[1])),
                rtmr2: h(|t| hex::encode(t.rtmr[2])),
                rtmr3: h(|t| hex::encode(t.rtmr[3])),
                report_data: hex::encode(q.report_data()),
                mr_config_id: h(|t| hex::encode(t.mr_config_id)),
                mr_owner: h(|t| hex::encode(t.mr_owner)),
                mr_owner_config: h(|t| hex::encode(t.mr_owner_config)),
                mr_seam: h(|t| hex::encode(t.mr_seam)),
                mr_signer_seam: h(|t| hex::encode(t.mr_signer_seam)),
                xfam: h(|t| hex::encode(t.xfam)),
                td_attributes: h(|t| hex::encode(t.td_attributes)),
                tee_tcb_svn: h(|t| hex::encode(t.tee_tcb_svn)),
                debug: td.as_ref().map(|t| t.debug()),
                collateral: f.collateral,
                mr_config: None,
                ita: f.ita.clone(),
                tcb: f.tcb.clone(),
            }
        });

        let boot = evidence.event_log.as_ref().map(|log| {
            let quote_rtmr3 = quote.and_then(|q| q.td_report()).map(|t| t.rtmr[3]);
            app_claims(log, quote_rtmr3, evidence.gpu_evidence.as_deref())
        });
        if let (Some(t), Some(td)) = (tdx.as_mut(), quote.and_then(|q| q.td_report())) {
            // Compared with the boot identity only when the log could be read.
            let identity = boot
                .as_ref()
                .filter(|(app, _)| app.replay_error.is_none())
                .map(|(_, id)| id);
            t.mr_config = Some(MrConfigClaims::read(
                &td.mr_config_id,
                identity,
                evidence.vm_config.as_deref(),
            ));
        }
        let app = boot.map(|(app, _)| app).or_else(|| {
            evidence
                .snp
                .as_ref()
                .and_then(|s| snp_app_claims(&s.mr_config))
        });

        let report_data_consistent = evidence_report_data(evidence)
            .zip(evidence.claimed_report_data.as_ref())
            .map(|(rd, claimed)| pad64(claimed) == Some(rd));
        let tee = if evidence.snp.is_some() {
            Some(Tee::SevSnp)
        } else {
            quote.map(|_| Tee::Tdx)
        };

        let binding = binding_claims(evidence, expected_report_data);

        let vm_config = evidence.vm_config.as_ref().map(|text| {
            serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.clone()))
        });

        AppraisedEvidence {
            evidence: EvidenceClaims {
                kind: evidence.kind,
                tee,
                cert: evidence.certificate.clone(),
                report_data_consistent,
                vm_config,
            },
            tdx,
            snp,
            app,
            binding,
        }
    }

    /// The complete claims for one decision.
    pub fn into_claims(
        self,
        purpose: &str,
        now: u64,
        connection: Option<ConnectionClaims>,
    ) -> Claims {
        Claims {
            claims_version: CLAIMS_VERSION,
            purpose: purpose.to_string(),
            now,
            tee: self.evidence.tee,
            evidence: self.evidence,
            tdx: self.tdx,
            snp: self.snp,
            app: self.app,
            binding: self.binding,
            connection,
            manifest: None,
            report: None,
        }
    }
}

/// The app claims of an event log, and the boot identity they were read from.
fn app_claims(
    log: &crate::evidence::EventLog,
    quote_rtmr3: Option<[u8; 48]>,
    gpu_evidence: Option<&[u8]>,
) -> (AppClaims, AppIdentity) {
    let (events, replay_error) = match log.rtmr3_events() {
        Ok(events) => (events, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let replay = replay_error.is_none().then(|| replay_rtmr3(&events));
    let id = AppIdentity::from_events(&events);
    let key_provider = id.key_provider.clone().map(|kp| match kp {
        Ok(KeyProvider { name, id }) => serde_json::json!({ "name": name, "id": id }),
        Err(raw) => serde_json::Value::String(raw),
    });
    let runtime = id.runtime_events(&events);
    let app = AppClaims {
        attested_by: AppAttestedBy::Rtmr3,
        app_id: id.app_id.as_ref().map(hex::encode),
        app_id_attested_by: id.app_id_attested_by(),
        compose_hash: id.compose_hash.as_ref().map(hex::encode),
        instance_id: id.instance_id.as_ref().map(hex::encode),
        os_image_hash: id.os_image_hash.as_ref().map(hex::encode),
        key_provider,
        init_script_hashes: id.init_script_hashes.iter().map(hex::encode).collect(),
        gpu_policy_hash: id.gpu_policy_hash.as_ref().map(hex::encode),
        gpu_attestation: id.gpu_attestation.as_ref().map(|p| {
            serde_json::from_slice(p)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(p).into()))
        }),
        gpu: id
            .gpu_attestation
            .as_ref()
            .map(|p| GpuClaims::read(p, gpu_evidence)),
        system_ready: id.system_ready_at.is_some(),
        runtime_events: runtime
            .iter()
            .take(MAX_RUNTIME_EVENT_CLAIMS)
            .map(RuntimeEventClaim::of)
            .collect(),
        runtime_events_dropped: runtime.len().saturating_sub(MAX_RUNTIME_EVENT_CLAIMS),
        rtmr3_replayed: replay.is_some() && replay == quote_rtmr3,
        rtmr3_replay: replay.map(hex::encode),
        replay_error,
        events: events
            .iter()
            .map(|e| EventClaim {
                event: e.event.clone(),
                payload: hex::encode(&e.payload),
            })
            .collect(),
    };
    (app, id)
}

/// The `app` claims of SEV-SNP evidence: read from the MrConfigV3 document (the fields
/// dstack writes: `app_id`, `compose_hash`, `instance_id`, `key_provider`,
/// `key_provider_id`, `gpu_policy_hash`). `None` when it is not a JSON object.
fn snp_app_claims(document: &str) -> Option<AppClaims> {
    let doc: serde_json::Value = serde_json::from_str(document).ok()?;
    let doc = doc.as_object()?;
    let text = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let bytes = |k: &str| text(k).and_then(|h| hex::decode(h.trim_start_matches("0x")).ok());
    let key_provider = text("key_provider").map(|name| KeyProvider {
        name,
        id: text("key_provider_id").unwrap_or_default(),
    });
    let id = AppIdentity {
        app_id: bytes("app_id"),
        compose_hash: bytes("compose_hash"),
        instance_id: bytes("instance_id"),
        key_provider: key_provider.map(Ok),
        gpu_policy_hash: bytes("gpu_policy_hash"),
        ..AppIdentity::default()
    };
    Some(AppClaims {
        attested_by: AppAttestedBy::HostData,
        app_id: id.app_id.as_ref().map(hex::encode),
        app_id_attested_by: id.app_id_attested_by(),
        compose_hash: id.compose_hash.as_ref().map(hex::encode),
        instance_id: id.instance_id.as_ref().map(hex::encode),
        // Bound through MEASUREMENT and the image's measurement document, not here.
        os_image_hash: None,
        key_provider: id
            .key_provider
            .as_ref()
            .and_then(|kp| kp.as_ref().ok())
            .map(|kp| serde_json::json!({ "name": kp.name, "id": kp.id })),
        init_script_hashes: Vec::new(),
        gpu_policy_hash: id.gpu_policy_hash.as_ref().map(hex::encode),
        gpu_attestation: None,
        gpu: None,
        system_ready: false,
        runtime_events: Vec::new(),
        runtime_events_dropped: 0,
        rtmr3_replayed: false,
        rtmr3_replay: None,
        replay_error: None,
        events: Vec::new(),
    })
}

/// The report data the TEE signed: the quote's, or the SEV-SNP report's.
fn evidence_report_data(evidence: &Evidence) -> Option<[u8; 64]> {
    match (&evidence.quote, &evidence.snp) {
        (Some(q), _) => Some(q.report_data()),
        (None, Some(s)) => Some(s.report.report_data()),
        (None, None) => None,
    }
}

fn binding_claims(evidence: &Evidence, expected: Option<&[u8]>) -> BindingClaims {
    let quote_rd = evidence_report_data(evidence);
    let (kind, want) = if let Some(cert) = &evidence.certificate {
        (
            BindingKind::RaTlsSpki,
            Some(crate::eventlog::ra_tls_report_data(&cert.spki_der)),
        )
    } else if let Some(expected) = expected {
        (BindingKind::ReportData, pad64(expected))
    } else {
        return BindingClaims {
            kind: BindingKind::None,
            ok: false,
            expected: None,
        };
    };
    BindingClaims {
        kind,
        ok: want.is_some() && quote_rd.is_some() && want == quote_rd,
        expected: want.map(hex::encode),
    }
}

/// dstack pads report data shorter than 64 bytes with zeros.
fn pad64(data: &[u8]) -> Option<[u8; 64]> {
    (data.len() <= 64).then(|| {
        let mut out = [0u8; 64];
        out[..data.len()].copy_from_slice(data);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tee_names_itself_as_the_claims_do() {
        for tee in [Tee::Tdx, Tee::SevSnp] {
            assert_eq!(serde_json::to_value(tee).unwrap(), tee.as_str());
        }
    }

    fn gpu_fixture() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/dstack/gpu-attestation-h100.json"
        ))
        .unwrap()
    }

    /// dstack's nvattest fixture against an event naming its digest (dstack has no event
    /// paired with it: the digest is of the file's exact bytes, as dstack hashes stdout).
    #[test]
    fn gpu_evidence_matches_the_event_that_names_its_digest_and_is_never_signed() {
        let evidence = gpu_fixture();
        let event = br#"{"version":2,"provider":"nvidia","devices":1,"cc_mode":"on","devtools":false,"evidence_sha256":"b969d546cc3781816167264cccaeff4b720d08012546a7fbd8f00f29e49fd4d7"}"#;
        let g = GpuClaims::read(event, Some(&evidence));
        assert_eq!(g.evidence_matches, Some(true));
        assert_eq!(
            (g.provider.as_deref(), g.devices, g.cc_mode.as_deref()),
            (Some("nvidia"), Some(1), Some("on"))
        );
        assert!(!g.signed);
        // One byte more (a trailing newline dropped or added) is other evidence.
        let mut other = evidence.clone();
        other.push(b'\n');
        assert_eq!(
            GpuClaims::read(event, Some(&other)).evidence_matches,
            Some(false)
        );
        let none = GpuClaims::read(event, None);
        assert_eq!((none.evidence_given, none.evidence_matches), (false, None));
        // A payload that is not the JSON object dstack writes: every field null.
        let junk = GpuClaims::read(b"not json", Some(&evidence));
        assert_eq!(junk.evidence_sha256, None);
        assert_eq!(junk.evidence_matches, Some(false));
    }
}
