//! A development DCAP PKI, derived deterministically from a 32-byte seed.
//!
//! It mirrors Intel's SGX/TDX provisioning PKI closely enough that dcap-qvl verifies its
//! TDX quotes for real, with every signature checked, when it is given this PKI's root
//! instead of Intel's:
//!
//! ```text
//! TeeSQL Development DCAP Root CA (self-signed)          root CA CRL
//! ├── TeeSQL Development SGX PCK Platform CA             PCK CRL
//! │   └── TeeSQL Development SGX PCK Certificate         (Intel SGX extension: FMSPC, SVNs, ...)
//! │         signs the QE report, which binds the attestation key
//! │           which signs the quote (header + TD report)
//! └── TeeSQL Development SGX TCB Signing                 signs TCB Info and QE Identity
//! ```
//!
//! Every key comes from `SHA-256(seed || label)` (see [`SeededKey::derive`]), the
//! certificates have fixed validity (2025-01-01T00:00:00Z to 2049-12-31T23:59:59Z) and
//! serial numbers, and all ECDSA signatures are RFC 6979 deterministic, so the same seed
//! always gives byte-identical certificates, quotes and collateral. Quotes verify under
//! this root only, never under Intel's.
//!
//! The emulated platform is fixed: one FMSPC (derived from the seed), one TCB level
//! (`UpToDate`) that the PCK certificate and the quotes meet, a TDX 1.0 report in a
//! v4 quote, and a TD QE with Intel's real QE identity values (MRSIGNER, ISVPRODID 2).

mod encoding;

use std::fmt;

use dcap_qvl::QuoteCollateralV3;
use p256::ecdsa::{Signature, SigningKey as P256SigningKey, VerifyingKey, signature::Signer};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, SerialNumber,
};
use serde::Serialize;
use sha2::{Digest, Sha256, Sha384};

use encoding::{
    SGX_EXTENSION_OID, SgxEntry, SgxValue, offset_date_time, pem, percent_encode, rfc3339,
};

// ---------------------------------------------------------------------------------------
// Fixed identity of the emulated platform
// ---------------------------------------------------------------------------------------

/// Common name of the root CA.
const ROOT_CN: &str = "TeeSQL Development DCAP Root CA (NOT FOR PRODUCTION)";
/// Common name of the PCK CA. Verifiers classify a PCK CA by "Platform" / "Processor" in
/// the issuer DN of the PCK certificate, so it must contain "Platform" (and not "Processor").
const PCK_CA_CN: &str = "TeeSQL Development SGX PCK Platform CA";
/// Common name of the PCK (leaf) certificate.
const PCK_LEAF_CN: &str = "TeeSQL Development SGX PCK Certificate";
/// Common name of the TCB Info / QE Identity signing certificate.
const TCB_SIGNING_CN: &str = "TeeSQL Development SGX TCB Signing";
/// Organization of every certificate.
const ORGANIZATION: &str = "TeeSQL Development (NOT FOR PRODUCTION)";

/// Certificate validity: 2025-01-01T00:00:00Z ..= 2049-12-31T23:59:59Z.
const CERT_NOT_BEFORE: u64 = 1_735_689_600;
const CERT_NOT_AFTER: u64 = 2_524_607_999;

/// Key derivation labels (domain separation; `SeededKey::derive` is public, so these are
/// prefixed to stay clear of labels other modules use).
const LABEL_ROOT: &str = "teesql-dev-dcap/root-ca";
const LABEL_PCK_CA: &str = "teesql-dev-dcap/pck-platform-ca";
const LABEL_PCK_LEAF: &str = "teesql-dev-dcap/pck-leaf";
const LABEL_TCB_SIGNING: &str = "teesql-dev-dcap/tcb-signing";
const LABEL_ATTESTATION: &str = "teesql-dev-dcap/attestation-key";

/// Quote header constants.
const QUOTE_VERSION: u16 = 4;
const ATTESTATION_KEY_TYPE_ECDSA_P256: u16 = 2;
const TEE_TYPE_TDX: u32 = 0x81;
/// Certification data types.
const CERT_DATA_PCK_CHAIN: u16 = 5;
const CERT_DATA_QE_REPORT: u16 = 6;

/// PCE identity and SVNs in the PCK certificate (and the one TCB level).
const PCE_ID: [u8; 2] = [0x00, 0x00];
const PCE_SVN: u16 = 13;
const CPU_SVN: [u8; 16] = [
    0x07, 0x07, 0x02, 0x02, 0x03, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];
/// SGX type "Scalable" (what TDX-capable Xeon platforms have).
const SGX_TYPE_SCALABLE: i64 = 1;

/// TD QE identity (Intel's real values for the TD QE).
const TD_QE_MRSIGNER: [u8; 32] = [
    0xdc, 0x9e, 0x2a, 0x7c, 0x6f, 0x94, 0x8f, 0x17, 0x47, 0x4e, 0x34, 0xa7, 0xfc, 0x43, 0xed, 0x03,
    0x0f, 0x7c, 0x15, 0x63, 0xf1, 0xba, 0xbd, 0xdf, 0x63, 0x40, 0xc8, 0x2e, 0x0e, 0x54, 0xa8, 0xc5,
];
const TD_QE_ISVPRODID: u16 = 2;
const TD_QE_ISVSVN: u16 = 4;
const TD_QE_MISCSELECT: u32 = 0;
const TD_QE_MISCSELECT_MASK: u32 = 0xffff_ffff;
/// INIT | MODE64BIT (not DEBUG).
const TD_QE_ATTRIBUTES: [u8; 16] = [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const TD_QE_ATTRIBUTES_MASK: [u8; 16] = [
    0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
];
/// QE authentication data (32 bytes, as Intel's QE produces: 0x00..=0x1f).
const QE_AUTH_DATA: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];

/// TDX module identity (Intel's TDX module MRSIGNER is all zeros).
const TDX_MODULE_MRSIGNER: [u8; 48] = [0; 48];
const TDX_MODULE_ATTRIBUTES: [u8; 8] = [0; 8];
const TDX_MODULE_ATTRIBUTES_MASK: [u8; 8] = [0xff; 8];

/// Date of the single TCB level (platform, TDX module and QE).
const TCB_DATE: &str = "2025-01-01T00:00:00Z";

/// The advisory a rehearsed TCB recovery names (not an Intel one).
pub const DEV_RECOVERY_ADVISORY: &str = "INTEL-SA-DEV-TCBR";

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a development PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    /// No valid P-256 scalar could be derived for a label (astronomically unlikely).
    #[error("could not derive a P-256 key for label {0:?}")]
    KeyDerivation(String),
    /// Building or signing a certificate or CRL failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// An ECDSA signature could not be produced.
    #[error("signing: {0}")]
    Signing(String),
    /// The collateral window cannot be represented (zero length, overflow, or beyond
    /// year 9999).
    #[error("invalid collateral window: {0}")]
    InvalidWindow(String),
    /// Serializing TCB Info / QE Identity failed.
    #[error("JSON: {0}")]
    Json(String),
    /// A quote field does not fit its length prefix.
    #[error("quote encoding: {0}")]
    Encoding(String),
}

fn cert_err(what: &'static str) -> impl Fn(rcgen::Error) -> DevPkiError {
    move |e| DevPkiError::Certificate(format!("{what}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Seeded P-256 keys
// ---------------------------------------------------------------------------------------

/// A P-256 key derived from a seed and a label, usable as an rcgen signing key. Its
/// signatures are deterministic (RFC 6979 with SHA-256).
#[derive(Clone)]
pub struct SeededKey {
    key: P256SigningKey,
    /// Uncompressed SEC1 public key (`04 || X || Y`), what rcgen puts in the SPKI.
    public_sec1: Vec<u8>,
}

impl fmt::Debug for SeededKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeededKey")
            .field("public_key", &hex::encode(&self.public_sec1))
            .finish_non_exhaustive()
    }
}

impl SeededKey {
    /// How many counters are tried before giving up (each fails with probability ~2^-32).
    const MAX_ATTEMPTS: u32 = 64;

    /// The key for `label`: the scalar is `SHA-256(seed || label)`; if that is zero or not
    /// below the group order, `SHA-256(seed || label || counter_be32)` for counter 1, 2, ...
    pub fn derive(seed: &[u8; 32], label: &str) -> Result<Self, DevPkiError> {
        for counter in 0..Self::MAX_ATTEMPTS {
            let mut hasher = Sha256::new();
            hasher.update(seed);
            hasher.update(label.as_bytes());
            if counter > 0 {
                hasher.update(counter.to_be_bytes());
            }
            let scalar = hasher.finalize();
            if let Ok(key) = P256SigningKey::from_bytes(&scalar) {
                let public_sec1 = VerifyingKey::from(&key)
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec();
                return Ok(Self { key, public_sec1 });
            }
        }
        Err(DevPkiError::KeyDerivation(label.to_owned()))
    }

    /// The public key as raw `X || Y` (the quote's attestation key format).
    pub fn public_key_raw(&self) -> [u8; 64] {
        let mut raw = [0u8; 64];
        // `public_sec1` is `04 || X || Y`: 65 bytes.
        if let Some(xy) = self.public_sec1.get(1..65) {
            raw.copy_from_slice(xy);
        }
        raw
    }

    /// The ECDSA P-256/SHA-256 signature of `msg`, deterministic (RFC 6979).
    fn signature(&self, msg: &[u8]) -> Result<Signature, DevPkiError> {
        self.key
            .try_sign(msg)
            .map_err(|e| DevPkiError::Signing(e.to_string()))
    }

    /// Raw `r || s` signature, the format of DCAP quotes and Intel's collateral.
    fn sign_raw(&self, msg: &[u8]) -> Result<[u8; 64], DevPkiError> {
        let sig = self.signature(msg)?;
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&sig.to_bytes());
        Ok(raw)
    }
}

