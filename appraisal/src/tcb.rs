//! TCB lifecycle: Intel's TCB evaluation data sets, and what a platform's status will be
//! when the next one becomes the standard.
//!
//! Intel publishes each TCB recovery (TCB-R) as a new TCB evaluation data number. PCS
//! serves it at once as the `early` set (`update=early`) and makes it the `standard` set
//! twelve months after its `tcbRecoveryEventDate` (Intel, "Intel® PCS Changes", 2025;
//! the promotion of 19→20 on 2026-08-13 took 7 of 22 nodes of near/mpc offline, their
//! issue 4169). The standard set decides; the early set is read beside it to say, ahead
//! of the day, which platforms it will demote and what must rise to recover.
//!
//! Level matching follows Intel's QVL (`tdxEvaluateTCB`, spec 4.1.2.5.2): the platform
//! level is the first whose SGX components and PCESVN do not exceed the PCK
//! certificate's and whose TDX components do not exceed TEE_TCB_SVN (from index 2 when
//! TEE_TCB_SVN[1], the module's major version, is set); then the `TDX_<major>` module
//! identity's first level with `isvsvn <= TEE_TCB_SVN[0]`, whose `OutOfDate` or `Revoked`
//! lowers the platform's status (QVL `convergeTcbStatuses`). dcap-qvl's
//! `TcbLevel::shortfalls` does the per-component comparison.

use dcap_qvl::tcb_info::{SvnComponent, SvnShortfall, TcbInfo, TcbStatus};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::evidence::Quote;

/// Largest signed TCB body read (TCB info, QE identity, evaluation numbers). Intel's are
/// 3 to 9 KiB.
pub const MAX_TCB_BODY_LEN: usize = 256 << 10;
/// Most evaluation data numbers read from one list (Intel serves about three).
pub const MAX_EVAL_NUMBERS: usize = 64;
/// Most TCB levels read from one TCB info (Intel's have about twenty).
pub const MAX_TCB_LEVELS: usize = 256;
/// Seconds in a day.
const DAY: i64 = 86_400;

/// Why TCB data could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcbError {
    /// The body is not the JSON Intel serves.
    #[error("{what} is malformed: {detail}")]
    Malformed {
        /// Which document.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The signature or its certificate chain does not verify.
    #[error("{what} signature does not verify: {detail}")]
    Signature {
        /// Which document.
        what: &'static str,
        /// Which check failed.
        detail: String,
    },
    /// The platform cannot be read from the quote (no PCK certificate).
    #[error("the quote's platform cannot be read: {0}")]
    Platform(String),
}

/// One TCB evaluation data number, as `/tcbevaluationdatanumbers` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvalNumber {
    /// The number (`tcbEvaluationDataNumber`).
    pub number: u32,
    /// Unix seconds of the TCB recovery event it follows (`tcbRecoveryEventDate`).
    pub tcb_recovery_event_date: i64,
    /// Unix seconds from which Intel expects platforms at this TCB (`tcbDate`).
    pub tcb_date: i64,
}

impl EvalNumber {
    /// Unix seconds at which this set becomes Intel's `standard` set: twelve months after
    /// its TCB recovery event.
    pub fn standard_from(&self) -> i64 {
        add_twelve_months(self.tcb_recovery_event_date)
    }
}

/// The signed list of TCB evaluation data numbers Intel still serves, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalNumbers {
    /// `TDX` or `SGX`.
    pub id: String,
    /// Unix seconds after which the list must be fetched again (`nextUpdate`).
    pub next_update: i64,
    /// The numbers, as served.
    pub numbers: Vec<EvalNumber>,
}

