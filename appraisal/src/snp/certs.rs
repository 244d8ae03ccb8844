//! AMD's certificate chain: ARK (pinned) → ASK → VCEK, RSASSA-PSS with SHA-384, and the
//! VCEK's TCB and hwID extensions.
//!
//! x509-parser 0.16 cannot verify RSASSA-PSS, so each signature is checked here with
//! ring's `RSA_PSS_2048_8192_SHA384` after the algorithm's parameters are compared byte
//! for byte with the two forms AMD issues (SHA-384, MGF1-SHA-384, salt 48, trailer 1;
//! the trailer written out on ARK and ASK, left to its default on VCEKs).

use ring::signature::{ECDSA_P384_SHA384_FIXED, RSA_PSS_2048_8192_SHA384, UnparsedPublicKey};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::SnpError;
use super::report::{Product, Report, TcbParts};

/// The pinned ARK of each product (DER), and each one's SHA-256.
///
/// Provenance (`appraisal/src/snp/roots/README.md`): taken from virtee/sev v6.0.0's
/// `src/certs/snp/builtin/<product>/ark.pem`, the roots dstack 0.6 verifies against;
/// byte-identical in DER to the copies go-sev-guest and Trustee ship (KDS
/// `/vcek/v1/<product>/cert_chain`), which `testdata/sev-snp/` keeps and a test compares.
pub const PINNED_ARKS: [(Product, &[u8], &str); 3] = [
    (
        Product::Milan,
        include_bytes!("roots/milan-ark.der"),
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    ),
    (
        Product::Genoa,
        include_bytes!("roots/genoa-ark.der"),
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    ),
    (
        Product::Turin,
        include_bytes!("roots/turin-ark.der"),
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    ),
];

/// The roots an appraisal trusts, one ARK per product.
#[derive(Debug, Clone)]
pub struct AmdRoots {
    arks: Vec<(Product, Vec<u8>)>,
}

impl Default for AmdRoots {
    fn default() -> Self {
        Self::amd()
    }
}

impl AmdRoots {
    /// AMD's ARKs for Milan, Genoa and Turin ([`PINNED_ARKS`]).
    pub fn amd() -> Self {
        Self {
            arks: PINNED_ARKS
                .iter()
                .map(|(p, der, _)| (*p, der.to_vec()))
                .collect(),
        }
    }

    /// Other roots (tests: the wrong product's root; a development PKI).
    pub fn with_arks(arks: Vec<(Product, Vec<u8>)>) -> Self {
        Self { arks }
    }

    fn ark(&self, product: Product) -> Option<&[u8]> {
        self.arks
            .iter()
            .find(|(p, _)| *p == product)
            .map(|(_, d)| d.as_slice())
    }
}

/// Largest certificate accepted in a chain (AMD's are under 2 KiB).
pub const MAX_AMD_CERT_LEN: usize = 16 * 1024;

/// The ASK and VCEK an attestation carries, DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskVcek {
    /// The AMD SEV signing key (intermediate), DER.
    pub ask: Vec<u8>,
    /// The chip's VCEK, DER.
    pub vcek: Vec<u8>,
}

const GUID_ASK: [u8; 16] = [
    0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82,
];
const GUID_VCEK: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
const GUID_VLEK: [u8; 16] = [
    0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1,
];

/// The ASK and VCEK from dstack's `cert_chain`: `[ask, vcek]` (each PEM or DER), or one
/// kernel certificate table (GUID, offset, length entries). Empty: [`SnpError::NoVcek`].
pub fn ask_vcek(cert_chain: &[Vec<u8>]) -> Result<AskVcek, SnpError> {
    match cert_chain {
        [] => Err(SnpError::NoVcek(
            "the attestation carries no certificate chain (KDS fetch not available offline)".into(),
        )),
        [ask, vcek] => Ok(AskVcek {
            ask: to_der("ASK", ask)?,
            vcek: to_der("VCEK", vcek)?,
        }),
        [table] => cert_table(table),
        more => Err(SnpError::Malformed(format!(
            "cert_chain has {} entries; expected [ASK, VCEK] or one certificate table",
            more.len()
        ))),
    }
}