impl rcgen::PublicKeyData for SeededKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_sec1
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for SeededKey {
    /// DER `Ecdsa-Sig-Value`, as X.509 certificates and CRLs carry it.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig = self
            .signature(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// 32 bytes derived from the seed for a non-key value (identifiers, serial numbers).
fn derive_bytes(seed: &[u8; 32], label: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(seed);
    hasher.update(label.as_bytes());
    hasher.finalize().into()
}

/// A positive 16-byte certificate serial number derived from the seed.
fn derive_serial(seed: &[u8; 32], label: &str) -> SerialNumber {
    let bytes = derive_bytes(seed, &format!("teesql-dev-dcap/serial/{label}"));
    let mut serial = bytes[..16].to_vec();
    serial[0] &= 0x7f;
    if serial[0] == 0 {
        serial[0] = 0x01;
    }
    SerialNumber::from(serial)
}

// ---------------------------------------------------------------------------------------
// TD report
// ---------------------------------------------------------------------------------------

/// The TD report fields a caller picks; everything else (TEE TCB SVN, TDX module signer
/// and attributes) gets values matching the collateral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevTdReport {
    /// MRTD: the measurement of the initial TD contents.
    pub mrtd: [u8; 48],
    /// RTMR0..RTMR3.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA: 64 bytes the TD binds to the quote.
    pub report_data: [u8; 64],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// TD attributes (little-endian bit field). dcap-qvl rejects DEBUG (bit 0), profiling
    /// bits, reserved bits, MIGRATABLE, and a clear SEPT_VE_DISABLE (bit 28).
    pub td_attributes: [u8; 8],
    /// XFAM.
    pub xfam: [u8; 8],
    /// MRSEAM: the TDX module measurement (not checked by dcap-qvl).
    pub mr_seam: [u8; 48],
}

impl Default for DevTdReport {
    /// Zero measurements and report data, `xfam` = `e702060000000000`, `td_attributes` =
    /// `0000001000000000` (SEPT_VE_DISABLE only: not debug), and a fixed non-zero `mr_seam`
    /// (SHA-384 of "TeeSQL development TDX module").
    fn default() -> Self {
        Self {
            mrtd: [0; 48],
            rtmr: [[0; 48]; 4],
            report_data: [0; 64],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            td_attributes: [0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00],
            xfam: [0xe7, 0x02, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00],
            mr_seam: Sha384::digest(b"TeeSQL development TDX module").into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The PKI
// ---------------------------------------------------------------------------------------

/// A CA: its parameters (for issuing), key and certificate.
#[derive(Clone)]
struct Ca {
    params: CertificateParams,
    key: SeededKey,
    der: Vec<u8>,
}

impl Ca {
    fn issuer(&self) -> Issuer<'_, &SeededKey> {
        Issuer::from_params(&self.params, &self.key)
    }
}

/// The development DCAP PKI: keys and certificates derived from a seed. See the module
/// documentation.
#[derive(Clone)]
pub struct DevPki {
    root: Ca,
    pck_ca: Ca,
    pck_leaf_der: Vec<u8>,
    tcb_signing_key: SeededKey,
    tcb_signing_der: Vec<u8>,
    attestation_key: SeededKey,
    fmspc: [u8; 6],
    qe_id: [u8; 16],
    /// `[PCK leaf, PCK CA, root]`, PEM: the quote's certification data.
    pck_chain_pem: String,
    /// `[PCK CA, root]`, PEM.
    pck_crl_issuer_chain_pem: String,
    /// `[TCB signing, root]`, PEM.
    tcb_issuer_chain_pem: String,
    /// The quote's auth data after the ISV signature (attestation key, QE report and its
    /// signature, QE auth data, PCK chain); the same for every quote.
    auth_data_tail: Vec<u8>,
    /// The platform's TCB level as its TCB Info states it.
    platform_tcb: PlatformTcb,
    /// The platform's PPID, in the PCK certificate's SGX extension.
    ppid: [u8; 16],
    /// A TCB recovery the platform is caught by, when one is rehearsed.
    recovery: Option<TcbRecovery>,
}

/// A TCB recovery of the development platform, to rehearse Intel's: the next TCB
/// evaluation data set ([`DevPki::RECOVERY_EVALUATION_DATA_NUMBER`]) requires TDX module
/// SVN 6 where the platform has 5, so it rates the platform `OutOfDate`. It is served as
/// `update=early` at once and as `update=standard` from `standard_from` on, like Intel's
/// sets twelve months after their recovery event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcbRecovery {
    /// When the set becomes (or became) the standard one, unix seconds.
    pub standard_from: i64,
}

impl TcbRecovery {
    /// A recovery whose set becomes standard `days` days from now (negative: ago).
    pub fn in_days(days: i64) -> Self {
        let now = i64::try_from(teesql_appraisal::Clock::System.now()).unwrap_or(i64::MAX);
        Self {
            standard_from: now.saturating_add(days.saturating_mul(86_400)),
        }
    }

    /// The recovery event: twelve months before the set becomes standard.
    pub fn event_date(&self) -> i64 {
        let Ok(at) = time::OffsetDateTime::from_unix_timestamp(self.standard_from) else {
            return self.standard_from;
        };
        let year = at.year() - 1;
        time::Date::from_calendar_date(year, at.month(), at.day())
            .or_else(|_| time::Date::from_calendar_date(year, at.month(), at.day() - 1))
            .map(|d| at.replace_date(d).unix_timestamp())
            .unwrap_or(self.standard_from - 365 * 86_400)
    }
}

/// The status (and advisories) of the one TCB level the development platform matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformTcb {
    /// `UpToDate`, `SWHardeningNeeded`, `OutOfDate`, `ConfigurationNeeded`, …
    pub status: String,
    /// Intel security advisory IDs, e.g. `INTEL-SA-00837`.
    pub advisory_ids: Vec<String>,
}

impl Default for PlatformTcb {
    fn default() -> Self {
        Self {
            status: "UpToDate".into(),
            advisory_ids: Vec::new(),
        }
    }
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPki")
            .field("root_sha256", &hex::encode(Sha256::digest(&self.root.der)))
            .field("fmspc", &hex::encode(self.fmspc))
            .finish_non_exhaustive()
    }
}

/// The collateral validity window, in the forms the JSON and the CRLs need.
struct Window {
    this_update: time::OffsetDateTime,
    next_update: time::OffsetDateTime,
    issue_date: String,
    next_update_str: String,
}

impl Window {
    fn new(issued_at: u64, validity_secs: u64) -> Result<Self, DevPkiError> {
        let bad = |msg: String| DevPkiError::InvalidWindow(msg);
        if validity_secs == 0 {
            return Err(bad("validity_secs must be positive".into()));
        }
        let end = issued_at
            .checked_add(validity_secs)
            .ok_or_else(|| bad("issued_at + validity_secs overflows".into()))?;
        let beyond = |t: u64| bad(format!("{t} is beyond 9999-12-31T23:59:59Z"));
        Ok(Self {
            this_update: offset_date_time(issued_at).ok_or_else(|| beyond(issued_at))?,
            next_update: offset_date_time(end).ok_or_else(|| beyond(end))?,
            issue_date: rfc3339(issued_at).ok_or_else(|| beyond(issued_at))?,
            next_update_str: rfc3339(end).ok_or_else(|| beyond(end))?,
        })
    }
}

impl DevPki {
    /// `tcbEvaluationDataNumber` of the TCB Info and QE Identity.
    pub const TCB_EVALUATION_DATA_NUMBER: u32 = 17;

    /// The set a rehearsed TCB recovery publishes ([`TcbRecovery`]).
    pub const RECOVERY_EVALUATION_DATA_NUMBER: u32 = 18;