impl EvalNumbers {
    /// Read a `/tcbevaluationdatanumbers` response body, its signature checked with the
    /// leaf of `issuer_chain_pem` (the `TCB-Evaluation-Data-Numbers-Issuer-Chain` header,
    /// URL-decoded), which must be signed by `root_der`.
    pub fn from_signed(
        body: &[u8],
        issuer_chain_pem: &[u8],
        root_der: &[u8],
    ) -> Result<Self, TcbError> {
        const WHAT: &str = "the TCB evaluation data numbers";
        let inner = signed_inner(
            WHAT,
            "tcbEvaluationDataNumbers",
            body,
            issuer_chain_pem,
            root_der,
        )?;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Item {
            tcb_evaluation_data_number: u32,
            tcb_recovery_event_date: String,
            tcb_date: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Inner {
            id: String,
            next_update: String,
            tcb_eval_numbers: Vec<Item>,
        }
        let malformed = |detail: String| TcbError::Malformed { what: WHAT, detail };
        let parsed: Inner = serde_json::from_str(inner).map_err(|e| malformed(e.to_string()))?;
        if parsed.tcb_eval_numbers.len() > MAX_EVAL_NUMBERS {
            return Err(malformed(format!(
                "{} numbers, at most {MAX_EVAL_NUMBERS}",
                parsed.tcb_eval_numbers.len()
            )));
        }
        let date = |field: &str, s: &str| {
            parse_date(s).ok_or_else(|| malformed(format!("{field} {s:?} is not an RFC 3339 date")))
        };
        let mut numbers = parsed
            .tcb_eval_numbers
            .iter()
            .map(|n| {
                Ok(EvalNumber {
                    number: n.tcb_evaluation_data_number,
                    tcb_recovery_event_date: date(
                        "tcbRecoveryEventDate",
                        &n.tcb_recovery_event_date,
                    )?,
                    tcb_date: date("tcbDate", &n.tcb_date)?,
                })
            })
            .collect::<Result<Vec<_>, TcbError>>()?;
        numbers.sort_by_key(|n| std::cmp::Reverse(n.number));
        Ok(Self {
            id: parsed.id,
            next_update: date("nextUpdate", &parsed.next_update)?,
            numbers,
        })
    }

    /// The entry for `number`, when Intel still lists it.
    pub fn get(&self, number: u32) -> Option<&EvalNumber> {
        self.numbers.iter().find(|n| n.number == number)
    }
}

/// The inner object of a signed PCS body (`{"<outer>": {...}, "signature": "<hex>"}`),
/// as exact bytes, once its signature verifies.
fn signed_inner<'a>(
    what: &'static str,
    outer: &'static str,
    body: &'a [u8],
    issuer_chain_pem: &[u8],
    root_der: &[u8],
) -> Result<&'a str, TcbError> {
    if body.len() > MAX_TCB_BODY_LEN {
        return Err(TcbError::Malformed {
            what,
            detail: format!("{} bytes, at most {MAX_TCB_BODY_LEN}", body.len()),
        });
    }
    let text = std::str::from_utf8(body).map_err(|e| TcbError::Malformed {
        what,
        detail: e.to_string(),
    })?;
    let value: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| TcbError::Malformed {
            what,
            detail: e.to_string(),
        })?;
    let (Some(inner), Some(signature)) = (value.get(outer), value.get("signature")) else {
        return Err(TcbError::Malformed {
            what,
            detail: format!("expected {{\"{outer}\": …, \"signature\": …}}"),
        });
    };
    let signature: String =
        serde_json::from_str(signature.get()).map_err(|e| TcbError::Malformed {
            what,
            detail: format!("signature: {e}"),
        })?;
    verify_signed(
        what,
        inner.get().as_bytes(),
        &signature,
        issuer_chain_pem,
        root_der,
    )?;
    Ok(inner.get())
}

/// Check a PCS signature: `signature_hex` is r‖s (64 bytes) of ECDSA P-256 with SHA-256
/// over `signed`, made by the first certificate of `issuer_chain_pem` ("Intel SGX TCB
/// Signing"), which `root_der` must have signed.
pub fn verify_signed(
    what: &'static str,
    signed: &[u8],
    signature_hex: &str,
    issuer_chain_pem: &[u8],
    root_der: &[u8],
) -> Result<(), TcbError> {
    let bad = |detail: String| TcbError::Signature { what, detail };
    let signature =
        hex::decode(signature_hex.trim()).map_err(|e| bad(format!("signature: {e}")))?;
    if signature.len() != 64 {
        return Err(bad(format!(
            "{} signature bytes, expected 64",
            signature.len()
        )));
    }
    let leaf_der = x509_parser::pem::Pem::iter_from_buffer(issuer_chain_pem)
        .next()
        .ok_or_else(|| bad("the issuer chain holds no certificate".into()))?
        .map_err(|e| bad(format!("issuer chain PEM: {e}")))?
        .contents;
    let (_, leaf) = X509Certificate::from_der(&leaf_der)
        .map_err(|e| bad(format!("signing certificate: {e}")))?;
    let (_, root) =
        X509Certificate::from_der(root_der).map_err(|e| bad(format!("trust root: {e}")))?;
    if !issued_by(&leaf, &root) {
        return Err(bad(
            "the signing certificate is not signed by the trust root".into(),
        ));
    }
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        &leaf.public_key().subject_public_key.data,
    )
    .verify(signed, &signature)
    .map_err(|_| bad("the body's signature is not the signing certificate's".into()))
}

/// A TCB info as PCS serves it: the exact text, its signature and the issuer chain that
/// signs it. Read beside a quote's collateral for the `early` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTcbInfo {
    /// The `tcbInfo` object, byte for byte as served (the signature covers these bytes).
    pub tcb_info: String,
    /// r‖s, 64 bytes.
    pub signature: Vec<u8>,
    /// The `TCB-Info-Issuer-Chain` (PEM).
    pub issuer_chain: String,
    /// Its `tcbEvaluationDataNumber`.
    pub eval_data_number: u32,
    /// Its `nextUpdate`, unix seconds: it is fetched again after that.
    pub next_update: i64,
    /// The set's QE identity, when the source has it (`qe/identity?update=early`). Set
    /// it before the first [`Self::digest`].
    pub qe_identity: Option<SignedDoc>,
    digest: std::sync::OnceLock<[u8; 32]>,
}

/// A signed PCS document as served: the exact JSON, r‖s, and its issuer chain (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDoc {
    /// The inner object, byte for byte.
    pub json: String,
    /// r‖s, 64 bytes.
    pub signature: Vec<u8>,
    /// The issuer chain (PEM).
    pub issuer_chain: String,
}