fn to_der(what: &str, bytes: &[u8]) -> Result<Vec<u8>, SnpError> {
    if bytes.len() > MAX_AMD_CERT_LEN {
        return Err(SnpError::Malformed(format!(
            "{what} is {} bytes, more than {MAX_AMD_CERT_LEN}",
            bytes.len()
        )));
    }
    if !bytes.starts_with(b"-----BEGIN CERTIFICATE-----") {
        return Ok(bytes.to_vec());
    }
    let (rest, pem) = x509_parser::pem::parse_x509_pem(bytes)
        .map_err(|e| SnpError::Malformed(format!("{what}: bad PEM: {e}")))?;
    if pem.label != "CERTIFICATE" || !rest.trim_ascii().is_empty() {
        return Err(SnpError::Malformed(format!(
            "{what}: expected exactly one PEM CERTIFICATE"
        )));
    }
    Ok(pem.contents)
}

/// The GHCB / kernel certificate table: 24-byte entries `GUID ‖ offset u32 ‖ length u32`
/// up to an all-zero one; offsets from the table's start, past the entries.
fn cert_table(blob: &[u8]) -> Result<AskVcek, SnpError> {
    let bad = |m: String| SnpError::Malformed(format!("certificate table: {m}"));
    let (mut ask, mut vcek) = (None, None);
    let mut entries = blob.chunks(24);
    let mut header_end = 0usize;
    loop {
        let e = entries
            .next()
            .filter(|e| e.len() == 24)
            .ok_or_else(|| bad("no terminating entry".into()))?;
        header_end += 24;
        if e.iter().all(|b| *b == 0) {
            break;
        }
        let le = |at: usize| u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]]);
        let (offset, len) = (le(16) as usize, le(20) as usize);
        let guid: [u8; 16] = e[..16].try_into().map_err(|_| bad("entry".into()))?;
        let slot = match guid {
            GUID_ASK => &mut ask,
            GUID_VCEK => &mut vcek,
            GUID_VLEK => {
                return Err(SnpError::Unsupported(
                    "a VLEK-signed report (only VCEKs are verified)".into(),
                ));
            }
            _ => continue,
        };
        if slot.is_some() {
            return Err(bad(format!("GUID {} twice", hex::encode(guid))));
        }
        *slot = Some((offset, len));
    }
    let take = |what: &str, at: Option<(usize, usize)>| {
        let (offset, len) = at.ok_or_else(|| bad(format!("no {what} entry")))?;
        let end = offset
            .checked_add(len)
            .filter(|end| offset >= header_end && len > 0 && *end <= blob.len())
            .ok_or_else(|| bad(format!("{what} entry {offset}+{len} is out of bounds")))?;
        to_der(what, &blob[offset..end])
    };
    Ok(AskVcek {
        ask: take("ASK", ask)?,
        vcek: take("VCEK", vcek)?,
    })
}

/// What the VCEK's AMD extensions (OID 1.3.6.1.4.1.3704.1) say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcekInfo {
    /// `.1.1` structVersion: 0 Milan/Genoa, 1 Turin.
    pub struct_version: u8,
    /// `.1.2` productName, e.g. `Milan-B0`.
    pub product_name: String,
    /// `.1.3.1` blSPL.
    pub bootloader: u8,
    /// `.1.3.2` teeSPL.
    pub tee: u8,
    /// `.1.3.3` snpSPL.
    pub snp: u8,
    /// `.1.3.4`–`.1.3.7` spl_4 to spl_7 (reserved; absent ones are `None`).
    pub spl_reserved: [Option<u8>; 4],
    /// `.1.3.8` ucodeSPL.
    pub microcode: u8,
    /// `.1.3.9` fmcSPL (Turin).
    pub fmc: Option<u8>,
    /// `.1.4` hwID: raw bytes (64 Milan/Genoa, 8 Turin).
    pub hw_id: Vec<u8>,
    /// notBefore, unix seconds.
    pub not_before: i64,
    /// notAfter, unix seconds.
    pub not_after: i64,
}

