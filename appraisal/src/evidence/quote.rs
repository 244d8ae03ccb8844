//! Raw DCAP quotes: bytes in, a typed header and report out.

use std::sync::Arc;

use dcap_qvl::quote::{Quote as DcapQuote, Report};

use super::{EvidenceError, MAX_QUOTE_LEN, check_len, decode_hex};

/// A decoded DCAP quote. Holds the exact bytes (the backend verifies those) and the
/// fields decoded from them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Quote {
    raw: Arc<[u8]>,
    parsed: Arc<DcapQuote>,
}

/// The TEE a quote comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TeeType {
    /// An Intel TDX trust domain: the quote's body is a TD report; `tdx` in claims.
    Tdx,
    /// An Intel SGX enclave: the quote's body is an enclave report; `sgx` in claims.
    Sgx,
}

/// The measurement fields of a TD report that policies look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport {
    /// TEE_TCB_SVN: security version numbers of the TDX module and its components.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM: SHA-384 measurement of the TDX module.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM: SHA-384 of the TDX module's signer; zero for Intel's modules.
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES of the TDX module (zero in production modules).
    pub seam_attributes: [u8; 8],
    /// TDATTRIBUTES; bit 0 of byte 0 is TUD.DEBUG (see [`Self::debug`]).
    pub td_attributes: [u8; 8],
    /// XFAM: the extended CPU features (XSAVE) the TD may use.
    pub xfam: [u8; 8],
    /// MRTD: SHA-384 of the TD's initial memory (the firmware image), set at build.
    pub mrtd: [u8; 48],
    /// MRCONFIGID: 48 bytes the host sets at TD creation; dstack puts a commitment to the
    /// app's configuration here (see [`crate::mr_config`]).
    pub mr_config_id: [u8; 48],
    /// MROWNER: owner identity the host sets at TD creation.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG: owner-defined configuration the host sets at TD creation.
    pub mr_owner_config: [u8; 48],
    /// RTMR0..RTMR3, the runtime-extendable SHA-384 registers; dstack extends RTMR3 with
    /// its event log's events.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA: the 64 bytes the TD chose to bind into the quote (dstack pads
    /// shorter data with zeros).
    pub report_data: [u8; 64],
}

impl TdReport {
    /// The TUD.DEBUG bit of TDATTRIBUTES: the TD's memory and state are open to the host.
    pub fn debug(&self) -> bool {
        self.td_attributes[0] & 0x01 != 0
    }
}

impl Quote {
    /// The exact bytes of the quote.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Quote format version (3 for SGX, 4 or 5 for TDX).
    pub fn version(&self) -> u16 {
        self.parsed.header.version
    }

    /// SGX when the quote's body is an SGX enclave report, TDX otherwise; from the parsed
    /// report, not yet verified.
    pub fn tee_type(&self) -> TeeType {
        if self.parsed.report.is_sgx() {
            TeeType::Sgx
        } else {
            TeeType::Tdx
        }
    }

    /// The TD report, for TDX quotes.
    pub fn td_report(&self) -> Option<TdReport> {
        let r = self.parsed.report.as_td10()?;
        Some(TdReport {
            tee_tcb_svn: r.tee_tcb_svn,
            mr_seam: r.mr_seam,
            mr_signer_seam: r.mr_signer_seam,
            seam_attributes: r.seam_attributes,
            td_attributes: r.td_attributes,
            xfam: r.xfam,
            mrtd: r.mr_td,
            mr_config_id: r.mr_config_id,
            mr_owner: r.mr_owner,
            mr_owner_config: r.mr_owner_config,
            rtmr: [r.rt_mr0, r.rt_mr1, r.rt_mr2, r.rt_mr3],
            report_data: r.report_data,
        })
    }

    /// The 64 bytes of report data, for either TEE.
    pub fn report_data(&self) -> [u8; 64] {
        match &self.parsed.report {
            Report::SgxEnclave(r) => r.report_data,
            other => other.as_td10().map(|r| r.report_data).unwrap_or([0; 64]),
        }
    }

    /// The DER certificates of the quote's PCK certificate chain, the PCK certificate first,
    /// read with the PEM parser dcap-qvl verifies them with. Every reader of the chain
    /// (collateral key, PCK pre-check, TCB claims) must see the certificates dcap-qvl
    /// checks: PEM parsers disagree on text before `-----BEGIN` on a line, and the
    /// chain is not covered by the quote's signature.
    pub fn pck_chain_der(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        Ok(pem_certificates(self.parsed().raw_cert_chain()?)?)
    }

    /// The decoded quote, for backends.
    pub fn parsed(&self) -> &DcapQuote {
        &self.parsed
    }
}