    /// TEE_TCB_SVN of every quote: TDX module SVN 5, major version 1 (so TCB Info carries
    /// a `TDX_01` module identity), SEAM loader SVN 2.
    pub const TEE_TCB_SVN: [u8; 16] = [5, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    /// Everything derived from `seed`: keys via `SHA-256(seed || label)` (see
    /// [`SeededKey::derive`]); certificates with fixed validity (2025-01-01T00:00:00Z to
    /// 2049-12-31T23:59:59Z), serial numbers derived from the seed and deterministic
    /// ECDSA signatures, so the same seed gives byte-identical certificates.
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, DevPkiError> {
        let root_key = SeededKey::derive(&seed, LABEL_ROOT)?;
        let pck_ca_key = SeededKey::derive(&seed, LABEL_PCK_CA)?;
        let pck_leaf_key = SeededKey::derive(&seed, LABEL_PCK_LEAF)?;
        let tcb_signing_key = SeededKey::derive(&seed, LABEL_TCB_SIGNING)?;
        let attestation_key = SeededKey::derive(&seed, LABEL_ATTESTATION)?;

        let mut fmspc = [0u8; 6];
        fmspc.copy_from_slice(&derive_bytes(&seed, "teesql-dev-dcap/fmspc")[..6]);
        let mut qe_id = [0u8; 16];
        qe_id.copy_from_slice(&derive_bytes(&seed, "teesql-dev-dcap/qe-id")[..16]);
        let mut ppid = [0u8; 16];
        ppid.copy_from_slice(&derive_bytes(&seed, "teesql-dev-dcap/ppid")[..16]);
        let mut platform_instance_id = [0u8; 16];
        platform_instance_id
            .copy_from_slice(&derive_bytes(&seed, "teesql-dev-dcap/platform-instance-id")[..16]);

        // Root CA (self-signed, path length 1 like Intel's).
        let root_params = ca_params(ROOT_CN, derive_serial(&seed, "root-ca"), 1)?;
        let root_der = root_params
            .self_signed(&root_key)
            .map_err(cert_err("root CA"))?
            .der()
            .to_vec();
        let root = Ca {
            params: root_params,
            key: root_key,
            der: root_der,
        };

        // PCK Platform CA.
        let pck_ca_params = ca_params(PCK_CA_CN, derive_serial(&seed, "pck-platform-ca"), 0)?;
        let pck_ca_der = pck_ca_params
            .signed_by(&pck_ca_key, &root.issuer())
            .map_err(cert_err("PCK platform CA"))?
            .der()
            .to_vec();
        let pck_ca = Ca {
            params: pck_ca_params,
            key: pck_ca_key,
            der: pck_ca_der,
        };

        // TCB signing certificate.
        let tcb_signing_der = leaf_params(TCB_SIGNING_CN, derive_serial(&seed, "tcb-signing"))?
            .signed_by(&tcb_signing_key, &root.issuer())
            .map_err(cert_err("TCB signing certificate"))?
            .der()
            .to_vec();

        // PCK certificate with the Intel SGX extension.
        let mut pck_params = leaf_params(PCK_LEAF_CN, derive_serial(&seed, "pck-leaf"))?;
        pck_params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                SGX_EXTENSION_OID,
                sgx_extension(&ppid, &fmspc, &platform_instance_id),
            ));
        let pck_leaf_der = pck_params
            .signed_by(&pck_leaf_key, &pck_ca.issuer())
            .map_err(cert_err("PCK certificate"))?
            .der()
            .to_vec();

        let root_pem = pem("CERTIFICATE", &root.der);
        let pck_ca_pem = pem("CERTIFICATE", &pck_ca.der);
        let pck_chain_pem = format!(
            "{}{pck_ca_pem}{root_pem}",
            pem("CERTIFICATE", &pck_leaf_der)
        );
        let pck_crl_issuer_chain_pem = format!("{pck_ca_pem}{root_pem}");
        let tcb_issuer_chain_pem = format!("{}{root_pem}", pem("CERTIFICATE", &tcb_signing_der));

        let auth_data_tail = auth_data_tail(&attestation_key, &pck_leaf_key, &pck_chain_pem)?;

