//! A development AMD SEV-SNP PKI: an ARK, an ASK and a VCEK made and signed for real,
//! in the shapes AMD issues, and ATTESTATION_REPORTs signed by the VCEK.
//!
//! There is no SEV-SNP hardware here, and AMD's keys sign only AMD's chips, so the
//! development chain stands in for AMD's and is trusted only where a verifier is told to
//! (`--snp-dev-ark`; claims then say `snp.root = "dev"`, which the production policy
//! refuses). Shapes, from AMD's published certificates and the code that reads them (see
//! `/work/notes/snp.md` §1–§5 and `appraisal/src/snp/roots/README.md`):
//! - ARK and ASK: RSA (AMD: 4096 bits; here 3072, the size `rsa` generates by default),
//!   CN `ARK-<product>` (self-signed) and `SEV-<product>`, both CAs, signed RSASSA-PSS
//!   with SHA-384, MGF1-SHA-384, salt 48 and the trailer field written out, as on the
//!   ARKs of `virtee/sev` v6.0.0 `src/certs/snp/builtin/`;
//! - VCEK: a P-384 key, CN `SEV-VCEK`, signed by the ASK with the same PSS parameters but
//!   the trailer left at its default (AMD's VCEKs, e.g. dstack's
//!   `dstack-attest/tests/sev_snp_vcek.pem`), with AMD's extensions under
//!   `1.3.6.1.4.1.3704.1`: `.1` structVersion, `.2` productName (IA5String), `.3.1`
//!   blSPL, `.3.2` teeSPL, `.3.3` snpSPL, `.3.4`–`.3.7` spl_4–7, `.3.8` ucodeSPL, `.3.9`
//!   fmcSPL (Turin only), `.4` hwID (the raw CHIP_ID, 8 bytes on Turin);
//! - the CRL KDS serves at `/vcek/v1/<product>/crl`: X.509 v2, signed by the ARK;
//! - the report: go-sev-guest `abi.ReportToProto` offsets, signed ECDSA P-384 SHA-384
//!   over bytes `0..0x2A0`, R and S little-endian in 72-byte fields.

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PSS_SHA384, RsaKeyPair,
};
use teesql_appraisal::snp::{Product, TcbVersion};
use yasna::models::{ObjectIdentifier, UTCTime};
use yasna::{DERWriter, Tag};

/// Why the development SEV-SNP PKI could not do something.
#[derive(Debug, thiserror::Error)]
pub enum DevSnpError {
    /// Generating or loading a key failed.
    #[error("development SEV-SNP key: {0}")]
    Key(String),
    /// Signing failed.
    #[error("development SEV-SNP signature: {0}")]
    Sign(String),
}

/// Not before / not after of every development certificate: AMD's ARKs run 25 years.
const NOT_BEFORE: i64 = 1_704_067_200; // 2024-01-01
const NOT_AFTER: i64 = 2_493_072_000; // 2049-01-01

/// The report's CPUID family, model and stepping for each product (AMD's own parts:
/// Milan 19h/01h, Genoa 19h/11h, Turin 1Ah/02h).
fn cpuid(product: Product) -> [u8; 3] {
    match product {
        Product::Milan => [0x19, 0x01, 0x01],
        Product::Genoa => [0x19, 0x11, 0x01],
        Product::Turin => [0x1A, 0x02, 0x00],
    }
}

/// A TCB_VERSION from its components, in the product's layout.
pub fn tcb(product: Product, fmc: u8, bootloader: u8, tee: u8, snp: u8, ucode: u8) -> TcbVersion {
    TcbVersion(match product {
        Product::Milan | Product::Genoa => [bootloader, tee, 0, 0, 0, 0, snp, ucode],
        Product::Turin => [fmc, bootloader, tee, snp, 0, 0, 0, ucode],
    })
}

/// What a development report says; the rest comes from the PKI (chip, TCBs).
#[derive(Debug, Clone)]
pub struct DevSnpReport {
    /// MEASUREMENT: the launch digest.
    pub measurement: [u8; 48],
    /// HOST_DATA (dstack: the MrConfigV3 digest).
    pub host_data: [u8; 32],
    /// REPORT_DATA (RA-TLS: the key binding).
    pub report_data: [u8; 64],
    /// POLICY; dstack's default is `0x30000` (SMT allowed, bit 17 set).
    pub policy: u64,
    /// VMPL the report was requested from.
    pub vmpl: u32,
}

