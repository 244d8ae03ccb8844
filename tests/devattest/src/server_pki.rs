//! A throwaway web PKI for TLS tests and `teesql-dev --verifier tls`: a CA and a server
//! certificate it issues for `localhost` and `127.0.0.1`, written as PEM files.

use std::path::{Path, PathBuf};

/// The files, and the server certificate's DER (for pinning by hash).
#[derive(Debug, Clone)]
pub struct ServerPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_der: Vec<u8>,
}

impl ServerPki {
    /// Make a CA named `ca_name` and a server certificate, and write `{prefix}-ca.pem`,
    /// `{prefix}.pem` and `{prefix}.key` in `dir`.
    pub fn write(dir: &Path, prefix: &str, ca_name: &str) -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A CA with an empty name is refused by some TLS stacks (grpc-core's).
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
            .signed_by(&key, &issuer)?;
        let pki = Self {
            ca: dir.join(format!("{prefix}-ca.pem")),
            cert: dir.join(format!("{prefix}.pem")),
            key: dir.join(format!("{prefix}.key")),
            cert_der: cert.der().to_vec(),
        };
        std::fs::write(&pki.ca, ca_cert.pem())?;
        std::fs::write(&pki.cert, cert.pem())?;
        std::fs::write(&pki.key, key.serialize_pem())?;
        Ok(pki)
    }
}