const AMD_OID: &str = "1.3.6.1.4.1.3704.1.";

impl VcekInfo {
    /// Read the AMD extensions of a VCEK, each in the one encoding AMD uses (INTEGER
    /// `02 01 xx` or `02 02 00 xx`, IA5String, raw hwID), none twice. Its signature is
    /// not checked here ([`verify_chain`] does).
    pub fn parse(cert: &X509Certificate<'_>) -> Result<Self, SnpError> {
        let bad = |m: String| SnpError::VcekMismatch(format!("VCEK extension {m}"));
        let mut seen = std::collections::HashSet::new();
        let (mut sv, mut name, mut hw) = (None, None, None);
        let mut spl: [Option<u8>; 9] = [None; 9];
        for ext in cert.extensions() {
            let id = ext.oid.to_id_string();
            let Some(sub) = id.strip_prefix(AMD_OID) else {
                continue;
            };
            if !seen.insert(sub.to_string()) {
                return Err(bad(format!("{id} appears twice")));
            }
            let v = ext.value;
            match sub {
                "1" => {
                    sv = Some(der_small_int(v).ok_or_else(|| {
                        bad(format!("{id} (structVersion) is not a small INTEGER"))
                    })?)
                }
                "2" => {
                    name = Some(
                        v.strip_prefix(&[0x16])
                            .and_then(|r| r.split_first())
                            .filter(|(len, s)| usize::from(**len) == s.len() && **len < 0x80)
                            .and_then(|(_, s)| std::str::from_utf8(s).ok())
                            .ok_or_else(|| bad(format!("{id} (productName) is not an IA5String")))?
                            .to_string(),
                    )
                }
                "4" => hw = Some(v.to_vec()),
                s => {
                    if let Some(n) = s
                        .strip_prefix("3.")
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| (1..=9).contains(n))
                    {
                        spl[n - 1] = Some(
                            der_small_int(v)
                                .ok_or_else(|| bad(format!("{id} is not a small INTEGER")))?,
                        );
                    }
                }
            }
        }
        let need = |v: Option<u8>, what: &str| v.ok_or_else(|| bad(format!("{what} is missing")));
        Ok(Self {
            struct_version: need(sv, "structVersion (.1.1)")?,
            product_name: name.ok_or_else(|| bad("productName (.1.2) is missing".into()))?,
            bootloader: need(spl[0], "blSPL (.1.3.1)")?,
            tee: need(spl[1], "teeSPL (.1.3.2)")?,
            snp: need(spl[2], "snpSPL (.1.3.3)")?,
            spl_reserved: [spl[3], spl[4], spl[5], spl[6]],
            microcode: need(spl[7], "ucodeSPL (.1.3.8)")?,
            fmc: spl[8],
            hw_id: hw.ok_or_else(|| bad("hwID (.1.4) is missing".into()))?,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// A DER INTEGER 0..=255 in its minimal form: `02 01 xx` (xx < 0x80) or `02 02 00 xx`.
pub(crate) fn der_small_int(v: &[u8]) -> Option<u8> {
    match v {
        [0x02, 0x01, x] if *x < 0x80 => Some(*x),
        [0x02, 0x02, 0x00, x] if *x >= 0x80 => Some(*x),
        _ => None,
    }
}

/// The VCEK agrees with the report it signs: its product and structVersion, its TCB
/// equal to REPORTED_TCB component by component (reserved bytes zero), its hwID the
/// report's CHIP_ID (Turin: the first 8 bytes, the rest of CHIP_ID zero), and CHIP_ID
/// not masked. dstack 0.6 checks none of these.
pub fn check_vcek(report: &Report, product: Product, vcek: &VcekInfo) -> Result<(), SnpError> {
    let bad = |m: String| Err(SnpError::VcekMismatch(m));
    if vcek.struct_version != product.struct_version() {
        return bad(format!(
            "VCEK structVersion {} is not {}'s {}",
            vcek.struct_version,
            product.as_str(),
            product.struct_version()
        ));
    }
    if !vcek.product_name.starts_with(product.as_str()) {
        return bad(format!(
            "VCEK productName {:?} is not {}",
            vcek.product_name,
            product.as_str()
        ));
    }
    let reported_tcb = report.reported_tcb();
    let reported = reported_tcb.parts(product);
    let cert = TcbParts {
        raw: String::new(),
        fmc: vcek.fmc,
        bootloader: vcek.bootloader,
        tee: vcek.tee,
        snp: vcek.snp,
        microcode: vcek.microcode,
    };
    if (product == Product::Turin) != vcek.fmc.is_some() {
        return bad(format!(
            "VCEK fmcSPL is {} on {}",
            if vcek.fmc.is_some() {
                "present"
            } else {
                "absent"
            },
            product.as_str()
        ));
    }
    for ((name, want), (_, have)) in reported.components().into_iter().zip(cert.components()) {
        if want != have {
            return bad(format!(
                "VCEK TCB {name} {have} is not the report's REPORTED_TCB {name} {want}"
            ));
        }
    }
    // Milan/Genoa carry spl_4..spl_7 in bytes 2..5; Turin's are reserved and zero.
    for (i, at) in reported_tcb.reserved(product).iter().enumerate() {
        let cert_spl = match product {
            Product::Milan | Product::Genoa => vcek.spl_reserved[i].unwrap_or(0),
            Product::Turin => 0,
        };
        if reported_tcb.0[*at] != cert_spl {
            return bad(format!(
                "REPORTED_TCB byte {at} is {}, the VCEK says {cert_spl}",
                reported_tcb.0[*at]
            ));
        }
    }
    if vcek.spl_reserved.iter().flatten().any(|v| *v != 0) && product == Product::Turin {
        return bad("VCEK reserved SPLs are not zero".into());
    }
    let chip_id = report.chip_id();
    if chip_id.iter().all(|b| *b == 0) {
        return bad("CHIP_ID is all zero (masked by the host): no VCEK can match it".into());
    }
    let id_len = match product {
        Product::Milan | Product::Genoa => 64,
        Product::Turin => 8,
    };
    if vcek.hw_id.len() != id_len
        || vcek.hw_id[..] != chip_id[..id_len]
        || chip_id[id_len..].iter().any(|b| *b != 0)
    {
        return bad(format!(
            "VCEK hwID {} is not the report's CHIP_ID {}",
            hex::encode(&vcek.hw_id),
            hex::encode(chip_id)
        ));
    }
    Ok(())
}

/// The content of the RSASSA-PSS parameters SEQUENCE AMD writes on VCEKs (hash
/// SHA-384, MGF1 with SHA-384, salt length 48, trailer field left at its default 1).
const PSS_SHA384_PARAMS: &[u8] = &[
    0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
    0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0xa2,
    0x03, 0x02, 0x01, 0x30,
];
/// The explicit trailer field `[3] INTEGER 1` AMD appends on ARKs and ASKs.
const PSS_TRAILER_ONE: &[u8] = &[0xa3, 0x03, 0x02, 0x01, 0x01];
const RSASSA_PSS: &str = "1.2.840.113549.1.1.10";

/// `cert` is signed by `issuer` with RSASSA-PSS SHA-384 (parameters checked exactly).
fn check_pss(
    what: &str,
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), SnpError> {
    let bad = |m: String| Err(SnpError::Chain(format!("{what}: {m}")));
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return bad(format!(
            "issuer {} is not {}",
            cert.issuer(),
            issuer.subject()
        ));
    }
    check_pss_signature(
        &cert.signature_algorithm,
        &cert.tbs_certificate.signature,
        cert.tbs_certificate.as_ref(),
        &cert.signature_value.data,
        issuer,
    )
    .map_err(|m| SnpError::Chain(format!("{what}: {m}")))
}

/// A signature over `signed` by `issuer`'s RSA key, RSASSA-PSS SHA-384 with AMD's
/// parameters, the outer algorithm equal to the signed one.
fn check_pss_signature(
    alg: &x509_parser::x509::AlgorithmIdentifier<'_>,
    signed_alg: &x509_parser::x509::AlgorithmIdentifier<'_>,
    signed: &[u8],
    signature: &[u8],
    issuer: &X509Certificate<'_>,
) -> Result<(), String> {
    if alg != signed_alg {
        return Err("the signature algorithm differs from the one it signs".into());
    }
    if alg.algorithm.to_id_string() != RSASSA_PSS {
        return Err(format!(
            "signature algorithm {} is not RSASSA-PSS",
            alg.algorithm
        ));
    }
    let params_ok = alg.parameters.as_ref().is_some_and(|p| {
        p.header.tag() == x509_parser::der_parser::asn1_rs::Tag::Sequence
            && (p.data == PSS_SHA384_PARAMS
                || p.data.strip_prefix(PSS_SHA384_PARAMS) == Some(PSS_TRAILER_ONE))
    });
    if !params_ok {
        return Err(
            "RSASSA-PSS parameters are not SHA-384, MGF1-SHA-384, salt 48, trailer 1".into(),
        );
    }
    UnparsedPublicKey::new(
        &RSA_PSS_2048_8192_SHA384,
        &issuer.public_key().subject_public_key.data,
    )
    .verify(signed, signature)
    .map_err(|_| format!("signature by {} does not verify", issuer.subject()))
}

/// Largest CRL read (AMD's list a handful of entries in about 1 KiB).
pub const MAX_AMD_CRL_LEN: usize = 64 * 1024;

/// Check the ASK against the product's CRL (KDS `/vcek/v1/<product>/crl`): the CRL is
/// signed by the pinned ARK (RSASSA-PSS as the chain), current at `now`, and does not
/// list the ASK's serial. AMD revokes ASKs this way; VCEKs are retired by TCB instead
/// (go-sev-guest `verifyCRL` checks the same). `Err(Revoked)` when the ASK is listed;
/// `Err(Malformed)` when the CRL itself cannot be trusted (the caller reports revocation
/// as not checked).
pub fn check_crl(
    roots: &AmdRoots,
    product: Product,
    ask_der: &[u8],
    crl_der: &[u8],
    now: u64,
) -> Result<(), SnpError> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let bad = |m: String| SnpError::Malformed(format!("{} CRL: {m}", product.as_str()));
    if crl_der.len() > MAX_AMD_CRL_LEN {
        return Err(bad(format!("larger than {MAX_AMD_CRL_LEN} bytes")));
    }
    let ark_der = roots
        .ark(product)
        .ok_or_else(|| bad("no ARK is pinned".into()))?;
    let ark = parse_der("ARK", ark_der)?;
    let ask = parse_der("ASK", ask_der)?;
    let crl = match CertificateRevocationList::from_der(crl_der) {
        Ok(([], crl)) => crl,
        Ok(_) => return Err(bad("bytes after the CRL".into())),
        Err(e) => return Err(bad(format!("not an X.509 CRL: {e}"))),
    };
    if crl.issuer().as_raw() != ark.subject().as_raw() {
        return Err(bad(format!("issued by {}, not the ARK", crl.issuer())));
    }
    check_pss_signature(
        &crl.signature_algorithm,
        &crl.tbs_cert_list.signature,
        crl.tbs_cert_list.as_ref(),
        &crl.signature_value.data,
        &ark,
    )
    .map_err(bad)?;
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let this_update = crl.last_update().timestamp();
    let next_update = crl.next_update().map(|t| t.timestamp());
    if now < this_update || next_update.is_some_and(|n| now > n) {
        return Err(bad(format!(
            "valid from {this_update} to {}, not at {now}",
            next_update.map_or("(no next update)".into(), |n| n.to_string())
        )));
    }
    let serial = ask.tbs_certificate.raw_serial();
    if crl
        .iter_revoked_certificates()
        .any(|r| r.raw_serial() == serial)
    {
        return Err(SnpError::Revoked(format!(
            "the ASK {} (serial {}) is on the {} CRL",
            ask.subject(),
            ask.tbs_certificate.raw_serial_as_string(),
            product.as_str()
        )));
    }
    Ok(())
}

fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

fn check_dates(what: &str, cert: &X509Certificate<'_>, now: u64) -> Result<(), SnpError> {
    let v = cert.validity();
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    if now < v.not_before.timestamp() || now > v.not_after.timestamp() {
        return Err(SnpError::Chain(format!(
            "{what} is valid from {} to {}, not at {now}",
            v.not_before.timestamp(),
            v.not_after.timestamp()
        )));
    }
    Ok(())
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

fn parse_der<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, SnpError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SnpError::Malformed(format!(
            "{what}: bytes after the certificate"
        ))),
        Err(e) => Err(SnpError::Malformed(format!(
            "{what}: not an X.509 certificate: {e}"
        ))),
    }
}