impl Default for DevSnpReport {
    fn default() -> Self {
        Self {
            measurement: [0x5e; 48],
            host_data: [0; 32],
            report_data: [0; 64],
            policy: 0x30000,
            vmpl: 0,
        }
    }
}

/// The development ARK → ASK → VCEK chain of one product, and its chip.
pub struct DevSnpPki {
    product: Product,
    ark_key: RsaKeyPair,
    ark_der: Vec<u8>,
    ask_key: RsaKeyPair,
    ask_der: Vec<u8>,
    vcek_key: EcdsaKeyPair,
    vcek_der: Vec<u8>,
    chip_id: [u8; 64],
    /// REPORTED_TCB (what the VCEK is for), COMMITTED_TCB, CURRENT_TCB and LAUNCH_TCB.
    tcbs: [TcbVersion; 4],
    rng: SystemRandom,
}

impl std::fmt::Debug for DevSnpPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevSnpPki")
            .field("product", &self.product)
            .field("chip_id", &hex::encode(self.chip_id))
            .finish_non_exhaustive()
    }
}

impl DevSnpPki {
    /// A fresh chain for `product` (new keys each time: a few hundred milliseconds of RSA
    /// key generation), a random chip id, and every TCB equal (`UpToDate`).
    pub fn new(product: Product) -> Result<Self, DevSnpError> {
        let rng = SystemRandom::new();
        let ark_key = rsa_key()?;
        let ask_key = rsa_key()?;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .map_err(|_| DevSnpError::Key("P-384 key generation failed".into()))?;
        let vcek_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .map_err(|e| DevSnpError::Key(format!("P-384 key: {e}")))?;
        let mut chip_id = [0u8; 64];
        ring::rand::SecureRandom::fill(&rng, &mut chip_id)
            .map_err(|_| DevSnpError::Key("no randomness for the chip id".into()))?;
        if product == Product::Turin {
            chip_id[8..].fill(0);
        }
        let p = product.as_str();
        let ark_name = name(&format!("ARK-{p}"));
        let ask_name = name(&format!("SEV-{p}"));
        let ark_der = certificate(&CertSpec {
            serial: 0x10000,
            issuer: &ark_name,
            subject: &ark_name,
            spki: &rsa_spki(&ark_key),
            extensions: ca_extensions(),
            trailer: true,
            signer: &ark_key,
            rng: &rng,
        })?;
        let ask_der = certificate(&CertSpec {
            serial: 0x10001,
            issuer: &ark_name,
            subject: &ask_name,
            spki: &rsa_spki(&ask_key),
            extensions: ca_extensions(),
            trailer: true,
            signer: &ark_key,
            rng: &rng,
        })?;
        let up_to_date = tcb(product, 1, 4, 0, 24, 213);
        let mut pki = Self {
            product,
            ark_key,
            ark_der,
            ask_key,
            ask_der,
            vcek_key,
            vcek_der: Vec::new(),
            chip_id,
            tcbs: [up_to_date; 4],
            rng,
        };
        pki.vcek_der = pki.issue_vcek(up_to_date, &pki.hw_id())?;
        Ok(pki)
    }

    /// The same chip with another REPORTED / COMMITTED / CURRENT TCB (LAUNCH follows
    /// COMMITTED); the VCEK is reissued for the reported TCB, as KDS would serve it.
    pub fn with_tcbs(
        mut self,
        reported: TcbVersion,
        committed: TcbVersion,
        current: TcbVersion,
    ) -> Result<Self, DevSnpError> {
        self.tcbs = [reported, committed, current, committed];
        self.vcek_der = self.issue_vcek(reported, &self.hw_id())?;
        Ok(self)
    }