impl SignedDoc {
    /// Check its signature under `root_der`.
    pub fn verify(&self, what: &'static str, root_der: &[u8]) -> Result<(), TcbError> {
        if self.json.len() > MAX_TCB_BODY_LEN {
            return Err(TcbError::Malformed {
                what,
                detail: format!("{} bytes", self.json.len()),
            });
        }
        verify_signed(
            what,
            self.json.as_bytes(),
            &hex::encode(&self.signature),
            self.issuer_chain.as_bytes(),
            root_der,
        )
    }
}

impl SignedTcbInfo {
    /// Wrap a TCB info, reading its number and next update.
    pub fn new(
        tcb_info: String,
        signature: Vec<u8>,
        issuer_chain: String,
    ) -> Result<Self, TcbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Head {
            tcb_evaluation_data_number: u32,
            next_update: String,
        }
        let malformed = |detail: String| TcbError::Malformed {
            what: "the TCB info",
            detail,
        };
        if tcb_info.len() > MAX_TCB_BODY_LEN {
            return Err(malformed(format!("{} bytes", tcb_info.len())));
        }
        let head: Head = serde_json::from_str(&tcb_info).map_err(|e| malformed(e.to_string()))?;
        let next_update = parse_date(&head.next_update)
            .ok_or_else(|| malformed(format!("nextUpdate {:?}", head.next_update)))?;
        Ok(Self {
            tcb_info,
            signature,
            issuer_chain,
            eval_data_number: head.tcb_evaluation_data_number,
            next_update,
            qe_identity: None,
            digest: std::sync::OnceLock::new(),
        })
    }

    /// SHA-256 over everything it says (TCB info, signature, QE identity), computed once:
    /// what a memo of its verdicts is keyed by.
    pub fn digest(&self) -> [u8; 32] {
        *self.digest.get_or_init(|| {
            let qe = self.qe_identity.as_ref().map(|q| q.json.as_bytes());
            digest_of(&[
                self.tcb_info.as_bytes(),
                &self.signature,
                qe.unwrap_or_default(),
            ])
        })
    }

    /// Check its signature under `root_der`.
    pub fn verify(&self, root_der: &[u8]) -> Result<(), TcbError> {
        verify_signed(
            "the early TCB info",
            self.tcb_info.as_bytes(),
            &hex::encode(&self.signature),
            self.issuer_chain.as_bytes(),
            root_der,
        )
    }
}

/// The `/tcbevaluationdatanumbers` response as served, checked when read
/// ([`EvalNumbers::from_signed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedList {
    /// The response body, byte for byte.
    pub body: Vec<u8>,
    /// The `TCB-Evaluation-Data-Numbers-Issuer-Chain` (PEM).
    pub issuer_chain: String,
    digest: std::sync::OnceLock<[u8; 32]>,
}

impl SignedList {
    /// A response body and its issuer chain, as served.
    pub fn new(body: Vec<u8>, issuer_chain: String) -> Self {
        Self {
            body,
            issuer_chain,
            digest: std::sync::OnceLock::new(),
        }
    }

    /// The `nextUpdate` the body states, its signature not checked (None when it cannot
    /// be read): only to tell when an offline copy should give way to a fetched one.
    pub fn stated_next_update(&self) -> Option<i64> {
        #[derive(Deserialize)]
        struct Outer {
            #[serde(rename = "tcbEvaluationDataNumbers")]
            inner: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(rename = "nextUpdate")]
            next_update: String,
        }
        let outer: Outer = serde_json::from_slice(&self.body).ok()?;
        parse_date(&outer.inner.next_update)
    }

    /// SHA-256 of the body, computed once.
    pub fn digest(&self) -> [u8; 32] {
        *self.digest.get_or_init(|| digest_of(&[&self.body]))
    }
}

/// SHA-256 over `parts`, each length-prefixed.
fn digest_of(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// `cert` carries `issuer`'s ECDSA P-256 / SHA-256 signature, as every certificate of
/// Intel's SGX/TDX hierarchy does (validity, revocation and the rest are dcap-qvl's).
pub(crate) fn issued_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        &issuer.public_key().subject_public_key.data,
    )
    .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
    .is_ok()
}

/// What TCB level matching needs of a platform: the PCK certificate's SGX TCB
/// components and PCESVN, and the TD's TEE_TCB_SVN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    /// The PCK certificate's FMSPC.
    pub fmspc: [u8; 6],
    /// The PCK certificate's CPUSVN (SGX TCB components).
    pub cpu_svn: [u8; 16],
    /// The PCK certificate's PCESVN.
    pub pce_svn: u16,
    /// The TD report's TEE_TCB_SVN.
    pub tee_tcb_svn: [u8; 16],
    /// The quoting enclave's ISVSVN (its report in the quote's certification data).
    pub qe_isv_svn: u16,
}

impl Platform {
    /// Read the platform of a TDX quote from its PCK certificate (not yet verified: use
    /// it only with a quote that verified).
    pub fn of(quote: &Quote) -> Result<Self, TcbError> {
        Self::of_chain(quote, None)
    }