        Ok(Self {
            root,
            pck_ca,
            pck_leaf_der,
            tcb_signing_key,
            tcb_signing_der,
            attestation_key,
            fmspc,
            qe_id,
            pck_chain_pem,
            pck_crl_issuer_chain_pem,
            tcb_issuer_chain_pem,
            auth_data_tail,
            platform_tcb: PlatformTcb::default(),
            ppid,
            recovery: None,
        })
    }

    /// Rehearse a TCB recovery (see [`TcbRecovery`]).
    pub fn with_tcb_recovery(mut self, recovery: TcbRecovery) -> Self {
        self.recovery = Some(recovery);
        self
    }

    /// The TCB evaluation data set `update=standard` serves at `now` (unix seconds).
    pub fn standard_set(&self, now: i64) -> u32 {
        match self.recovery {
            Some(r) if now >= r.standard_from => Self::RECOVERY_EVALUATION_DATA_NUMBER,
            _ => Self::TCB_EVALUATION_DATA_NUMBER,
        }
    }

    /// The set `update=early` serves: the recovery's when one is rehearsed.
    pub fn early_set(&self) -> u32 {
        match self.recovery {
            Some(_) => Self::RECOVERY_EVALUATION_DATA_NUMBER,
            None => Self::TCB_EVALUATION_DATA_NUMBER,
        }
    }

    /// The `/tcbevaluationdatanumbers` body, signed like Intel's (r‖s over the inner
    /// object's exact bytes), for `window`; and the issuer chain for its header. Lists
    /// the recovery's set when one is rehearsed, and 17 with Intel's real TCB-R 17 date.
    pub fn eval_numbers(
        &self,
        issued_at: u64,
        validity_secs: u64,
    ) -> Result<(String, String), DevPkiError> {
        let window = Window::new(issued_at, validity_secs)?;
        let date = |t: i64| {
            u64::try_from(t)
                .ok()
                .and_then(rfc3339)
                .ok_or_else(|| DevPkiError::Json(format!("{t} is not a representable date")))
        };
        let mut numbers = Vec::new();
        if let Some(r) = self.recovery {
            numbers.push(EvalNumberJson {
                tcb_evaluation_data_number: Self::RECOVERY_EVALUATION_DATA_NUMBER,
                tcb_recovery_event_date: date(r.event_date())?,
                tcb_date: date(r.event_date() + 86_400)?,
            });
        }
        numbers.push(EvalNumberJson {
            tcb_evaluation_data_number: Self::TCB_EVALUATION_DATA_NUMBER,
            tcb_recovery_event_date: "2024-03-12T00:00:00Z".into(),
            tcb_date: "2024-03-13T00:00:00Z".into(),
        });
        let inner = serde_json::to_string(&EvalNumbersJson {
            id: "TDX",
            version: 1,
            issue_date: &window.issue_date,
            next_update: &window.next_update_str,
            tcb_eval_numbers: numbers,
        })
        .map_err(|e| DevPkiError::Json(e.to_string()))?;
        let signature = self.tcb_signing_key.sign_raw(inner.as_bytes())?;
        Ok((
            format!(
                "{{\"tcbEvaluationDataNumbers\":{inner},\"signature\":\"{}\"}}",
                hex::encode(signature)
            ),
            self.tcb_issuer_chain_pem.clone(),
        ))
    }

    /// The self-signed root CA certificate, DER: the trust anchor to give a verifier.
    pub fn root_der(&self) -> &[u8] {
        &self.root.der
    }

    /// The same PKI with the platform's TCB level stated as `tcb` (its TCB Info is signed
    /// as always): to exercise policies on `SWHardeningNeeded`, advisories and the like.
    pub fn with_platform_tcb(mut self, tcb: PlatformTcb) -> Self {
        self.platform_tcb = tcb;
        self
    }

    /// The root CA certificate, PEM.
    pub fn root_pem(&self) -> String {
        pem("CERTIFICATE", &self.root.der)
    }

    /// The PCK Platform CA certificate, DER.
    pub fn pck_ca_der(&self) -> &[u8] {
        &self.pck_ca.der
    }

    /// The PCK (leaf) certificate, DER.
    pub fn pck_leaf_der(&self) -> &[u8] {
        &self.pck_leaf_der
    }

    /// The TCB Info / QE Identity signing certificate, DER.
    pub fn tcb_signing_der(&self) -> &[u8] {
        &self.tcb_signing_der
    }

    /// `[PCK leaf, PCK Platform CA, root]` as concatenated PEM, as carried in quotes.
    pub fn pck_chain_pem(&self) -> &str {
        &self.pck_chain_pem
    }

    /// The platform's PPID (derived from the seed), as its PCK certificate carries it.
    pub fn ppid(&self) -> [u8; 16] {
        self.ppid
    }

    /// The platform's FMSPC (derived from the seed).
    pub fn fmspc(&self) -> [u8; 6] {
        self.fmspc
    }

    /// The quote attestation public key, raw `X || Y`.
    pub fn attestation_public_key(&self) -> [u8; 64] {
        self.attestation_key.public_key_raw()
    }

    /// Collateral for this platform's TDX quotes, valid for a verification time in
    /// `[issued_at, issued_at + validity_secs)` (unix seconds; the CRLs count as expired
    /// at `nextUpdate` itself). TCB Info and QE Identity `issueDate`/`nextUpdate` and both
    /// CRLs' `thisUpdate`/`nextUpdate` use that window. Deterministic for
    /// `(seed, issued_at, validity_secs)`. `pck_certificate_chain` is `None`: verifiers
    /// take the PCK chain from the quote.
    ///
    /// The certificates themselves are valid 2025-01-01..2049-12-31, so a verification
    /// time outside that fails too.
    pub fn collateral(
        &self,
        issued_at: u64,
        validity_secs: u64,
    ) -> Result<QuoteCollateralV3, DevPkiError> {
        let now = i64::try_from(teesql_appraisal::Clock::System.now()).unwrap_or(i64::MAX);
        self.collateral_of_set(issued_at, validity_secs, self.standard_set(now))
    }

    /// [`Self::collateral`] with the TCB Info and QE Identity of evaluation data set
    /// `eval` (17, or the rehearsed recovery's).
    pub fn collateral_of_set(
        &self,
        issued_at: u64,
        validity_secs: u64,
        eval: u32,
    ) -> Result<QuoteCollateralV3, DevPkiError> {
        let window = Window::new(issued_at, validity_secs)?;
        let tcb_info = self.tcb_info_json(&window, eval)?;
        let tcb_info_signature = self.tcb_signing_key.sign_raw(tcb_info.as_bytes())?.to_vec();
        let qe_identity = self.qe_identity_json(&window, eval)?;
        let qe_identity_signature = self
            .tcb_signing_key
            .sign_raw(qe_identity.as_bytes())?
            .to_vec();
        Ok(QuoteCollateralV3 {
            pck_crl_issuer_chain: self.pck_crl_issuer_chain_pem.clone(),
            root_ca_crl: self.crl(&self.root, &window)?,
            pck_crl: self.crl(&self.pck_ca, &window)?,
            tcb_info_issuer_chain: self.tcb_issuer_chain_pem.clone(),
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain: self.tcb_issuer_chain_pem.clone(),
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        })
    }

    /// A TDX quote (v4, ECDSA-P256 attestation key, TEE type 0x81, Intel's QE vendor id)
    /// over `td`, signed with the seed's attestation key, with a QE report signed by the PCK
    /// key that binds the attestation key and the QE auth data, and certification data
    /// type 5 (PEM `[PCK leaf, PCK Platform CA, root]`) inside type 6 (QE report).
    /// Deterministic for `(seed, td)`.
    pub fn quote(&self, td: &DevTdReport) -> Result<Vec<u8>, DevPkiError> {
        let mut quote = Vec::with_capacity(
            QUOTE_SIGNED_LEN
                .saturating_add(4 + 64)
                .saturating_add(self.auth_data_tail.len()),
        );
        // Header (48 bytes).
        quote.extend_from_slice(&QUOTE_VERSION.to_le_bytes());
        quote.extend_from_slice(&ATTESTATION_KEY_TYPE_ECDSA_P256.to_le_bytes());
        quote.extend_from_slice(&TEE_TYPE_TDX.to_le_bytes());
        quote.extend_from_slice(&[0u8; 4]); // reserved (QE SVN / PCE SVN in SGX quotes)
        quote.extend_from_slice(&dcap_qvl::INTEL_QE_VENDOR_ID);
        quote.extend_from_slice(&self.qe_id); // user data: QE id ...
        quote.extend_from_slice(&[0u8; 4]); // ... and 4 zero bytes
        // TD report 1.0 (584 bytes).
        quote.extend_from_slice(&Self::TEE_TCB_SVN);
        quote.extend_from_slice(&td.mr_seam);
        quote.extend_from_slice(&TDX_MODULE_MRSIGNER);
        quote.extend_from_slice(&TDX_MODULE_ATTRIBUTES);
        quote.extend_from_slice(&td.td_attributes);
        quote.extend_from_slice(&td.xfam);
        quote.extend_from_slice(&td.mrtd);
        quote.extend_from_slice(&td.mr_config_id);
        quote.extend_from_slice(&td.mr_owner);
        quote.extend_from_slice(&td.mr_owner_config);
        for rtmr in &td.rtmr {
            quote.extend_from_slice(rtmr);
        }
        quote.extend_from_slice(&td.report_data);
        if quote.len() != QUOTE_SIGNED_LEN {
            return Err(DevPkiError::Encoding(format!(
                "header + TD report is {} bytes, expected {QUOTE_SIGNED_LEN}",
                quote.len()
            )));
        }

        let isv_signature = self.attestation_key.sign_raw(&quote)?;
        let auth_data_len = u32::try_from(self.auth_data_tail.len().saturating_add(64))
            .map_err(|_| DevPkiError::Encoding("auth data too long".into()))?;
        quote.extend_from_slice(&auth_data_len.to_le_bytes());
        quote.extend_from_slice(&isv_signature);
        quote.extend_from_slice(&self.auth_data_tail);
        Ok(quote)
    }

    /// The TCB Info JSON (TDX, version 3), compact, exactly the signed bytes.
    fn tcb_info_json(&self, window: &Window, eval: u32) -> Result<String, DevPkiError> {
        let svn = Self::TEE_TCB_SVN[0];
        let recovered = eval == Self::RECOVERY_EVALUATION_DATA_NUMBER;
        let recovery_date = self
            .recovery
            .filter(|_| recovered)
            .and_then(|r| u64::try_from(r.event_date() + 86_400).ok())
            .and_then(rfc3339)
            .unwrap_or_else(|| TCB_DATE.to_string());
        let module_levels = || {
            if recovered {
                // The recovery: module SVN 6 is now required; the platform's 5 is out of date.
                vec![
                    TdxModuleTcbLevelJson {
                        tcb: IsvSvnJson {
                            isvsvn: u16::from(svn) + 1,
                        },
                        tcb_date: recovery_date.clone(),
                        tcb_status: "UpToDate",
                        advisory_ids: Vec::new(),
                    },
                    TdxModuleTcbLevelJson {
                        tcb: IsvSvnJson {
                            isvsvn: u16::from(svn),
                        },
                        tcb_date: TCB_DATE.to_string(),
                        tcb_status: "OutOfDate",
                        advisory_ids: vec![DEV_RECOVERY_ADVISORY.to_string()],
                    },
                ]
            } else {
                vec![TdxModuleTcbLevelJson {
                    tcb: IsvSvnJson {
                        isvsvn: u16::from(svn),
                    },
                    tcb_date: TCB_DATE.to_string(),
                    tcb_status: "UpToDate",
                    advisory_ids: Vec::new(),
                }]
            }
        };
        let module = |id: Option<&'static str>| TdxModuleJson {
            id,
            mrsigner: hex::encode_upper(TDX_MODULE_MRSIGNER),
            attributes: hex::encode_upper(TDX_MODULE_ATTRIBUTES),
            attributes_mask: hex::encode_upper(TDX_MODULE_ATTRIBUTES_MASK),
            tcb_levels: id.map(|_| module_levels()),
        };
        let svns = |svns: &[u8; 16]| svns.iter().map(|&svn| SvnJson { svn }).collect();
        let info = TcbInfoJson {
            id: "TDX",
            version: 3,
            issue_date: &window.issue_date,
            next_update: &window.next_update_str,
            fmspc: hex::encode(self.fmspc),
            pce_id: hex::encode(PCE_ID),
            tcb_type: 0,
            tcb_evaluation_data_number: eval,
            tdx_module: module(None),
            tdx_module_identities: vec![module(Some(TDX_MODULE_IDENTITY_ID))],
            tcb_levels: vec![TcbLevelJson {
                tcb: TcbJson {
                    sgxtcbcomponents: svns(&CPU_SVN),
                    pcesvn: PCE_SVN,
                    tdxtcbcomponents: svns(&Self::TEE_TCB_SVN),
                },
                tcb_date: TCB_DATE,
                tcb_status: &self.platform_tcb.status,
                advisory_ids: &self.platform_tcb.advisory_ids,
            }],
        };
        serde_json::to_string(&info).map_err(|e| DevPkiError::Json(e.to_string()))
    }

    /// The QE Identity JSON (TD_QE, version 2), compact, exactly the signed bytes.
    fn qe_identity_json(&self, window: &Window, eval: u32) -> Result<String, DevPkiError> {
        let identity = QeIdentityJson {
            id: "TD_QE",
            version: 2,
            issue_date: &window.issue_date,
            next_update: &window.next_update_str,
            tcb_evaluation_data_number: eval,
            miscselect: hex::encode_upper(TD_QE_MISCSELECT.to_le_bytes()),
            miscselect_mask: hex::encode_upper(TD_QE_MISCSELECT_MASK.to_le_bytes()),
            attributes: hex::encode_upper(TD_QE_ATTRIBUTES),
            attributes_mask: hex::encode_upper(TD_QE_ATTRIBUTES_MASK),
            mrsigner: hex::encode_upper(TD_QE_MRSIGNER),
            isvprodid: TD_QE_ISVPRODID,
            tcb_levels: vec![QeTcbLevelJson {
                tcb: IsvSvnJson {
                    isvsvn: TD_QE_ISVSVN,
                },
                tcb_date: TCB_DATE,
                tcb_status: "UpToDate",
            }],
        };
        serde_json::to_string(&identity).map_err(|e| DevPkiError::Json(e.to_string()))
    }

    /// An empty CRL (CRL number 1) issued by `ca` for `window`, DER.
    fn crl(&self, ca: &Ca, window: &Window) -> Result<Vec<u8>, DevPkiError> {
        let params = CertificateRevocationListParams {
            this_update: window.this_update,
            next_update: window.next_update,
            crl_number: SerialNumber::from(vec![1]),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params
            .signed_by(&ca.issuer())
            .map_err(cert_err("CRL"))?
            .der()
            .to_vec())
    }
}