    /// The product.
    pub fn product(&self) -> Product {
        self.product
    }
    /// The ARK (DER): what a verifier is given to trust this PKI.
    pub fn ark_der(&self) -> &[u8] {
        &self.ark_der
    }
    /// The ASK (DER).
    pub fn ask_der(&self) -> &[u8] {
        &self.ask_der
    }
    /// The VCEK for the chip and its reported TCB (DER).
    pub fn vcek_der(&self) -> &[u8] {
        &self.vcek_der
    }
    /// CHIP_ID.
    pub fn chip_id(&self) -> [u8; 64] {
        self.chip_id
    }
    /// REPORTED_TCB.
    pub fn reported_tcb(&self) -> TcbVersion {
        self.tcbs[0]
    }
    /// The hwID KDS files the VCEK under: CHIP_ID, its first 8 bytes on Turin.
    pub fn hw_id(&self) -> Vec<u8> {
        match self.product {
            Product::Turin => self.chip_id[..8].to_vec(),
            Product::Milan | Product::Genoa => self.chip_id.to_vec(),
        }
    }

    /// KDS's `/vcek/v1/<product>/cert_chain` body: the ASK then the ARK, PEM.
    pub fn kds_cert_chain_pem(&self) -> String {
        [&self.ask_der, &self.ark_der]
            .into_iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
            .collect()
    }

    /// A VCEK for this chip's key with the extensions `tcb` and `hw_id` say, signed by the
    /// ASK; tests pass another TCB or hwID to make a VCEK that does not match a report.
    pub fn issue_vcek(&self, tcb: TcbVersion, hw_id: &[u8]) -> Result<Vec<u8>, DevSnpError> {
        let p = self.product.as_str();
        let parts = tcb.parts(self.product);
        let int = |v: u8| yasna::construct_der(|w| w.write_u8(v));
        let mut ext: Vec<(Vec<u64>, bool, Vec<u8>)> = vec![
            (amd_oid(&[1]), false, int(self.product.struct_version())),
            (
                amd_oid(&[2]),
                false,
                yasna::construct_der(|w| w.write_ia5_string(&format!("{p}-B0"))),
            ),
            (amd_oid(&[3, 1]), false, int(parts.bootloader)),
            (amd_oid(&[3, 2]), false, int(parts.tee)),
            (amd_oid(&[3, 3]), false, int(parts.snp)),
        ];
        if matches!(self.product, Product::Milan | Product::Genoa) {
            for (n, at) in [(4, 2), (5, 3), (6, 4), (7, 5)] {
                ext.push((amd_oid(&[3, n]), false, int(tcb.0[at])));
            }
        }
        ext.push((amd_oid(&[3, 8]), false, int(parts.microcode)));
        if let Some(fmc) = parts.fmc {
            ext.push((amd_oid(&[3, 9]), false, int(fmc)));
        }
        ext.push((amd_oid(&[4]), false, hw_id.to_vec()));
        let spki = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(&[1, 2, 840, 10045, 2, 1]));
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(&[1, 3, 132, 0, 34]));
                });
                w.next()
                    .write_bitvec_bytes(self.vcek_key.public_key().as_ref(), 97 * 8);
            })
        });
        certificate(&CertSpec {
            serial: 0,
            issuer: &name(&format!("SEV-{p}")),
            subject: &name("SEV-VCEK"),
            spki: &spki,
            extensions: ext,
            trailer: false,
            signer: &self.ask_key,
            rng: &self.rng,
        })
    }

    /// A signed ATTESTATION_REPORT (version 3) from this chip.
    pub fn report(&self, r: &DevSnpReport) -> Result<Vec<u8>, DevSnpError> {
        let mut b = vec![0u8; 0x4A0];
        let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        let [reported, committed, current, launch] = self.tcbs;
        put(&mut b, 0x000, &3u32.to_le_bytes());
        put(&mut b, 0x008, &r.policy.to_le_bytes());
        put(&mut b, 0x030, &r.vmpl.to_le_bytes());
        put(&mut b, 0x034, &1u32.to_le_bytes()); // ECDSA P-384 with SHA-384
        put(&mut b, 0x038, &current.0);
        put(&mut b, 0x040, &1u64.to_le_bytes()); // PLATFORM_INFO: SMT enabled
        put(&mut b, 0x050, &r.report_data);
        put(&mut b, 0x090, &r.measurement);
        put(&mut b, 0x0C0, &r.host_data);
        let mut report_id = [0u8; 32];
        ring::rand::SecureRandom::fill(&self.rng, &mut report_id)
            .map_err(|_| DevSnpError::Sign("no randomness for REPORT_ID".into()))?;
        put(&mut b, 0x140, &report_id);
        put(&mut b, 0x160, &[0xFF; 32]); // no migration agent
        put(&mut b, 0x180, &reported.0);
        put(&mut b, 0x188, &cpuid(self.product));
        put(&mut b, 0x1A0, &self.chip_id);
        put(&mut b, 0x1E0, &committed.0);
        // Firmware 1.55.<snp SPL>, current and committed.
        let fw = |t: TcbVersion| [t.parts(self.product).snp, 55, 1];
        put(&mut b, 0x1E8, &fw(current));
        put(&mut b, 0x1EC, &fw(committed));
        put(&mut b, 0x1F0, &launch.0);
        let sig = self
            .vcek_key
            .sign(&self.rng, &b[..0x2A0])
            .map_err(|_| DevSnpError::Sign("ECDSA P-384 signing failed".into()))?;
        let (r_be, s_be) = sig.as_ref().split_at(48);
        for (at, part) in [(0x2A0, r_be), (0x2E8, s_be)] {
            for (i, byte) in part.iter().rev().enumerate() {
                b[at + i] = *byte;
            }
        }
        Ok(b)
    }

    /// KDS's `/vcek/v1/<product>/crl`: a CRL signed by the ARK revoking `serials`, valid
    /// from `this_update` to `next_update` (unix seconds).
    pub fn crl(
        &self,
        serials: &[u64],
        this_update: i64,
        next_update: i64,
    ) -> Result<Vec<u8>, DevSnpError> {
        let issuer = name(&format!("ARK-{}", self.product.as_str()));
        let tbs = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_u8(1); // v2
                w.next().write_der(&pss_algorithm(true));
                w.next().write_der(&issuer);
                w.next().write_utctime(&utc(this_update));
                w.next().write_utctime(&utc(next_update));
                if !serials.is_empty() {
                    w.next().write_sequence(|w| {
                        for serial in serials {
                            w.next().write_sequence(|w| {
                                w.next().write_u64(*serial);
                                w.next().write_utctime(&utc(this_update));
                            });
                        }
                    });
                }
            })
        });
        signed(&tbs, true, &self.ark_key, &self.rng)
    }
}