    /// Read the platform of a TDX quote that verified, from the PCK certificate dcap-qvl
    /// verified: the first of `collateral_chain` (PEM) when the collateral carries one
    /// (dcap-qvl then verifies that chain and never reads the quote's), else the quote's.
    pub fn of_chain(quote: &Quote, collateral_chain: Option<&str>) -> Result<Self, TcbError> {
        let td = quote
            .td_report()
            .ok_or_else(|| TcbError::Platform("not a TDX quote".into()))?;
        // Read as dcap-qvl reads it (see `Quote::pck_chain_der`).
        let chain = match collateral_chain {
            Some(pem) => crate::evidence::pem_certificates(pem.as_bytes())
                .map_err(|e| TcbError::Platform(format!("PCK certificate chain: {e}")))?,
            None => quote
                .pck_chain_der()
                .map_err(|e| TcbError::Platform(format!("{e:#}")))?,
        };
        let leaf = chain
            .first()
            .ok_or_else(|| TcbError::Platform("no PCK certificate".into()))?;
        let ext = dcap_qvl::intel::parse_pck_extension(leaf)
            .map_err(|e| TcbError::Platform(format!("{e:#}")))?;
        // The QE report is an SGX REPORT body: ISVSVN at bytes 258..260, little-endian.
        let qe = quote.parsed().qe_report();
        Ok(Self {
            fmspc: ext.fmspc,
            cpu_svn: ext.cpu_svn,
            pce_svn: ext.pce_svn,
            tee_tcb_svn: td.tee_tcb_svn,
            qe_isv_svn: u16::from_le_bytes([qe[258], qe[259]]),
        })
    }
}

/// One component that must rise for the platform to be `UpToDate` again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fix {
    /// `tdx_module` (TEE_TCB_SVN[0] against the module identity), `sgx[i]` (CPUSVN[i]),
    /// `tdx[i]` (TEE_TCB_SVN[i]) or `pce_svn`.
    pub component: String,
    /// What Intel's TCB info calls it (`type`, else `category`), e.g. "TDX Late Microcode
    /// Update"; `TDX Module` for the module; `null` when the TCB info names nothing.
    pub kind: Option<String>,
    /// The platform's SVN.
    pub have: u16,
    /// The SVN the `UpToDate` level needs.
    pub needs: u16,
}

/// A platform's standing under one TCB info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Standing {
    /// The converged status (`UpToDate`, `OutOfDate`, …), as Intel spells it.
    pub status: String,
    /// Advisories of the matched levels.
    pub advisory_ids: Vec<String>,
    /// The TCB info's `tcbEvaluationDataNumber`.
    pub eval_data_number: u32,
    /// What must rise to reach the newest `UpToDate` level; empty when the platform is
    /// there.
    pub fix: Vec<Fix>,
}

/// Match `platform` against `tcb_info_json` (the exact TCB info text, its signature
/// already checked) as QVL does, and say what would make it `UpToDate`.
pub fn standing(tcb_info_json: &str, platform: &Platform) -> Result<Standing, TcbError> {
    ParsedTcbInfo::parse(tcb_info_json)?.standing(platform)
}

/// A TCB info as [`standing`] reads it, parsed once: a collateral set keeps its own, so
/// that every platform judged under the set does not parse it again.
#[derive(Debug)]
pub struct ParsedTcbInfo {
    info: TcbInfo,
    /// The names Intel gives the SGX and TDX components of the first `UpToDate` level
    /// (`type`, else `category`), by index: what a fix is called.
    sgx_names: Vec<Option<String>>,
    tdx_names: Vec<Option<String>>,
}

const TCB_INFO: &str = "the TCB info";

impl ParsedTcbInfo {
    /// Parse a TCB info JSON body (its signature already checked), within the bounds on
    /// its size and number of levels.
    pub fn parse(tcb_info_json: &str) -> Result<Self, TcbError> {
        let malformed = |detail: String| TcbError::Malformed {
            what: TCB_INFO,
            detail,
        };
        if tcb_info_json.len() > MAX_TCB_BODY_LEN {
            return Err(malformed(format!("{} bytes", tcb_info_json.len())));
        }
        let info: TcbInfo =
            serde_json::from_str(tcb_info_json).map_err(|e| malformed(e.to_string()))?;
        if info.tcb_levels.len() > MAX_TCB_LEVELS {
            return Err(malformed(format!("{} TCB levels", info.tcb_levels.len())));
        }
        // Component names are in the JSON but not in dcap-qvl's types.
        #[derive(Deserialize)]
        struct Names {
            #[serde(rename = "tcbLevels")]
            levels: Vec<NamedLevel>,
        }
        #[derive(Deserialize)]
        struct NamedLevel {
            tcb: NamedTcb,
        }
        #[derive(Deserialize)]
        struct NamedTcb {
            #[serde(default)]
            sgxtcbcomponents: Vec<Named>,
            #[serde(default)]
            tdxtcbcomponents: Vec<Named>,
        }
        #[derive(Deserialize)]
        struct Named {
            #[serde(rename = "type")]
            kind: Option<String>,
            category: Option<String>,
        }
        let (mut sgx_names, mut tdx_names) = (Vec::new(), Vec::new());
        if let Some(i) = info
            .tcb_levels
            .iter()
            .position(|l| l.tcb_status == TcbStatus::UpToDate)
        {
            let names: Names =
                serde_json::from_str(tcb_info_json).map_err(|e| malformed(e.to_string()))?;
            let name = |c: Named| c.kind.or(c.category);
            if let Some(level) = names.levels.into_iter().nth(i) {
                sgx_names = level.tcb.sgxtcbcomponents.into_iter().map(name).collect();
                tdx_names = level.tcb.tdxtcbcomponents.into_iter().map(name).collect();
            }
        }
        Ok(Self {
            info,
            sgx_names,
            tdx_names,
        })
    }

