//! Issuing dstack-style RA-TLS certificates from a development app CA.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

use super::pki::{DevPkiError, SeededKey};
use teesql_appraisal::evidence::oid;

use crate::encode::extension_value as encode_extension_value;

/// The development app CA: signs RA-TLS leaf certificates, like dstack's per-app CA.
/// Derived from the seed, so `dev-app-ca.pem` stays valid across agent restarts.
pub struct AppCa {
    issuer: Issuer<'static, SeededKey>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for AppCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCa").finish_non_exhaustive()
    }
}

/// What a `GetTlsKey` caller asks for.
#[derive(Debug, Clone, Default)]
pub struct RaTlsRequest {
    pub subject: String,
    pub alt_names: Vec<String>,
    pub usage_ra_tls: bool,
    pub usage_server_auth: bool,
    pub usage_client_auth: bool,
    /// Validity (unix seconds) instead of the agent's default (dstack 0.5.7's
    /// `not_before` / `not_after`).
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    /// Add the `.9` app info extension (dstack 0.5.7's `with_app_info`).
    pub with_app_info: bool,
}

/// The attestation extensions of one certificate, computed for its key.
#[derive(Debug, Clone)]
pub struct CertAttestation {
    /// `.8`: versioned attestation (V0 SCALE).
    pub versioned: Vec<u8>,
    /// `.1` + `.2`: raw quote and JSON event log, for clients older than dstack v0.5.9.
    pub legacy: Option<(Vec<u8>, Vec<u8>)>,
    /// `.3`: app id.
    pub app_id: Vec<u8>,
    /// `.9`: app info (msgpack), when asked for.
    pub app_info: Option<Vec<u8>>,
}

/// A freshly issued key and certificate chain.
#[derive(Debug, Clone)]
pub struct RaTlsIssued {
    /// PKCS#8 PEM private key.
    pub key_pem: String,
    /// `[leaf, app CA]`, PEM.
    pub chain_pem: Vec<String>,
    pub leaf_der: Vec<u8>,
}

const CA_SERIAL: u64 = 0x7ee5_0100;

impl AppCa {
    /// The app CA for a seed.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, DevPkiError> {
        let key = SeededKey::derive(seed, "app-ca")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            "TeeSQL Development App CA (NOT FOR PRODUCTION)",
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "TeeSQL development");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from(CA_SERIAL.to_be_bytes().to_vec()));
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params
            .self_signed(&key)
            .map_err(|e| DevPkiError::Certificate(format!("app CA: {e}")))?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM (what `sslrootcert` points at in mode B).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issue a certificate for a fresh P-256 key. `attest` computes the attestation
    /// extensions for the key's SubjectPublicKeyInfo (only called for `usage_ra_tls`).
    pub fn issue(
        &self,
        req: &RaTlsRequest,
        validity: Duration,
        attest: impl FnOnce(&[u8]) -> Result<CertAttestation, DevPkiError>,
    ) -> Result<RaTlsIssued, DevPkiError> {
        let cert_err = |e: rcgen::Error| DevPkiError::Certificate(format!("RA-TLS leaf: {e}"));
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(req.alt_names.clone()).map_err(cert_err)?;
        let cn = if req.subject.is_empty() {
            req.alt_names
                .first()
                .cloned()
                .unwrap_or_else(|| "teesql-dev".into())
        } else {
            req.subject.clone()
        };
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = [
            (req.usage_server_auth, ExtendedKeyUsagePurpose::ServerAuth),
            (req.usage_client_auth, ExtendedKeyUsagePurpose::ClientAuth),
        ]
        .into_iter()
        .filter_map(|(on, p)| on.then_some(p))
        .collect();
        let now = SystemTime::now();
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        params.not_before = req
            .not_before
            .map_or(now - Duration::from_secs(300), at)
            .into();
        params.not_after = req.not_after.map_or(now + validity, at).into();
        params.use_authority_key_identifier_extension = true;

        let ext = |oid: &str, content: &[u8]| -> Result<CustomExtension, DevPkiError> {
            let arcs: Vec<u64> = oid
                .split('.')
                .map(|a| a.parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|e| DevPkiError::Certificate(format!("OID {oid}: {e}")))?;
            Ok(CustomExtension::from_oid_content(
                &arcs,
                encode_extension_value(content),
            ))
        };
        params
            .custom_extensions
            .push(ext(oid::CERT_USAGE, b"app:custom")?);
        if req.usage_ra_tls {
            let att = attest(&rcgen::PublicKeyData::subject_public_key_info(&key))?;
            params
                .custom_extensions
                .push(ext(oid::APP_ID, &att.app_id)?);
            params
                .custom_extensions
                .push(ext(oid::ATTESTATION, &att.versioned)?);
            if let Some(info) = &att.app_info {
                params.custom_extensions.push(ext(oid::APP_INFO, info)?);
            }
            if let Some((quote, log)) = &att.legacy {
                params.custom_extensions.push(ext(oid::TDX_QUOTE, quote)?);
                params.custom_extensions.push(ext(oid::EVENT_LOG, log)?);
            }
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err)?;
        Ok(RaTlsIssued {
            key_pem: key.serialize_pem(),
            chain_pem: vec![cert.pem(), self.cert_pem.clone()],
            leaf_der: cert.der().to_vec(),
        })
    }
}