/// A verified chain: the VCEK and what its extensions say.
#[derive(Debug, Clone)]
pub struct VerifiedVcek {
    /// The VCEK's P-384 public key, uncompressed (`04 ‖ X ‖ Y`).
    pub public_key: Vec<u8>,
    /// The VCEK's AMD extensions and validity.
    pub info: VcekInfo,
}

/// ARK (pinned for `product`) self-signed, ARK → ASK → VCEK by RSASSA-PSS SHA-384, names
/// chaining (`ARK-<product>`, `SEV-<product>`, `SEV-VCEK`), ARK and ASK CAs, all three
/// valid at `now`.
pub fn verify_chain(
    roots: &AmdRoots,
    product: Product,
    chain: &AskVcek,
    now: u64,
) -> Result<VerifiedVcek, SnpError> {
    let ark_der = roots
        .ark(product)
        .ok_or_else(|| SnpError::Chain(format!("no ARK is pinned for {}", product.as_str())))?;
    let ark = parse_der("ARK", ark_der)?;
    let ask = parse_der("ASK", &chain.ask)?;
    let vcek = parse_der("VCEK", &chain.vcek)?;
    let p = product.as_str();
    for (what, cert, want) in [
        ("ARK", &ark, format!("ARK-{p}")),
        ("ASK", &ask, format!("SEV-{p}")),
        ("VCEK", &vcek, "SEV-VCEK".to_string()),
    ] {
        if common_name(cert).as_deref() != Some(want.as_str()) {
            return Err(SnpError::Chain(format!(
                "{what} subject {} is not CN={want}",
                cert.subject()
            )));
        }
        check_dates(what, cert, now)?;
    }
    if !is_ca(&ark) || !is_ca(&ask) {
        return Err(SnpError::Chain("ARK or ASK is not a CA".into()));
    }
    check_pss("ARK", &ark, &ark)?;
    check_pss("ASK", &ask, &ark)?;
    check_pss("VCEK", &vcek, &ask)?;
    let public_key = vcek.public_key().subject_public_key.data.to_vec();
    if public_key.len() != 97 || public_key[0] != 0x04 {
        return Err(SnpError::Chain(
            "the VCEK's key is not an uncompressed P-384 point".into(),
        ));
    }
    Ok(VerifiedVcek {
        public_key,
        info: VcekInfo::parse(&vcek)?,
    })
}