    /// The platform's standing under this TCB info; see [`standing`].
    pub fn standing(&self, platform: &Platform) -> Result<Standing, TcbError> {
        let malformed = |detail: String| TcbError::Malformed {
            what: TCB_INFO,
            detail,
        };
        let info = &self.info;
        if hex::decode(&info.fmspc).ok().as_deref() != Some(&platform.fmspc[..]) {
            return Err(malformed(format!(
                "it is for FMSPC {}, the platform's is {}",
                info.fmspc,
                hex::encode_upper(platform.fmspc)
            )));
        }
        let tee = Some(&platform.tee_tcb_svn);
        let falls = |level: &dcap_qvl::tcb_info::TcbLevel| {
            level
                .shortfalls(&platform.cpu_svn, platform.pce_svn, tee)
                .unwrap_or_else(|_| {
                    vec![SvnShortfall {
                        component: SvnComponent::PceSvn,
                        have: 0,
                        needs: 1,
                    }]
                })
        };
        let matched = info
            .tcb_levels
            .iter()
            .find(|l| falls(l).is_empty())
            .ok_or_else(|| malformed("no TCB level matches the platform".into()))?;
        let mut status = matched.tcb_status;
        let mut advisory_ids = matched.advisory_ids.clone();
        let module = info
            .tdx_module_identity(&platform.tee_tcb_svn)
            .map_err(|e| malformed(format!("{e:#}")))?;
        let mut module_fix = None;
        if let Some(module) = module {
            let level = module
                .tcb_levels
                .iter()
                .find(|l| l.shortfall(&platform.tee_tcb_svn).is_none())
                .ok_or_else(|| {
                    malformed(format!("no {} level matches the TDX module", module.id))
                })?;
            status = converge(status, level.tcb_status);
            for a in &level.advisory_ids {
                if !advisory_ids.contains(a) {
                    advisory_ids.push(a.clone());
                }
            }
            module_fix = module
                .tcb_levels
                .iter()
                .find(|l| l.tcb_status == TcbStatus::UpToDate)
                .and_then(|l| l.shortfall(&platform.tee_tcb_svn));
        }
        let mut fix: Vec<Fix> = match info
            .tcb_levels
            .iter()
            .position(|l| l.tcb_status == TcbStatus::UpToDate)
        {
            Some(i) => falls(&info.tcb_levels[i])
                .into_iter()
                .map(|s| self.label(s))
                .collect(),
            None => Vec::new(),
        };
        fix.extend(module_fix.map(|s| self.label(s)));
        Ok(Standing {
            status: status.to_string(),
            advisory_ids,
            eval_data_number: info.tcb_evaluation_data_number,
            fix,
        })
    }
}

/// A standing lowered by the set's QE identity (`qe_identity_json`, signature already
/// checked) as QVL converges it: the quoting enclave's level is the first with `isvsvn`
/// at most the QE's; an `OutOfDate` or `Revoked` one lowers the status, and a QE below
/// the `UpToDate` level is one more thing to raise (`qe`).
pub fn with_qe(
    mut s: Standing,
    qe_identity_json: &str,
    platform: &Platform,
) -> Result<Standing, TcbError> {
    let malformed = |detail: String| TcbError::Malformed {
        what: "the QE identity",
        detail,
    };
    if qe_identity_json.len() > MAX_TCB_BODY_LEN {
        return Err(malformed(format!("{} bytes", qe_identity_json.len())));
    }
    let qe: dcap_qvl::qe_identity::QeIdentity =
        serde_json::from_str(qe_identity_json).map_err(|e| malformed(e.to_string()))?;
    if qe.tcb_levels.len() > MAX_TCB_LEVELS {
        return Err(malformed(format!("{} TCB levels", qe.tcb_levels.len())));
    }
    let level = qe
        .tcb_levels
        .iter()
        .find(|l| l.tcb.isvsvn <= platform.qe_isv_svn)
        .ok_or_else(|| {
            malformed(format!(
                "no level matches QE ISVSVN {}",
                platform.qe_isv_svn
            ))
        })?;
    let status: TcbStatus = serde_json::from_value(serde_json::Value::from(s.status.clone()))
        .map_err(|e| malformed(e.to_string()))?;
    s.status = converge(status, level.tcb_status).to_string();
    for a in &level.advisory_ids {
        if !s.advisory_ids.contains(a) {
            s.advisory_ids.push(a.clone());
        }
    }
    if let Some(up) = qe
        .tcb_levels
        .iter()
        .find(|l| l.tcb_status == TcbStatus::UpToDate)
        && up.tcb.isvsvn > platform.qe_isv_svn
    {
        s.fix.push(Fix {
            component: "qe".into(),
            kind: Some("TD Quoting Enclave".into()),
            have: platform.qe_isv_svn,
            needs: up.tcb.isvsvn,
        });
    }
    Ok(s)
}