/// A development KDS serving `pki`, the way AMD's KDS answers (AMD #57230 as go-sev-guest
/// `kds/kds.go` and dstack `sev-snp-qvl` call it; `/work/notes/snp.md` §5):
/// `GET /vcek/v1/<product>/cert_chain` (PEM, ASK then ARK), `GET /vcek/v1/<product>/<hwID
/// hex>?[fmcSPL=&]blSPL=&teeSPL=&snpSPL=&ucodeSPL=` (DER VCEK; `404` for a chip or TCB it
/// does not know, `400` for a missing SPL, as KDS) and `GET /vcek/v1/<product>/crl` (DER,
/// revoking `revoked`). Every request is counted.
pub fn kds_router(pki: std::sync::Arc<DevSnpPki>, revoked: Vec<u64>) -> axum::Router {
    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use std::collections::HashMap;
    type Shared = (std::sync::Arc<DevSnpPki>, Vec<u64>);
    fn known(pki: &DevSnpPki, product: &str) -> Result<(), StatusCode> {
        (product == pki.product().as_str())
            .then_some(())
            .ok_or(StatusCode::NOT_FOUND)
    }
    async fn chain(
        State((pki, _)): State<Shared>,
        Path(product): Path<String>,
    ) -> impl IntoResponse {
        known(&pki, &product).map(|()| pki.kds_cert_chain_pem())
    }
    async fn vcek_or_crl(
        State((pki, revoked)): State<Shared>,
        Path((product, leaf)): Path<(String, String)>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Result<Vec<u8>, StatusCode> {
        known(&pki, &product)?;
        if leaf == "crl" {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            return pki
                .crl(&revoked, now - 3600, now + 30 * 24 * 3600)
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR);
        }
        let spl = |k: &str| -> Result<u8, StatusCode> {
            q.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or(StatusCode::BAD_REQUEST)
        };
        let p = pki.product();
        let fmc = if p == Product::Turin {
            spl("fmcSPL")?
        } else {
            0
        };
        let asked = tcb(
            p,
            fmc,
            spl("blSPL")?,
            spl("teeSPL")?,
            spl("snpSPL")?,
            spl("ucodeSPL")?,
        );
        if leaf != hex::encode(pki.hw_id()) || asked != pki.reported_tcb() {
            return Err(StatusCode::NOT_FOUND);
        }
        Ok(pki.vcek_der().to_vec())
    }
    axum::Router::new()
        .route("/vcek/v1/{product}/cert_chain", axum::routing::get(chain))
        .route("/vcek/v1/{product}/{leaf}", axum::routing::get(vcek_or_crl))
        .with_state((pki, revoked))
}