/// The DER contents of every PEM block in `chain`, in order, read with dcap-qvl's PEM
/// parser (the `pem` crate's `parse_many`), so that what is read from a chain is what
/// dcap-qvl verifies.
pub fn pem_certificates(chain: &[u8]) -> Result<Vec<Vec<u8>>, pem::PemError> {
    Ok(pem::parse_many(chain)?
        .into_iter()
        .map(pem::Pem::into_contents)
        .collect())
}

/// The earliest `notAfter` of the certificates of a PEM chain (read as
/// [`pem_certificates`] reads it); `u64::MAX` for an empty chain, `None` when a block or a
/// certificate cannot be read.
pub fn earliest_not_after(chain: &[u8]) -> Option<u64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut until = u64::MAX;
    for der in pem_certificates(chain).ok()? {
        let (_, cert) = X509Certificate::from_der(&der).ok()?;
        until = until.min(u64::try_from(cert.validity().not_after.timestamp()).ok()?);
    }
    Some(until)
}

/// Decode a binary quote.
pub fn decode_quote_bytes(bytes: &[u8]) -> Result<Quote, EvidenceError> {
    check_len("quote", bytes.len(), MAX_QUOTE_LEN)?;
    if bytes.len() < 48 {
        return Err(EvidenceError::Truncated {
            what: "quote header",
            offset: bytes.len(),
            needed: 48 - bytes.len(),
        });
    }
    let parsed = DcapQuote::parse(bytes)
        .map_err(|e| EvidenceError::invalid(format!("malformed DCAP quote: {e:#}")))?;
    Ok(Quote {
        raw: Arc::from(bytes),
        parsed: Arc::new(parsed),
    })
}

/// Decode a quote given as a file's contents: binary, or hex text (with or without `0x`).
pub fn decode_quote_text(input: &[u8]) -> Result<Quote, EvidenceError> {
    match looks_like_hex(input) {
        Some(text) => decode_quote_bytes(&decode_hex("quote", text, MAX_QUOTE_LEN)?),
        None => decode_quote_bytes(input),
    }
}

/// Hex text if the input is text that claims to be hex: it starts with `0x`, or is made
/// of hex digits (and line breaks) only. A binary quote starts with its version (`03 00`, `04 00` or
/// `05 00`), which is neither, so binary input never passes this test.
fn looks_like_hex(input: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(input).ok()?;
    let t = text.trim();
    let prefixed = t.starts_with("0x") || t.starts_with("0X");
    // Hex dumps wrap lines (`xxd -p` at 60 digits), so whitespace between digits is fine.
    let all_hex = !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    (prefixed || all_hex).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/dcap/tdx_quote"
        ))
        .unwrap()
    }

    #[test]
    fn binary_and_hex_decode_to_the_same_quote() {
        let bin = sample();
        let a = decode_quote_text(&bin).unwrap();
        let hex_text = format!("0x{}\n", hex::encode(&bin));
        let b = decode_quote_text(hex_text.as_bytes()).unwrap();
        assert_eq!(a.raw(), b.raw());
        // As `xxd -p` writes it: 60 digits a line.
        let wrapped: Vec<String> = hex::encode(&bin)
            .as_bytes()
            .chunks(60)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let c = decode_quote_text(wrapped.join("\n").as_bytes()).unwrap();
        assert_eq!(a.raw(), c.raw());
        assert_eq!(a.tee_type(), TeeType::Tdx);
        assert_eq!(a.version(), 4);
        let td = a.td_report().unwrap();
        assert!(hex::encode(td.mrtd).starts_with("91eb2b44"));
        assert_eq!(td.rtmr[3], [0u8; 48]);
        assert!(!td.debug());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bin = sample();
        // Header (48) + TD report (584) + auth data length (4) + auth data; recorded
        // quotes carry zero padding after that, which decoders ignore.
        let auth_len = u32::from_le_bytes(bin[632..636].try_into().unwrap()) as usize;
        let structural = 636 + auth_len;
        assert!(structural <= bin.len());
        for len in 0..structural {
            assert!(decode_quote_bytes(&bin[..len]).is_err(), "len {len}");
        }
        assert!(decode_quote_bytes(&bin[..structural]).is_ok());
    }

    #[test]
    fn bad_hex_is_reported_as_hex() {
        for bad in [&b"0x04zz"[..], b"040", b"0x"] {
            let err = decode_quote_text(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    EvidenceError::Hex { .. } | EvidenceError::Truncated { .. }
                ),
                "{err}"
            );
        }
        let err = decode_quote_text(b"0x04zz").unwrap_err();
        assert!(matches!(err, EvidenceError::Hex { .. }), "{err}");
    }

    #[test]
    fn oversize_is_refused() {
        let big = vec![0u8; MAX_QUOTE_LEN + 1];
        assert!(matches!(
            decode_quote_bytes(&big),
            Err(EvidenceError::TooLarge { .. })
        ));
    }
}