/// QVL's `convergeTcbStatuses`: only an `OutOfDate` or `Revoked` module (or QE) lowers
/// the platform's status.
fn converge(platform: TcbStatus, module: TcbStatus) -> TcbStatus {
    use TcbStatus::*;
    match (module, platform) {
        (Revoked, _) => Revoked,
        (OutOfDate, UpToDate | SWHardeningNeeded) => OutOfDate,
        (OutOfDate, ConfigurationNeeded | ConfigurationAndSWHardeningNeeded) => {
            OutOfDateConfigurationNeeded
        }
        _ => platform,
    }
}

/// A shortfall with its name and Intel's label for the component.
impl ParsedTcbInfo {
    fn label(&self, s: SvnShortfall) -> Fix {
        let named = |names: &[Option<String>], i: u8| names.get(usize::from(i)).cloned().flatten();
        let (component, kind) = match s.component {
            SvnComponent::Sgx(i) => (format!("sgx[{i}]"), named(&self.sgx_names, i)),
            SvnComponent::Tdx(i) => (format!("tdx[{i}]"), named(&self.tdx_names, i)),
            SvnComponent::PceSvn => ("pce_svn".to_string(), None),
            SvnComponent::TdxModuleIsvSvn => {
                ("tdx_module".to_string(), Some("TDX Module".to_string()))
            }
        };
        Fix {
            component,
            kind,
            have: s.have,
            needs: s.needs,
        }
    }
}

/// The early set's verdict on a platform, for claims (`tdx.tcb.early`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EarlyClaims {
    /// The platform's status under the early set.
    pub status: String,
    /// The early set's number.
    pub eval_data_number: u32,
    /// The TCB recovery it follows (RFC 3339 date); `null` when the evaluation numbers
    /// list is not at hand.
    pub tcb_recovery_date: Option<String>,
    /// When the early set becomes the standard one (RFC 3339 date), twelve months after
    /// the recovery; `null` without the list.
    pub standard_from: Option<String>,
    /// Whole days from the appraisal until then (negative once past); `null` without the
    /// list.
    pub days_until: Option<i64>,
}

/// Which platform the TCB levels were matched for (`tdx.tcb.platform`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlatformClaims {
    /// FMSPC (upper-case hex, as PCS writes it).
    pub fmspc: String,
    /// The PCK certificate's CPUSVN (hex).
    pub cpu_svn: String,
    /// The PCK certificate's PCESVN.
    pub pce_svn: u16,
    /// The TD's TEE_TCB_SVN (hex).
    pub tee_tcb_svn: String,
}

impl From<&Platform> for PlatformClaims {
    fn from(p: &Platform) -> Self {
        Self {
            fmspc: hex::encode_upper(p.fmspc),
            cpu_svn: hex::encode(p.cpu_svn),
            pce_svn: p.pce_svn,
            tee_tcb_svn: hex::encode(p.tee_tcb_svn),
        }
    }
}

/// TCB lifecycle claims (`tdx.tcb`; see CLAIMS.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcbClaims {
    /// The platform matched.
    pub platform: PlatformClaims,
    /// The number of the standard TCB info that decided.
    pub eval_data_number: u32,
    /// When that set became the standard one (RFC 3339 date); `null` without the list.
    pub standard_since: Option<String>,
    /// Whole days since then; `null` without the list.
    pub days_since_standard: Option<i64>,
    /// The platform under a newer early set; `null` when there is none.
    pub early: Option<EarlyClaims>,
    /// What must rise for the platform to be `UpToDate` under the newest set read (the
    /// early one when present): empty when it is.
    pub fix: Vec<Fix>,
}

impl TcbClaims {
    /// Claims from the standard standing, the early one (only when its set is newer)
    /// and the evaluation numbers list, at `now` (unix seconds).
    pub fn new(
        platform: &Platform,
        standard: &Standing,
        early: Option<&Standing>,
        numbers: Option<&EvalNumbers>,
        now: u64,
    ) -> Self {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        // A list past its nextUpdate is not believed: Intel may have published a recovery
        // since, and the dates would be claimed from a list that no longer says so.
        let numbers = numbers.filter(|l| {
            let current = now < l.next_update;
            if !current {
                tracing::debug!(next_update = l.next_update, now, "the TCB evaluation numbers list is past its nextUpdate; no recovery dates are claimed");
            }
            current
        });
        let entry = |n: u32| numbers.and_then(|l| l.get(n));
        let standard_since = entry(standard.eval_data_number).map(EvalNumber::standard_from);
        let early = early.filter(|e| e.eval_data_number > standard.eval_data_number);
        Self {
            platform: platform.into(),
            eval_data_number: standard.eval_data_number,
            standard_since: standard_since.map(date_text),
            days_since_standard: standard_since.map(|t| (now - t).div_euclid(DAY)),
            early: early.map(|e| {
                let recovery = entry(e.eval_data_number);
                let from = recovery.map(EvalNumber::standard_from);
                EarlyClaims {
                    status: e.status.clone(),
                    eval_data_number: e.eval_data_number,
                    tcb_recovery_date: recovery.map(|r| date_text(r.tcb_recovery_event_date)),
                    standard_from: from.map(date_text),
                    days_until: from.map(|t| (t - now).div_euclid(DAY)),
                }
            }),
            fix: early.unwrap_or(standard).fix.clone(),
        }
    }
}