fn rsa_key() -> Result<RsaKeyPair, DevSnpError> {
    use rsa::Generate;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let private = rsa::PrivateKey::generate();
    let der = private
        .to_pkcs1_der()
        .map_err(|e| DevSnpError::Key(format!("RSA key encoding: {e}")))?;
    RsaKeyPair::from_der(der.as_bytes()).map_err(|e| DevSnpError::Key(format!("RSA key: {e}")))
}

/// `SubjectPublicKeyInfo` for an RSA key (rsaEncryption, as AMD's ARKs and ASKs).
fn rsa_spki(key: &RsaKeyPair) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next()
                    .write_oid(&ObjectIdentifier::from_slice(&[1, 2, 840, 113549, 1, 1, 1]));
                w.next().write_null();
            });
            let public = key.public().as_ref();
            w.next().write_bitvec_bytes(public, public.len() * 8);
        })
    })
}

fn amd_oid(tail: &[u64]) -> Vec<u64> {
    let mut oid = vec![1, 3, 6, 1, 4, 1, 3704, 1];
    oid.extend_from_slice(tail);
    oid
}

/// basicConstraints CA (critical) and keyUsage keyCertSign + cRLSign (critical).
fn ca_extensions() -> Vec<(Vec<u64>, bool, Vec<u8>)> {
    vec![
        (
            vec![2, 5, 29, 19],
            true,
            yasna::construct_der(|w| w.write_sequence(|w| w.next().write_bool(true))),
        ),
        (
            vec![2, 5, 29, 15],
            true,
            // BIT STRING, bits 5 (keyCertSign) and 6 (cRLSign).
            vec![0x03, 0x02, 0x01, 0x06],
        ),
    ]
}

/// A Name marked as development, ending in the CN the chain checks.
fn name(cn: &str) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            for (oid, value) in [
                (
                    &[2u64, 5, 4, 11][..],
                    "TeeSQL development SEV-SNP PKI (NOT AMD)",
                ),
                (&[2, 5, 4, 10][..], "TeeSQL development"),
                (&[2, 5, 4, 3][..], cn),
            ] {
                w.next().write_set(|w| {
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                        w.next().write_utf8_string(value);
                    })
                });
            }
        })
    })
}

fn utc(unix: i64) -> UTCTime {
    UTCTime::from_datetime(
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
    )
}

/// The RSASSA-PSS AlgorithmIdentifier AMD writes: SHA-384, MGF1-SHA-384, salt 48, and
/// the trailer field `[3] 1` written out (ARK, ASK, CRL) or left to default (VCEK).
fn pss_algorithm(trailer: bool) -> Vec<u8> {
    let sha384 = |w: DERWriter| {
        w.write_sequence(|w| {
            w.next().write_oid(&ObjectIdentifier::from_slice(&[
                2, 16, 840, 1, 101, 3, 4, 2, 2,
            ]));
            w.next().write_null();
        })
    };
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_oid(&ObjectIdentifier::from_slice(&[
                1, 2, 840, 113549, 1, 1, 10,
            ]));
            w.next().write_sequence(|w| {
                w.next().write_tagged(Tag::context(0), sha384);
                w.next().write_tagged(Tag::context(1), |w| {
                    w.write_sequence(|w| {
                        w.next().write_oid(&ObjectIdentifier::from_slice(&[
                            1, 2, 840, 113549, 1, 1, 8,
                        ]));
                        sha384(w.next());
                    })
                });
                w.next().write_tagged(Tag::context(2), |w| w.write_u8(48));
                if trailer {
                    w.next().write_tagged(Tag::context(3), |w| w.write_u8(1));
                }
            });
        })
    })
}