/// The TDX module identity id for module major version `TEE_TCB_SVN[1]` = 1.
const TDX_MODULE_IDENTITY_ID: &str = "TDX_01";

/// Header (48) + TD report 1.0 (584): the bytes the attestation key signs.
const QUOTE_SIGNED_LEN: usize = 48 + 584;

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

fn distinguished_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

fn base_params(cn: &str, serial: SerialNumber) -> Result<CertificateParams, DevPkiError> {
    let time_err = || DevPkiError::Certificate("certificate validity out of range".into());
    let mut params = CertificateParams::default();
    params.not_before = offset_date_time(CERT_NOT_BEFORE).ok_or_else(time_err)?;
    params.not_after = offset_date_time(CERT_NOT_AFTER).ok_or_else(time_err)?;
    params.serial_number = Some(serial);
    params.distinguished_name = distinguished_name(cn);
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

/// A CA certificate: `cA` with `path_len`, keyCertSign + cRLSign (like Intel's CAs).
fn ca_params(
    cn: &str,
    serial: SerialNumber,
    path_len: u8,
) -> Result<CertificateParams, DevPkiError> {
    let mut params = base_params(cn, serial)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// An end-entity certificate: `cA = false`, digitalSignature + nonRepudiation, no EKU
/// (like Intel's PCK and TCB signing certificates; dcap-qvl requires server-auth EKU if
/// an EKU is present).
fn leaf_params(cn: &str, serial: SerialNumber) -> Result<CertificateParams, DevPkiError> {
    let mut params = base_params(cn, serial)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
    ];
    Ok(params)
}

/// The content of the Intel SGX extension of a PCK certificate (Platform CA profile):
/// PPID, TCB (16 SGX components, PCESVN, CPUSVN), PCE-ID, FMSPC, SGX type, platform
/// instance id and configuration (dynamic platform, cached keys, SMT: all false).
fn sgx_extension(ppid: &[u8; 16], fmspc: &[u8; 6], platform_instance_id: &[u8; 16]) -> Vec<u8> {
    let entry = |children: &[u64], value| SgxEntry {
        children: children.to_vec(),
        value,
    };
    let mut tcb: Vec<SgxEntry<'_>> = (1u64..)
        .zip(CPU_SVN)
        .map(|(i, svn)| entry(&[2, i], SgxValue::Integer(u64::from(svn))))
        .collect();
    tcb.push(entry(&[2, 17], SgxValue::Integer(u64::from(PCE_SVN))));
    tcb.push(entry(&[2, 18], SgxValue::Bytes(&CPU_SVN)));
    let configuration = vec![
        entry(&[7, 1], SgxValue::Boolean(false)),
        entry(&[7, 2], SgxValue::Boolean(false)),
        entry(&[7, 3], SgxValue::Boolean(false)),
    ];
    encoding::sgx_entries(&[
        entry(&[1], SgxValue::Bytes(ppid)),
        entry(&[2], SgxValue::Entries(tcb)),
        entry(&[3], SgxValue::Bytes(&PCE_ID)),
        entry(&[4], SgxValue::Bytes(fmspc)),
        entry(&[5], SgxValue::Enumerated(SGX_TYPE_SCALABLE)),
        entry(&[6], SgxValue::Bytes(platform_instance_id)),
        entry(&[7], SgxValue::Entries(configuration)),
    ])
}

// ---------------------------------------------------------------------------------------
// Quote auth data
// ---------------------------------------------------------------------------------------

/// The QE report (SGX enclave report, 384 bytes) binding `attestation_key`.
fn qe_report(attestation_key: &[u8; 64]) -> Result<Vec<u8>, DevPkiError> {
    let mut report_data = [0u8; 64];
    let mut hasher = Sha256::new();
    hasher.update(attestation_key);
    hasher.update(QE_AUTH_DATA);
    report_data[..32].copy_from_slice(&hasher.finalize());
    let mr_enclave: [u8; 32] = Sha256::digest(b"TeeSQL development TD QE").into();

    let mut report = Vec::with_capacity(384);
    report.extend_from_slice(&CPU_SVN);
    report.extend_from_slice(&TD_QE_MISCSELECT.to_le_bytes());
    report.extend_from_slice(&[0u8; 28]); // reserved1
    report.extend_from_slice(&TD_QE_ATTRIBUTES);
    report.extend_from_slice(&mr_enclave);
    report.extend_from_slice(&[0u8; 32]); // reserved2
    report.extend_from_slice(&TD_QE_MRSIGNER);
    report.extend_from_slice(&[0u8; 96]); // reserved3
    report.extend_from_slice(&TD_QE_ISVPRODID.to_le_bytes());
    report.extend_from_slice(&TD_QE_ISVSVN.to_le_bytes());
    report.extend_from_slice(&[0u8; 60]); // reserved4
    report.extend_from_slice(&report_data);
    if report.len() != 384 {
        return Err(DevPkiError::Encoding(format!(
            "QE report is {} bytes, expected 384",
            report.len()
        )));
    }
    Ok(report)
}

/// A `u16`/`u32` length prefix, little-endian.
fn len_u16(len: usize, what: &str) -> Result<[u8; 2], DevPkiError> {
    u16::try_from(len)
        .map(u16::to_le_bytes)
        .map_err(|_| DevPkiError::Encoding(format!("{what} too long")))
}

fn len_u32(len: usize, what: &str) -> Result<[u8; 4], DevPkiError> {
    u32::try_from(len)
        .map(u32::to_le_bytes)
        .map_err(|_| DevPkiError::Encoding(format!("{what} too long")))
}

/// Auth data (v4) after the ISV signature: attestation key, then certification data type
/// 6 holding the QE report, its PCK signature, the QE auth data and certification data
/// type 5 (the PCK chain).
fn auth_data_tail(
    attestation_key: &SeededKey,
    pck_leaf_key: &SeededKey,
    pck_chain_pem: &str,
) -> Result<Vec<u8>, DevPkiError> {
    let att_pub = attestation_key.public_key_raw();
    let qe_report = qe_report(&att_pub)?;
    let qe_report_signature = pck_leaf_key.sign_raw(&qe_report)?;

    let mut qe_cert_data = Vec::with_capacity(pck_chain_pem.len().saturating_add(600));
    qe_cert_data.extend_from_slice(&qe_report);
    qe_cert_data.extend_from_slice(&qe_report_signature);
    qe_cert_data.extend_from_slice(&len_u16(QE_AUTH_DATA.len(), "QE auth data")?);
    qe_cert_data.extend_from_slice(&QE_AUTH_DATA);
    qe_cert_data.extend_from_slice(&CERT_DATA_PCK_CHAIN.to_le_bytes());
    qe_cert_data.extend_from_slice(&len_u32(pck_chain_pem.len(), "PCK chain")?);
    qe_cert_data.extend_from_slice(pck_chain_pem.as_bytes());

    let mut tail = Vec::with_capacity(qe_cert_data.len().saturating_add(70));
    tail.extend_from_slice(&att_pub);
    tail.extend_from_slice(&CERT_DATA_QE_REPORT.to_le_bytes());
    tail.extend_from_slice(&len_u32(qe_cert_data.len(), "QE certification data")?);
    tail.extend_from_slice(&qe_cert_data);
    Ok(tail)
}

// ---------------------------------------------------------------------------------------
// Collateral JSON (field order as Intel's PCS emits it)
// ---------------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfoJson<'a> {
    id: &'static str,
    version: u8,
    issue_date: &'a str,
    next_update: &'a str,
    fmspc: String,
    pce_id: String,
    tcb_type: u8,
    tcb_evaluation_data_number: u32,
    tdx_module: TdxModuleJson,
    tdx_module_identities: Vec<TdxModuleJson>,
    tcb_levels: Vec<TcbLevelJson<'a>>,
}