/// The report's signature: ECDSA P-384 with SHA-384 over the raw bytes `0..0x2A0`, R and
/// S little-endian in 72-byte fields whose top 24 bytes must be zero.
pub fn verify_report_signature(report: &Report, vcek_public_key: &[u8]) -> Result<(), SnpError> {
    if report.signature_algo() != 1 {
        return Err(SnpError::Signature(format!(
            "SIGNATURE_ALGO {} is not ECDSA P-384 with SHA-384 (1)",
            report.signature_algo()
        )));
    }
    let (r, s) = report.signature();
    if r[48..].iter().chain(&s[48..]).any(|b| *b != 0) {
        return Err(SnpError::Signature(
            "the signature's R or S is wider than 48 bytes".into(),
        ));
    }
    let mut sig = Vec::with_capacity(96);
    sig.extend(r[..48].iter().rev());
    sig.extend(s[..48].iter().rev());
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, vcek_public_key)
        .verify(&report.raw()[..super::report::SIGNED_LEN], &sig)
        .map_err(|_| {
            SnpError::Signature("the report's signature does not verify with the VCEK".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> Vec<u8> {
        let bytes = std::fs::read(format!(
            "{}/../testdata/sev-snp/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        to_der(name, &bytes).unwrap()
    }

    fn ask(product: Product) -> Vec<u8> {
        testdata(&format!(
            "virtee-{}-ask.pem",
            product.as_str().to_lowercase()
        ))
    }

    /// Every pinned root signs itself and its product's ASK, and no other product's: the
    /// keys, not only the names, differ.
    #[test]
    fn each_pinned_ark_signs_its_own_ask_only() {
        for (product, ark_der, _) in PINNED_ARKS {
            let (_, ark) = X509Certificate::from_der(ark_der).unwrap();
            check_pss("ARK", &ark, &ark).unwrap();
            for other in Product::ALL {
                let ask_der = ask(other);
                let (_, ask) = X509Certificate::from_der(&ask_der).unwrap();
                assert_eq!(
                    check_pss("ASK", &ask, &ark).is_ok(),
                    other == product,
                    "{product:?} {other:?}"
                );
                if other == product {
                    check_pss("ASK", &ask, &ark).unwrap();
                    assert!(is_ca(&ask));
                }
            }
        }
    }

    /// A real Turin VCEK (virtee/sev's test vector; no report matches it): structVersion 1,
    /// fmcSPL, an 8-byte hwID, spl_4 absent, and a chain to the pinned Turin ARK.
    #[test]
    fn a_real_turin_vcek_chains_and_reads() {
        let chain = AskVcek {
            ask: ask(Product::Turin),
            vcek: testdata("virtee-vcek-turin.der"),
        };
        // Valid 2024-11-06 to 2031-11-06.
        let now = 1_800_000_000;
        let v = verify_chain(&AmdRoots::amd(), Product::Turin, &chain, now).unwrap();
        assert_eq!(v.info.struct_version, 1);
        assert_eq!(v.info.product_name, "Turin");
        assert_eq!(v.info.fmc, Some(0));
        assert_eq!(v.info.spl_reserved[0], None);
        assert_eq!(hex::encode(&v.info.hw_id), "1e550a8ee5cf9f4d");
        assert_eq!(v.public_key.len(), 97);
        // Not before its notBefore, and not as a Milan chain.
        assert!(verify_chain(&AmdRoots::amd(), Product::Turin, &chain, 1_700_000_000).is_err());
        assert!(verify_chain(&AmdRoots::amd(), Product::Milan, &chain, now).is_err());
    }

    #[test]
    fn pss_parameters_are_checked_exactly() {
        let ask_der = ask(Product::Milan);
        // The salt length 48 (0x30) of the TBS and outer algorithm both: now 32.
        let mut bad = ask_der.clone();
        let mut n = 0;
        let pattern = [0xa2, 0x03, 0x02, 0x01, 0x30];
        let mut i = 0;
        while i + pattern.len() <= bad.len() {
            if bad[i..i + pattern.len()] == pattern {
                bad[i + 4] = 0x20;
                n += 1;
            }
            i += 1;
        }
        assert_eq!(n, 2);
        let (_, ark) = X509Certificate::from_der(PINNED_ARKS[0].1).unwrap();
        let (_, cert) = X509Certificate::from_der(&bad).unwrap();
        let err = check_pss("ASK", &cert, &ark).unwrap_err();
        assert!(err.to_string().contains("parameters"), "{err}");
    }
}