struct CertSpec<'a> {
    serial: u64,
    issuer: &'a [u8],
    subject: &'a [u8],
    spki: &'a [u8],
    extensions: Vec<(Vec<u64>, bool, Vec<u8>)>,
    trailer: bool,
    signer: &'a RsaKeyPair,
    rng: &'a SystemRandom,
}

fn certificate(c: &CertSpec<'_>) -> Result<Vec<u8>, DevSnpError> {
    let tbs = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_tagged(Tag::context(0), |w| w.write_u8(2)); // v3
            w.next().write_u64(c.serial);
            w.next().write_der(&pss_algorithm(c.trailer));
            w.next().write_der(c.issuer);
            w.next().write_sequence(|w| {
                w.next().write_utctime(&utc(NOT_BEFORE));
                w.next()
                    .write_generalized_time(&yasna::models::GeneralizedTime::from_datetime(
                        time::OffsetDateTime::from_unix_timestamp(NOT_AFTER)
                            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                    ));
            });
            w.next().write_der(c.subject);
            w.next().write_der(c.spki);
            w.next().write_tagged(Tag::context(3), |w| {
                w.write_sequence(|w| {
                    for (oid, critical, value) in &c.extensions {
                        w.next().write_sequence(|w| {
                            w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                            if *critical {
                                w.next().write_bool(true);
                            }
                            w.next().write_bytes(value);
                        });
                    }
                })
            });
        })
    });
    signed(&tbs, c.trailer, c.signer, c.rng)
}