/// `tdxModule` (no id, no levels) or an entry of `tdxModuleIdentities`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TdxModuleJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'static str>,
    mrsigner: String,
    attributes: String,
    attributes_mask: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcb_levels: Option<Vec<TdxModuleTcbLevelJson>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TdxModuleTcbLevelJson {
    tcb: IsvSvnJson,
    tcb_date: String,
    tcb_status: &'static str,
    #[serde(rename = "advisoryIDs", skip_serializing_if = "Vec::is_empty")]
    advisory_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EvalNumbersJson<'a> {
    id: &'static str,
    version: u8,
    issue_date: &'a str,
    next_update: &'a str,
    tcb_eval_numbers: Vec<EvalNumberJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EvalNumberJson {
    tcb_evaluation_data_number: u32,
    tcb_recovery_event_date: String,
    tcb_date: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TcbLevelJson<'a> {
    tcb: TcbJson,
    tcb_date: &'static str,
    tcb_status: &'a str,
    #[serde(rename = "advisoryIDs", skip_serializing_if = "<[String]>::is_empty")]
    advisory_ids: &'a [String],
}

#[derive(Serialize)]
struct TcbJson {
    sgxtcbcomponents: Vec<SvnJson>,
    pcesvn: u16,
    tdxtcbcomponents: Vec<SvnJson>,
}

#[derive(Serialize)]
struct SvnJson {
    svn: u8,
}

#[derive(Serialize)]
struct IsvSvnJson {
    isvsvn: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QeIdentityJson<'a> {
    id: &'static str,
    version: u8,
    issue_date: &'a str,
    next_update: &'a str,
    tcb_evaluation_data_number: u32,
    miscselect: String,
    miscselect_mask: String,
    attributes: String,
    attributes_mask: String,
    mrsigner: String,
    isvprodid: u16,
    tcb_levels: Vec<QeTcbLevelJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QeTcbLevelJson {
    tcb: IsvSvnJson,
    tcb_date: &'static str,
    tcb_status: &'static str,
}

/// PEM text (for the PCCS's PEM answers).
pub(crate) fn pem_text(label: &str, der: &[u8]) -> String {
    pem(label, der)
}

/// Percent-encoded as the PCS's issuer-chain headers are.
pub(crate) fn percent_encode_header(text: &str) -> String {
    percent_encode(text)
}

#[cfg(test)]
mod tests {
    use dcap_qvl::QuotePolicy;
    use dcap_qvl::quote::{AuthData, Quote, Report};
    use dcap_qvl::tcb_info::TcbStatus;
    use dcap_qvl::verify::QuoteVerifier;

    use super::*;

    const SEED: [u8; 32] = [0x42; 32];
    /// 2026-01-01T00:00:00Z.
    const ISSUED_AT: u64 = 1_767_225_600;
    const VALIDITY: u64 = 30 * 86_400;
    const NOW: u64 = ISSUED_AT + 3_600;

    // Quote layout (v4, TD report 1.0).
    const HEADER: usize = 0;
    const REPORT: usize = 48;
    const MRTD: usize = REPORT + 136;
    const RTMR0: usize = REPORT + 328;
    const REPORT_DATA: usize = REPORT + 520;
    const AUTH: usize = QUOTE_SIGNED_LEN + 4;
    const ISV_SIG: usize = AUTH;
    const ATT_KEY: usize = ISV_SIG + 64;
    const QE_REPORT: usize = ATT_KEY + 64 + 6;
    const QE_SIG: usize = QE_REPORT + 384;
    const QE_AUTH: usize = QE_SIG + 64 + 2;
    const PCK_PEM: usize = QE_AUTH + 32 + 6;

    fn pki() -> DevPki {
        DevPki::from_seed(SEED).unwrap()
    }

    fn report() -> DevTdReport {
        let mut td = DevTdReport::default();
        for (i, b) in td.mrtd.iter_mut().enumerate() {
            *b = i as u8;
        }
        for (r, rtmr) in td.rtmr.iter_mut().enumerate() {
            rtmr.fill(0xa0 + r as u8);
        }
        for (i, b) in td.report_data.iter_mut().enumerate() {
            *b = 0xff - i as u8;
        }
        td.mr_config_id = [0x33; 48];
        td
    }

    /// Verify under `root` and return the error text (with causes), or `Ok(claims)`.
    fn verify_with(
        root: &[u8],
        quote: &[u8],
        collateral: &QuoteCollateralV3,
        now: u64,
    ) -> Result<dcap_qvl::QuoteClaims, String> {
        QuoteVerifier::new(root.to_vec())
            .verify_with_policy(quote, collateral, now, &QuotePolicy::claims_only(now))
            .map_err(|e| format!("{e:#}"))
    }

    fn verify(
        pki: &DevPki,
        quote: &[u8],
        collateral: &QuoteCollateralV3,
        now: u64,
    ) -> Result<dcap_qvl::QuoteClaims, String> {
        verify_with(pki.root_der(), quote, collateral, now)
    }

    fn flipped(bytes: &[u8], offset: usize) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out[offset] ^= 0x01;
        out
    }

    #[test]
    fn quote_verifies_under_dev_root() {
        let pki = pki();
        let td = report();
        let quote = pki.quote(&td).unwrap();
        let collateral = pki.collateral(ISSUED_AT, VALIDITY).unwrap();
        let claims = verify(&pki, &quote, &collateral, NOW).unwrap();

        assert_eq!(claims.tcb.status, TcbStatus::UpToDate);
        assert!(claims.tcb.advisory_ids.is_empty());
        assert_eq!(
            claims.tcb.eval_data_number,
            DevPki::TCB_EVALUATION_DATA_NUMBER
        );
        assert_eq!(claims.tee_type, 0x81);
        let Report::TD10(r) = &claims.report else {
            panic!("expected a TD 1.0 report, got {:?}", claims.report);
        };
        assert_eq!(r.mr_td, td.mrtd);
        assert_eq!([r.rt_mr0, r.rt_mr1, r.rt_mr2, r.rt_mr3], td.rtmr);
        assert_eq!(r.report_data, td.report_data);
        assert_eq!(r.mr_config_id, td.mr_config_id);
        assert_eq!(r.mr_owner, td.mr_owner);
        assert_eq!(r.mr_owner_config, td.mr_owner_config);
        assert_eq!(r.td_attributes, td.td_attributes);
        assert_eq!(r.xfam, td.xfam);
        assert_eq!(r.mr_seam, td.mr_seam);
        assert_eq!(r.tee_tcb_svn, DevPki::TEE_TCB_SVN);
        assert_eq!(claims.platform.pck.fmspc, pki.fmspc());
        assert_eq!(claims.platform.pck.pce_svn, PCE_SVN);
        assert_eq!(claims.platform.pck.cpu_svn, CPU_SVN);
        assert_eq!(claims.qe.report.mr_signer, TD_QE_MRSIGNER);
        assert_eq!(claims.platform.root_key_id.len(), 48);
        assert_eq!(claims.platform.pck_crl_num, 1);
        assert_eq!(claims.platform.root_ca_crl_num, 1);
        // The collateral window is the tightest one of all the collateral.
        assert_eq!(claims.earliest_expiration_date, ISSUED_AT + VALIDITY);
        assert_eq!(claims.latest_issue_date, ISSUED_AT);
        assert_eq!(claims.earliest_issue_date, CERT_NOT_BEFORE);

        // The default strict policy accepts it too (UpToDate, no SMT/dynamic/cached keys).
        QuoteVerifier::new(pki.root_der().to_vec())
            .verify_with_policy(&quote, &collateral, NOW, &QuotePolicy::strict(NOW))
            .unwrap();
        // And the one-shot API.
        let report = QuoteVerifier::new(pki.root_der().to_vec())
            .verify(&quote, &collateral, NOW)
            .unwrap();
        assert_eq!(report.status, "UpToDate");
    }

    #[test]
    fn default_td_report_verifies() {
        let pki = pki();
        let td = DevTdReport::default();
        assert_ne!(td.mr_seam, [0; 48]);
        let quote = pki.quote(&td).unwrap();
        let collateral = pki.collateral(ISSUED_AT, VALIDITY).unwrap();
        verify(&pki, &quote, &collateral, NOW).unwrap();
    }

    #[test]
    fn quote_layout_matches_dcap_qvl_parser() {
        let pki = pki();
        let td = report();
        let quote = pki.quote(&td).unwrap();
        let parsed = Quote::parse(&quote).unwrap();
        assert_eq!(parsed.header.version, 4);
        assert_eq!(parsed.header.attestation_key_type, 2);
        assert_eq!(parsed.header.tee_type, 0x81);
        assert_eq!(
            hex::encode_upper(parsed.header.qe_vendor_id),
            "939A7233F79C4CA9940A0DB3957F0607"
        );
        assert_eq!(parsed.signed_length(), QUOTE_SIGNED_LEN);
        let AuthData::V4(auth) = &parsed.auth_data else {
            panic!("expected v4 auth data");
        };
        assert_eq!(auth.certification_data.cert_type, 6);
        assert_eq!(auth.qe_report_data.certification_data.cert_type, 5);
        assert_eq!(auth.qe_report_data.qe_auth_data.data, QE_AUTH_DATA);
        assert_eq!(
            auth.qe_report_data.certification_data.body.data,
            pki.pck_chain_pem().as_bytes()
        );
        assert_eq!(auth.ecdsa_attestation_key, pki.attestation_public_key());
        // The offsets the tamper test uses.
        assert_eq!(quote[ISV_SIG..ISV_SIG + 64], auth.ecdsa_signature);
        assert_eq!(quote[ATT_KEY..ATT_KEY + 64], auth.ecdsa_attestation_key);
        assert_eq!(
            quote[QE_REPORT..QE_REPORT + 384],
            auth.qe_report_data.qe_report
        );
        assert_eq!(
            quote[QE_SIG..QE_SIG + 64],
            auth.qe_report_data.qe_report_signature
        );
        assert_eq!(quote[QE_AUTH..QE_AUTH + 32], QE_AUTH_DATA);
        assert_eq!(&quote[PCK_PEM..], pki.pck_chain_pem().as_bytes());
        assert_eq!(quote[MRTD..MRTD + 48], td.mrtd);
        assert_eq!(quote[RTMR0..RTMR0 + 48], td.rtmr[0]);
        assert_eq!(quote[REPORT_DATA..REPORT_DATA + 64], td.report_data);
    }

    #[test]
    fn pck_certificate_is_parsed_like_intel() {
        let pki = pki();
        let ext = dcap_qvl::intel::parse_pck_extension(pki.pck_leaf_der()).unwrap();
        assert_eq!(ext.fmspc, pki.fmspc());
        assert_eq!(ext.cpu_svn, CPU_SVN);
        assert_eq!(ext.pce_svn, PCE_SVN);
        assert_eq!(ext.pce_id, PCE_ID);
        assert_eq!(ext.ppid.len(), 16);
        assert_eq!(ext.sgx_type, 1);
        assert_eq!(ext.platform_instance_id.as_ref().map(Vec::len), Some(16));
        assert_eq!(ext.dynamic_platform, Some(false));
        assert_eq!(ext.cached_keys, Some(false));
        assert_eq!(ext.smt_enabled, Some(false));
        // The 16 SGX TCB components are there too, equal to the CPUSVN bytes.
        assert_eq!(
            dcap_qvl::oids::SGX_EXTENSION.to_string(),
            "1.2.840.113741.1.13.1"
        );
        for (i, svn) in (1u32..).zip(CPU_SVN) {
            let value = sgx_extension_value(&ext, &format!("1.2.840.113741.1.13.1.2.{i}"));
            assert_eq!(value, vec![svn], "component {i}");
        }
        assert_eq!(
            dcap_qvl::intel::pck_ca(pki.pck_leaf_der()).unwrap(),
            dcap_qvl::config::PckCa::Platform
        );
    }

    /// The value bytes of `oid` (dotted) inside the PCK extension.
    fn sgx_extension_value(ext: &dcap_qvl::intel::PckExtension, oid: &str) -> Vec<u8> {
        // Find `SEQUENCE { OID, value }` by the OID's DER encoding.
        let arcs: Vec<u64> = oid.split('.').map(|a| a.parse().unwrap()).collect();
        let needle = encoding::oid(&arcs);
        let raw = &ext.raw_extension;
        let pos = raw
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .unwrap();
        let value = &raw[pos + needle.len()..];
        let len = value[1] as usize;
        value[2..2 + len].to_vec()
    }

    #[test]
    fn certificates_have_expected_names_and_profile() {
        use x509_parser::prelude::*;
        let pki = pki();
        let cn = |der: &[u8]| {
            let (_, cert) = X509Certificate::from_der(der).unwrap();
            let subject = cert.subject().to_string();
            let issuer = cert.issuer().to_string();
            let is_ca = cert.is_ca();
            let not_before = cert.validity().not_before.timestamp();
            let not_after = cert.validity().not_after.timestamp();
            (subject, issuer, is_ca, not_before, not_after)
        };
        let (root_s, root_i, root_ca, nb, na) = cn(pki.root_der());
        assert!(root_s.contains("TeeSQL Development"), "{root_s}");
        assert_eq!(root_s, root_i);
        assert!(root_ca);
        assert_eq!(nb, CERT_NOT_BEFORE as i64);
        assert_eq!(na, CERT_NOT_AFTER as i64);
        let (ca_s, ca_i, ca_ca, _, _) = cn(pki.pck_ca_der());
        assert!(
            ca_s.contains("Platform") && !ca_s.contains("Processor"),
            "{ca_s}"
        );
        assert_eq!(ca_i, root_s);
        assert!(ca_ca);
        let (leaf_s, leaf_i, leaf_ca, _, _) = cn(pki.pck_leaf_der());
        assert!(leaf_s.contains("PCK Certificate"), "{leaf_s}");
        assert_eq!(leaf_i, ca_s);
        assert!(!leaf_ca);
        let (tcb_s, tcb_i, tcb_ca, _, _) = cn(pki.tcb_signing_der());
        assert!(tcb_s.contains("TCB Signing"), "{tcb_s}");
        assert_eq!(tcb_i, root_s);
        assert!(!tcb_ca);
        assert_eq!(
            rfc3339(CERT_NOT_BEFORE).as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
        assert_eq!(
            rfc3339(CERT_NOT_AFTER).as_deref(),
            Some("2049-12-31T23:59:59Z")
        );
    }

    #[test]
    fn pem_matches_rcgen_layout() {
        let pki = pki();
        // rcgen re-issues the identical certificate (deterministic signing) and PEM-encodes it.
        let rcgen_pem = pki.root.params.self_signed(&pki.root.key).unwrap().pem();
        assert_eq!(pki.root_pem(), rcgen_pem);
        assert!(
            pki.pck_chain_pem()
                .starts_with("-----BEGIN CERTIFICATE-----\n")
        );
        assert!(pki.pck_chain_pem().ends_with(&pki.root_pem()));
    }

    #[test]
    fn every_signed_quote_byte_is_protected() {
        let pki = pki();
        let quote = pki.quote(&report()).unwrap();
        let collateral = pki.collateral(ISSUED_AT, VALIDITY).unwrap();
        verify(&pki, &quote, &collateral, NOW).unwrap();

        let isv = "ISV enclave report signature is invalid";
        let qe_sig = "Signature is invalid for qe_report";
        let qe_hash = "QE report hash mismatch";
        // Every byte of every signed region (the header's version, key type, TEE type and
        // vendor id fail other checks first; the rest fail on the signature they are under).
        let all = |r: std::ops::Range<usize>| r.collect::<Vec<_>>();
        let cases: Vec<(&str, Vec<usize>, Option<&str>)> = vec![
            (
                "header (format fields)",
                [all(HEADER..8), all(12..28)].concat(),
                None,
            ),
            (
                "header (reserved, user data)",
                [all(8..12), all(28..48)].concat(),
                Some(isv),
            ),
            ("TD report", all(REPORT..QUOTE_SIGNED_LEN), Some(isv)),
            ("MRTD", all(MRTD..MRTD + 48), Some(isv)),
            ("RTMRs", all(RTMR0..RTMR0 + 4 * 48), Some(isv)),
            ("report data", all(REPORT_DATA..REPORT_DATA + 64), Some(isv)),
            ("ISV signature", all(ISV_SIG..ISV_SIG + 64), Some(isv)),
            ("attestation key", all(ATT_KEY..ATT_KEY + 64), Some(qe_hash)),
            ("QE report", all(QE_REPORT..QE_REPORT + 384), Some(qe_sig)),
            (
                "QE report signature",
                all(QE_SIG..QE_SIG + 64),
                Some(qe_sig),
            ),
            ("QE auth data", all(QE_AUTH..QE_AUTH + 32), Some(qe_hash)),
            // Inside the base64 of the PCK leaf certificate.
            (
                "PCK certificate",
                (PCK_PEM + 100..PCK_PEM + 700).step_by(50).collect(),
                None,
            ),
        ];
        for (what, offsets, expected) in cases {
            for offset in offsets {
                let bad = flipped(&quote, offset);
                let err = verify(&pki, &bad, &collateral, NOW)
                    .err()
                    .unwrap_or_else(|| panic!("{what}: flipping byte {offset} still verifies"));
                if let Some(expected) = expected {
                    assert!(err.contains(expected), "{what} @ {offset}: {err}");
                }
            }
        }
    }

    #[test]
    fn every_signed_collateral_byte_is_protected() {
        let pki = pki();
        let quote = pki.quote(&report()).unwrap();
        let good = pki.collateral(ISSUED_AT, VALIDITY).unwrap();

        let check = |what: &str, bad: QuoteCollateralV3, expected: Option<&str>| {
            let err = verify(&pki, &quote, &bad, NOW)
                .err()
                .unwrap_or_else(|| panic!("{what}: tampered collateral still verifies"));
            if let Some(expected) = expected {
                assert!(err.contains(expected), "{what}: {err}");
            }
        };
        let flip_str =
            |s: &str, offset: usize| String::from_utf8(flipped(s.as_bytes(), offset)).unwrap();

        for offset in (0..good.tcb_info.len()).step_by(53) {
            let mut bad = good.clone();
            bad.tcb_info = flip_str(&good.tcb_info, offset);
            check("tcb_info", bad, None);
        }
        for offset in (0..good.qe_identity.len()).step_by(47) {
            let mut bad = good.clone();
            bad.qe_identity = flip_str(&good.qe_identity, offset);
            check("qe_identity", bad, None);
        }
        // Still-valid JSON with one changed value: only the signature catches it.
        let mut bad = good.clone();
        bad.tcb_info = good.tcb_info.replace("\"tcbType\":0", "\"tcbType\":1");
        assert_ne!(bad.tcb_info, good.tcb_info);
        check(
            "tcb_info value",
            bad,
            Some("Signature is invalid for tcb_info"),
        );
        let mut bad = good.clone();
        bad.qe_identity = good.qe_identity.replace("\"version\":2", "\"version\":3");
        assert_ne!(bad.qe_identity, good.qe_identity);
        check(
            "qe_identity value",
            bad,
            Some("Signature is invalid for qe_identity"),
        );

        for offset in [0, 31, 32, 63] {
            let mut bad = good.clone();
            bad.tcb_info_signature = flipped(&good.tcb_info_signature, offset);
            check(
                "tcb_info signature",
                bad,
                Some("Signature is invalid for tcb_info"),
            );
            let mut bad = good.clone();
            bad.qe_identity_signature = flipped(&good.qe_identity_signature, offset);
            check(
                "qe_identity signature",
                bad,
                Some("Signature is invalid for qe_identity"),
            );
        }
        // The last bytes of a CRL are its signature.
        for back in [1, 10, 30] {
            let mut bad = good.clone();
            bad.root_ca_crl = flipped(&good.root_ca_crl, good.root_ca_crl.len() - back);
            check("root CA CRL signature", bad, None);
            let mut bad = good.clone();
            bad.pck_crl = flipped(&good.pck_crl, good.pck_crl.len() - back);
            check("PCK CRL signature", bad, None);
        }
        // A CRL signed by the wrong issuer is refused.
        let mut bad = good.clone();
        bad.pck_crl = good.root_ca_crl.clone();
        check("PCK CRL from root", bad, None);
        // The TCB Info signed by another seed's PKI is refused.
        let other = DevPki::from_seed([7; 32])
            .unwrap()
            .collateral(ISSUED_AT, VALIDITY)
            .unwrap();
        let mut bad = good.clone();
        bad.tcb_info_issuer_chain = other.tcb_info_issuer_chain.clone();
        bad.tcb_info_signature = other.tcb_info_signature.clone();
        check("foreign TCB signer", bad, None);
    }

    #[test]
    fn intel_root_rejects_dev_quotes() {
        let pki = pki();
        let quote = pki.quote(&report()).unwrap();
        let collateral = pki.collateral(ISSUED_AT, VALIDITY).unwrap();
        let err = QuoteVerifier::new_prod()
            .verify_with_policy(&quote, &collateral, NOW, &QuotePolicy::claims_only(NOW))
            .err()
            .unwrap();
        assert!(!format!("{err:#}").is_empty());
        assert!(
            QuoteVerifier::new_prod()
                .verify(&quote, &collateral, NOW)
                .is_err()
        );
        // Another seed's root rejects it as well.
        let other = DevPki::from_seed([1; 32]).unwrap();
        assert!(verify_with(other.root_der(), &quote, &collateral, NOW).is_err());
    }

    #[test]
    fn everything_is_deterministic() {
        let a = pki();
        let b = DevPki::from_seed(SEED).unwrap();
        assert_eq!(a.root_der(), b.root_der());
        assert_eq!(a.root_pem(), b.root_pem());
        assert_eq!(a.pck_ca_der(), b.pck_ca_der());
        assert_eq!(a.pck_leaf_der(), b.pck_leaf_der());
        assert_eq!(a.tcb_signing_der(), b.tcb_signing_der());
        assert_eq!(a.fmspc(), b.fmspc());
        let td = report();
        assert_eq!(a.quote(&td).unwrap(), b.quote(&td).unwrap());
        assert_eq!(a.quote(&td).unwrap(), a.quote(&td).unwrap());
        assert_eq!(
            a.collateral(ISSUED_AT, VALIDITY).unwrap(),
            b.collateral(ISSUED_AT, VALIDITY).unwrap()
        );
        assert_ne!(
            a.collateral(ISSUED_AT, VALIDITY).unwrap(),
            a.collateral(ISSUED_AT + 1, VALIDITY).unwrap()
        );
        let mut other_td = td.clone();
        other_td.report_data[0] ^= 1;
        assert_ne!(a.quote(&td).unwrap(), a.quote(&other_td).unwrap());

        let c = DevPki::from_seed([0x43; 32]).unwrap();
        assert_ne!(a.root_der(), c.root_der());
        assert_ne!(a.fmspc(), c.fmspc());
        assert_ne!(a.attestation_public_key(), c.attestation_public_key());
    }

    #[test]
    fn seeded_key_derivation() {
        let k1 = SeededKey::derive(&SEED, "label").unwrap();
        let k2 = SeededKey::derive(&SEED, "label").unwrap();
        let k3 = SeededKey::derive(&SEED, "other").unwrap();
        assert_eq!(k1.public_key_raw(), k2.public_key_raw());
        assert_ne!(k1.public_key_raw(), k3.public_key_raw());
        // The scalar is SHA-256(seed || label).
        let scalar = Sha256::digest([&SEED[..], b"label"].concat());
        let expected = P256SigningKey::from_bytes(&scalar).unwrap();
        assert_eq!(k1.key.to_bytes(), expected.to_bytes());
        // rcgen sees a P-256 key; its signatures are deterministic and verify.
        use p256::ecdsa::signature::Verifier;
        use rcgen::SigningKey as _;
        let der = k1.sign(b"msg").unwrap();
        assert_eq!(der, k2.sign(b"msg").unwrap());
        let sig = Signature::from_der(&der).unwrap();
        VerifyingKey::from(&k1.key).verify(b"msg", &sig).unwrap();
        assert!(format!("{k1:?}").contains("public_key"));
    }

    #[test]
    fn collateral_window_is_enforced() {
        let pki = pki();
        let quote = pki.quote(&report()).unwrap();
        let collateral = pki.collateral(ISSUED_AT, VALIDITY).unwrap();
        assert!(
            collateral
                .tcb_info
                .contains("\"issueDate\":\"2026-01-01T00:00:00Z\"")
        );
        assert!(
            collateral
                .tcb_info
                .contains("\"nextUpdate\":\"2026-01-31T00:00:00Z\"")
        );
        assert!(
            collateral
                .qe_identity
                .contains("\"issueDate\":\"2026-01-01T00:00:00Z\"")
        );
        assert!(
            collateral
                .qe_identity
                .contains("\"nextUpdate\":\"2026-01-31T00:00:00Z\"")
        );

        verify(&pki, &quote, &collateral, ISSUED_AT).unwrap();
        verify(&pki, &quote, &collateral, ISSUED_AT + VALIDITY - 1).unwrap();
        let before = verify(&pki, &quote, &collateral, ISSUED_AT - 1).unwrap_err();
        assert!(before.contains("issue date is in the future"), "{before}");
        let after = verify(&pki, &quote, &collateral, ISSUED_AT + VALIDITY).unwrap_err();
        assert!(after.to_lowercase().contains("expired"), "{after}");
        let long_after = verify(&pki, &quote, &collateral, ISSUED_AT + VALIDITY + 1).unwrap_err();
        assert!(
            long_after.to_lowercase().contains("expired"),
            "{long_after}"
        );

        // The CRLs carry the same window.
        use x509_parser::prelude::*;
        for crl in [&collateral.root_ca_crl, &collateral.pck_crl] {
            let (_, crl) = CertificateRevocationList::from_der(crl).unwrap();
            assert_eq!(crl.last_update().timestamp(), ISSUED_AT as i64);
            assert_eq!(
                crl.next_update().map(|t| t.timestamp()),
                Some((ISSUED_AT + VALIDITY) as i64)
            );
        }

        assert!(matches!(
            pki.collateral(ISSUED_AT, 0),
            Err(DevPkiError::InvalidWindow(_))
        ));
        assert!(matches!(
            pki.collateral(u64::MAX, 1),
            Err(DevPkiError::InvalidWindow(_))
        ));
        assert!(matches!(
            pki.collateral(encoding::MAX_RFC3339_UNIX, 1),
            Err(DevPkiError::InvalidWindow(_))
        ));
    }

    #[test]
    fn debug_td_is_rejected_unless_allowed() {
        let pki = pki();
        let mut td = report();
        td.td_attributes[0] |= 0x01;
        let quote = pki.quote(&td).unwrap();
        let collateral = pki.collateral(ISSUED_AT, VALIDITY).unwrap();
        let err = verify(&pki, &quote, &collateral, NOW).unwrap_err();
        assert!(err.contains("Debug mode is enabled"), "{err}");
        QuoteVerifier::new(pki.root_der().to_vec())
            .allow_debug(true)
            .verify_with_policy(&quote, &collateral, NOW, &QuotePolicy::claims_only(NOW))
            .unwrap();
    }

    #[test]
    fn pki_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<DevPki>();
        assert_send_sync::<SeededKey>();
        assert_send_sync::<DevPkiError>();
    }

    #[test]
    fn debug_output_hides_keys() {
        let pki = pki();
        let text = format!("{pki:?}");
        assert!(text.contains("fmspc"));
        assert!(!text.contains("key:"));
    }
}