/// Unix seconds of an RFC 3339 date.
fn parse_date(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// An RFC 3339 date (UTC) of unix seconds.
fn date_text(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The same instant twelve calendar months later (29 February becomes 28 February).
fn add_twelve_months(t: i64) -> i64 {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(t) else {
        return t;
    };
    let year = at.year() + 1;
    let date = time::Date::from_calendar_date(year, at.month(), at.day())
        .or_else(|_| time::Date::from_calendar_date(year, at.month(), at.day() - 1));
    date.map(|d| at.replace_date(d).unix_timestamp())
        .unwrap_or(t + 365 * DAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn testdata(p: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata")
            .join(p)
    }

    fn intel_root() -> Vec<u8> {
        include_bytes!("backend/intel_root_ca.der").to_vec()
    }

    fn quote() -> Quote {
        crate::evidence::decode_quote_bytes(&std::fs::read(testdata("dcap/tdx_quote")).unwrap())
            .unwrap()
    }

    fn tcb_info(file: &str) -> String {
        let c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(testdata(file)).unwrap()).unwrap();
        c["tcb_info"].as_str().unwrap().to_string()
    }

    #[test]
    fn intels_evaluation_numbers_verify_and_read() {
        let n = EvalNumbers::from_signed(
            &std::fs::read(testdata("pcs/tcbevaluationdatanumbers.json")).unwrap(),
            &std::fs::read(testdata("pcs/tcbevaluationdatanumbers.issuer_chain.pem")).unwrap(),
            &intel_root(),
        )
        .unwrap();
        assert_eq!(n.id, "TDX");
        let got: Vec<u32> = n.numbers.iter().map(|n| n.number).collect();
        assert_eq!(got, [19, 18, 17]);
        // TCB-R 19 was 2025-05-13: standard on 2026-05-13.
        assert_eq!(
            date_text(n.get(19).unwrap().standard_from()),
            "2026-05-13T00:00:00Z"
        );
    }

    #[test]
    fn a_changed_number_or_another_root_is_refused() {
        let body = std::fs::read(testdata("pcs/tcbevaluationdatanumbers.json")).unwrap();
        let chain =
            std::fs::read(testdata("pcs/tcbevaluationdatanumbers.issuer_chain.pem")).unwrap();
        let text = String::from_utf8(body.clone()).unwrap();
        let forged = text.replacen(
            "\"tcbEvaluationDataNumber\":19",
            "\"tcbEvaluationDataNumber\":99",
            1,
        );
        assert_ne!(forged, text);
        let e = EvalNumbers::from_signed(forged.as_bytes(), &chain, &intel_root()).unwrap_err();
        assert!(matches!(e, TcbError::Signature { .. }), "{e}");
        // The chain's second certificate is Intel's root itself.
        let other = x509_parser::pem::Pem::iter_from_buffer(&chain)
            .nth(1)
            .unwrap()
            .unwrap()
            .contents;
        assert!(EvalNumbers::from_signed(&body, &chain, &other).is_ok());
        let leaf = x509_parser::pem::Pem::iter_from_buffer(&chain)
            .next()
            .unwrap()
            .unwrap()
            .contents;
        let e = EvalNumbers::from_signed(&body, &chain, &leaf).unwrap_err();
        assert!(
            e.to_string().contains("not signed by the trust root"),
            "{e}"
        );
        let e = EvalNumbers::from_signed(&vec![b' '; MAX_TCB_BODY_LEN + 1], &chain, &intel_root())
            .unwrap_err();
        assert!(matches!(e, TcbError::Malformed { .. }), "{e}");
    }

    /// dcap-qvl's sample platform (FMSPC B0C06F000000) is UpToDate under evaluation data
    /// number 17 and OutOfDate under 20, which TCB-R 20 (2025-08-12) brought: the
    /// near/mpc incident's shortfalls (their issue 4228).
    #[test]
    fn the_sample_platform_is_demoted_by_set_20_and_the_fix_is_named() {
        let platform = Platform::of(&quote()).unwrap();
        assert_eq!(hex::encode_upper(platform.fmspc), "B0C06F000000");
        let standard = standing(&tcb_info("dcap/tdx_quote_collateral.json"), &platform).unwrap();
        assert_eq!(standard.status, "UpToDate");
        assert_eq!(standard.eval_data_number, 17);
        assert!(standard.fix.is_empty(), "{:?}", standard.fix);
        let early = standing(&tcb_info("pcs/B0C06F000000-eval20.early.json"), &platform).unwrap();
        assert_eq!(early.status, "OutOfDate");
        assert_eq!(early.eval_data_number, 20);
        let fix: Vec<(&str, Option<&str>, u16, u16)> = early
            .fix
            .iter()
            .map(|f| (f.component.as_str(), f.kind.as_deref(), f.have, f.needs))
            .collect();
        assert_eq!(
            fix,
            [
                ("sgx[0]", Some("Early Microcode Update"), 3, 4),
                ("sgx[1]", Some("SGX Late Microcode Update"), 3, 4),
                ("tdx[2]", Some("TDX Late Microcode Update"), 3, 4),
                ("tdx_module", Some("TDX Module"), 6, 11),
            ]
        );
    }

    #[test]
    fn the_quoting_enclave_is_matched_and_named_when_behind() {
        let platform = Platform::of(&quote()).unwrap();
        assert_eq!(platform.qe_isv_svn, 6);
        let qe = |file: &str| {
            let c: serde_json::Value =
                serde_json::from_slice(&std::fs::read(testdata(file)).unwrap()).unwrap();
            c["qe_identity"].as_str().unwrap().to_string()
        };
        let early = standing(&tcb_info("pcs/B0C06F000000-eval20.early.json"), &platform).unwrap();
        // Intel's QE identity of set 20 still wants ISVSVN 4: nothing more to raise.
        let same = with_qe(
            early.clone(),
            &qe("pcs/B0C06F000000-eval20.early.json"),
            &platform,
        )
        .unwrap();
        assert_eq!(same, early);
        // A set that wanted QE 8 would add the QE to the fix; one with no level for 6 is
        // not a set this platform can be judged by.
        let raised = qe("pcs/B0C06F000000-eval20.early.json").replace(
            "\"tcbLevels\":[{\"tcb\":{\"isvsvn\":4}",
            "\"tcbLevels\":[{\"tcb\":{\"isvsvn\":8},\"tcbDate\":\"2026-01-01T00:00:00Z\",\"tcbStatus\":\"UpToDate\"},{\"tcb\":{\"isvsvn\":4}",
        );
        assert_ne!(raised, qe("pcs/B0C06F000000-eval20.early.json"));
        let s = with_qe(early.clone(), &raised, &platform).unwrap();
        assert_eq!(s.fix.last().unwrap().component, "qe");
        assert_eq!(
            (s.fix.last().unwrap().have, s.fix.last().unwrap().needs),
            (6, 8)
        );
    }

    #[test]
    fn claims_count_days_to_the_promotion_from_the_recovery_date() {
        let s = |n: u32, status: &str| Standing {
            status: status.into(),
            advisory_ids: vec![],
            eval_data_number: n,
            fix: vec![],
        };
        let mut numbers = EvalNumbers {
            id: "TDX".into(),
            next_update: parse_date("2026-08-01T00:00:00Z").unwrap(),
            numbers: vec![
                EvalNumber {
                    number: 20,
                    tcb_recovery_event_date: parse_date("2025-08-12T00:00:00Z").unwrap(),
                    tcb_date: 0,
                },
                EvalNumber {
                    number: 19,
                    tcb_recovery_event_date: parse_date("2025-05-13T00:00:00Z").unwrap(),
                    tcb_date: 0,
                },
            ],
        };
        let now = parse_date("2026-07-14T00:00:00Z").unwrap() as u64;
        let p = Platform {
            fmspc: [0xb0, 0xc0, 0x6f, 0, 0, 0],
            cpu_svn: [0; 16],
            pce_svn: 11,
            tee_tcb_svn: [0; 16],
            qe_isv_svn: 6,
        };
        let c = TcbClaims::new(
            &p,
            &s(19, "UpToDate"),
            Some(&s(20, "OutOfDate")),
            Some(&numbers),
            now,
        );
        let early = c.early.unwrap();
        assert_eq!(early.standard_from.as_deref(), Some("2026-08-12T00:00:00Z"));
        assert_eq!(early.days_until, Some(29));
        assert_eq!(c.days_since_standard, Some(62));
        // An early set no newer than the standard one is no forecast.
        let same = TcbClaims::new(
            &p,
            &s(19, "UpToDate"),
            Some(&s(19, "UpToDate")),
            Some(&numbers),
            now,
        );
        assert!(same.early.is_none());
        // Without the list, the status is still known, the dates are not.
        let blind = TcbClaims::new(&p, &s(19, "UpToDate"), Some(&s(20, "OutOfDate")), None, now);
        assert_eq!(blind.early.unwrap().days_until, None);
        // Nor with a list past its nextUpdate: it is as good as none.
        numbers.next_update = now as i64;
        let stale = TcbClaims::new(
            &p,
            &s(19, "UpToDate"),
            Some(&s(20, "OutOfDate")),
            Some(&numbers),
            now,
        );
        assert_eq!(stale.days_since_standard, None);
        let early = stale.early.unwrap();
        assert_eq!(
            (early.status.as_str(), early.days_until),
            ("OutOfDate", None)
        );
        assert_eq!(
            add_twelve_months(parse_date("2024-02-29T00:00:00Z").unwrap()),
            parse_date("2025-02-28T00:00:00Z").unwrap()
        );
    }
}