/// `SEQUENCE { tbs, algorithm, BIT STRING signature }`, signed RSASSA-PSS SHA-384.
fn signed(
    tbs: &[u8],
    trailer: bool,
    signer: &RsaKeyPair,
    rng: &SystemRandom,
) -> Result<Vec<u8>, DevSnpError> {
    let mut sig = vec![0u8; signer.public().modulus_len()];
    signer
        .sign(&RSA_PSS_SHA384, rng, tbs, &mut sig)
        .map_err(|_| DevSnpError::Sign("RSASSA-PSS signing failed".into()))?;
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(tbs);
            w.next().write_der(&pss_algorithm(trailer));
            w.next().write_bitvec_bytes(&sig, sig.len() * 8);
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use teesql_appraisal::snp::{AmdRoots, SnpEvidence, SnpVerifier};

    fn evidence(pki: &DevSnpPki, chain: Vec<Vec<u8>>) -> SnpEvidence {
        let mr_config = r#"{"app_id":"00"}"#.to_string();
        let report = pki
            .report(&DevSnpReport {
                host_data: teesql_appraisal::mr_config::v3_digest(mr_config.as_bytes()),
                ..DevSnpReport::default()
            })
            .unwrap();
        SnpEvidence {
            report: teesql_appraisal::snp::Report::parse(&report).unwrap(),
            cert_chain: chain,
            mr_config,
        }
    }

    fn verifier(pki: &DevSnpPki) -> SnpVerifier {
        SnpVerifier::with_roots(AmdRoots::with_arks(vec![(
            pki.product(),
            pki.ark_der().to_vec(),
        )]))
    }

    #[test]
    fn each_product_verifies_under_its_development_ark_only() {
        for product in Product::ALL {
            let pki = DevSnpPki::new(product).unwrap();
            let ev = evidence(&pki, vec![pki.ask_der().to_vec(), pki.vcek_der().to_vec()]);
            let claims = verifier(&pki).appraise(&ev, 1_800_000_000);
            assert!(claims.verified, "{product:?}: {:?}", claims.error);
            assert_eq!(claims.tcb_status.as_deref(), Some("UpToDate"));
            assert_eq!(claims.product, Some(product));
            // AMD's roots do not know it.
            let amd = SnpVerifier::default().appraise(&ev, 1_800_000_000);
            assert!(!amd.verified);
        }
    }

    /// dstack 0.6's verifier takes any VCEK the ASK signed; ours must match the report.
    #[test]
    fn a_vcek_for_another_tcb_or_chip_is_refused() {
        for product in [Product::Milan, Product::Turin] {
            let pki = DevSnpPki::new(product).unwrap();
            let older = tcb(product, 1, 4, 0, 23, 213);
            let mut other_chip = pki.hw_id();
            other_chip[0] ^= 1;
            for (vcek, want) in [
                (
                    pki.issue_vcek(older, &pki.hw_id()).unwrap(),
                    "VCEK TCB snp 23 is not the report's REPORTED_TCB snp 24",
                ),
                (
                    pki.issue_vcek(pki.reported_tcb(), &other_chip).unwrap(),
                    "is not the report's CHIP_ID",
                ),
            ] {
                let ev = evidence(&pki, vec![pki.ask_der().to_vec(), vcek]);
                let claims = verifier(&pki).appraise(&ev, 1_800_000_000);
                assert!(!claims.verified, "{product:?}");
                let error = claims.error.unwrap_or_default();
                assert!(error.contains(want), "{product:?}: {error}");
                assert_eq!(
                    serde_json::to_value(claims.error_code).unwrap(),
                    "vcek_mismatch"
                );
            }
        }
    }

    /// A directory in KDS's layout (what `--snp-cert-dir` reads), with a CRL.
    fn cert_dir(pki: &DevSnpPki, crl: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "teesql-snp-{}-{}",
            std::process::id(),
            hex::encode(&pki.chip_id()[..6])
        ));
        let product = dir.join(pki.product().as_str());
        let chip = product.join(hex::encode(pki.hw_id()));
        std::fs::create_dir_all(&chip).unwrap();
        std::fs::write(product.join("cert_chain"), pki.kds_cert_chain_pem()).unwrap();
        std::fs::write(product.join("crl"), crl).unwrap();
        std::fs::write(
            chip.join(format!("{}.der", hex::encode(pki.reported_tcb().0))),
            pki.vcek_der(),
        )
        .unwrap();
        dir
    }

    #[test]
    fn the_crl_is_checked_when_at_hand() {
        let now = 1_800_000_000;
        let pki = DevSnpPki::new(Product::Milan).unwrap();
        let other = DevSnpPki::new(Product::Milan).unwrap();
        let ev = evidence(&pki, Vec::new());
        let judge = |crl: Vec<u8>| {
            let dir = cert_dir(&pki, &crl);
            let claims = verifier(&pki)
                .with_cert_dir(teesql_appraisal::snp::CertDir::new(&dir))
                .appraise(&ev, now);
            std::fs::remove_dir_all(dir).unwrap();
            claims
        };
        // A current CRL that does not list the ASK (serial 0x10001).
        let clean = judge(
            pki.crl(&[0x20000, 7], now as i64 - 60, now as i64 + 60)
                .unwrap(),
        );
        assert!(clean.verified, "{:?}", clean.error);
        assert!(clean.revocation_checked);
        assert_eq!(clean.vcek.as_ref().unwrap().source, "directory");
        // One that lists it: the report does not verify.
        let revoked = judge(
            pki.crl(&[0x10001], now as i64 - 60, now as i64 + 60)
                .unwrap(),
        );
        assert!(!revoked.verified);
        assert_eq!(serde_json::to_value(revoked.error_code).unwrap(), "revoked");
        assert!(revoked.error.unwrap().contains("is on the Milan CRL"));
        // One that cannot be trusted (another ARK's, or out of date): not checked, and why.
        for (crl, want) in [
            (
                other
                    .crl(&[0x10001], now as i64 - 60, now as i64 + 60)
                    .unwrap(),
                "does not verify",
            ),
            (
                pki.crl(&[], now as i64 - 120, now as i64 - 60).unwrap(),
                "not at 1800000000",
            ),
        ] {
            let c = judge(crl);
            assert!(c.verified, "{:?}", c.error);
            assert!(!c.revocation_checked);
            let e = c.revocation_error.unwrap_or_default();
            assert!(e.contains(want), "{e}");
        }
    }

    #[tokio::test]
    async fn an_empty_chain_is_completed_from_kds_once() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let pki = std::sync::Arc::new(DevSnpPki::new(Product::Turin).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server =
            tokio::spawn(axum::serve(listener, kds_router(pki.clone(), vec![])).into_future());
        let kds = std::sync::Arc::new(
            teesql_appraisal::snp::kds::Kds::new(&url, std::time::Duration::from_secs(5), 1 << 20)
                .unwrap(),
        );
        let v = verifier(&pki).with_kds(kds.clone());
        let ev = evidence(&pki, Vec::new());
        for _ in 0..3 {
            let c = v.appraise_online(&ev, now).await;
            assert!(c.verified, "{:?}", c.error);
            assert_eq!(c.vcek.as_ref().unwrap().source, "kds");
            assert!(c.revocation_checked, "{:?}", c.revocation_error);
        }
        // VCEK, cert_chain and CRL: one request each, whatever the number of appraisals.
        assert_eq!(kds.request_count(), 3);
        // Offline (no KDS) the same evidence has no VCEK.
        let offline = verifier(&pki).appraise(&ev, now);
        assert_eq!(serde_json::to_value(offline.error_code).unwrap(), "no_vcek");
        // Another chip's report: KDS answers 404, and the claims say so.
        let stranger = DevSnpPki::new(Product::Turin).unwrap();
        let c = v
            .appraise_online(&evidence(&stranger, Vec::new()), now)
            .await;
        assert!(!c.verified);
        assert!(c.error.unwrap().contains("404"));
        // Reports naming made-up chips: KDS is asked within the budget (16, then one per
        // 2 s), and past it the fetch fails at once without a request.
        let started = std::time::Instant::now();
        let mut not_asked = 0;
        for i in 0..24u8 {
            let mut raw = pki.report(&DevSnpReport::default()).unwrap();
            raw[0x1A0] = i;
            raw[0x1A1] = 0xEE;
            let ev = SnpEvidence {
                report: teesql_appraisal::snp::Report::parse(&raw).unwrap(),
                cert_chain: Vec::new(),
                mr_config: String::new(),
            };
            let error = v.appraise_online(&ev, now).await.error.unwrap_or_default();
            not_asked += usize::from(error.contains("not asked"));
        }
        let refilled = started.elapsed().as_secs() / 2 + 1;
        assert!(
            kds.request_count() <= 16 + refilled,
            "{}",
            kds.request_count()
        );
        assert!(not_asked > 0);
        // Evidence with its chain and a KDS that does not answer: verified, revocation
        // not checked, and the reason names the CRL fetch.
        let unreachable = std::sync::Arc::new(
            teesql_appraisal::snp::kds::Kds::new(
                "http://127.0.0.1:1",
                std::time::Duration::from_secs(5),
                1 << 20,
            )
            .unwrap(),
        );
        let carried = evidence(&pki, vec![pki.ask_der().to_vec(), pki.vcek_der().to_vec()]);
        let c = verifier(&pki)
            .with_kds(unreachable)
            .appraise_online(&carried, now)
            .await;
        assert!(c.verified, "{:?}", c.error);
        assert!(!c.revocation_checked);
        let e = c.revocation_error.unwrap_or_default();
        assert!(
            e.starts_with("KDS http://127.0.0.1:1/vcek/v1/Turin/crl: "),
            "{e}"
        );
        server.abort();
    }

    #[test]
    fn a_behind_reported_tcb_is_out_of_date_with_the_component_named() {
        let p = Product::Genoa;
        let pki = DevSnpPki::new(p)
            .unwrap()
            .with_tcbs(
                tcb(p, 0, 4, 0, 22, 213),
                tcb(p, 0, 4, 0, 24, 213),
                tcb(p, 0, 4, 0, 24, 213),
            )
            .unwrap();
        let ev = evidence(&pki, vec![pki.ask_der().to_vec(), pki.vcek_der().to_vec()]);
        let claims = verifier(&pki).appraise(&ev, 1_800_000_000);
        assert!(claims.verified, "{:?}", claims.error);
        assert_eq!(claims.tcb_status.as_deref(), Some("OutOfDate"));
        assert!(
            claims
                .tcb_behind
                .iter()
                .any(|b| b == "snp 22 < committed 24"),
            "{:?}",
            claims.tcb_behind
        );
    }
}
