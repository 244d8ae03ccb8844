//! The SEV-SNP ATTESTATION_REPORT (AMD #56860, 0x4A0 bytes, little-endian), parsed once
//! from the received bytes, which are kept: the signature is checked over the raw bytes
//! `0x000..0x2A0`, never over a re-serialisation (sev 6.0.0 hashes what it re-encodes,
//! which zeroes bytes its parser skipped).
//!
//! Offsets follow go-sev-guest `abi.ReportToProto`, virtee/sev and the dstack fixture
//! (see `/work/notes/snp.md` §1, summarised in `verifier/CLAIMS.md`).

use serde::Serialize;

use crate::evidence::EvidenceError;

/// Length of an ATTESTATION_REPORT.
pub const REPORT_LEN: usize = 0x4A0;
/// The signed part: `report[0..SIGNED_LEN]`.
pub const SIGNED_LEN: usize = 0x2A0;

/// An AMD EPYC generation: which ARK roots the VCEK and how its TCB is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Product {
    /// EPYC 7003 (Zen 3).
    Milan,
    /// EPYC 9004/8004 (Zen 4; KDS "Genoa" also serves Bergamo and Siena).
    Genoa,
    /// EPYC 9005 (Zen 5): TCB_VERSION structVersion 1, 8-byte hwID.
    Turin,
}

impl Product {
    /// The name AMD's KDS and certificates use (`ARK-Milan`, `SEV-Milan`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Milan => "Milan",
            Self::Genoa => "Genoa",
            Self::Turin => "Turin",
        }
    }

    /// Every product with a pinned root.
    pub const ALL: [Product; 3] = [Self::Milan, Self::Genoa, Self::Turin];

    /// The VCEK's `structVersion` extension for this product.
    pub fn struct_version(self) -> u8 {
        match self {
            Self::Milan | Self::Genoa => 0,
            Self::Turin => 1,
        }
    }

    /// From the report's CPUID family and model (v3+), as dstack and Trustee map them.
    fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Self::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Self::Genoa),
            (0x1A, 0x00..=0x11) => Some(Self::Turin),
            _ => None,
        }
    }
}

/// A TCB_VERSION: 8 raw bytes whose layout depends on the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcbVersion(pub [u8; 8]);

/// A TCB_VERSION decoded for claims (`snp.reported_tcb`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcbParts {
    /// The 8 bytes, lowercase hex, in report order.
    pub raw: String,
    /// FMC SPL (Turin only; `null` before).
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl TcbVersion {
    /// The components, in the product's layout (snp.md §1 TCB_VERSION).
    pub fn parts(self, product: Product) -> TcbParts {
        let b = self.0;
        let (fmc, bootloader, tee, snp) = match product {
            Product::Milan | Product::Genoa => (None, b[0], b[1], b[6]),
            Product::Turin => (Some(b[0]), b[1], b[2], b[3]),
        };
        TcbParts {
            raw: hex::encode(b),
            fmc,
            bootloader,
            tee,
            snp,
            microcode: b[7],
        }
    }

    /// The bytes no named component occupies in the product's layout.
    pub(crate) fn reserved(self, product: Product) -> &'static [usize] {
        match product {
            Product::Milan | Product::Genoa => &[2, 3, 4, 5],
            Product::Turin => &[4, 5, 6],
        }
    }
}

impl TcbParts {
    /// `(name, value)` of each named component, for comparisons.
    pub(crate) fn components(&self) -> Vec<(&'static str, u8)> {
        let mut out = Vec::with_capacity(5);
        if let Some(f) = self.fmc {
            out.push(("fmc", f));
        }
        out.extend([
            ("bootloader", self.bootloader),
            ("tee", self.tee),
            ("snp", self.snp),
            ("microcode", self.microcode),
        ]);
        out
    }
}

/// The guest policy (POLICY, u64) as the host set it at launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestPolicy {
    /// The 64-bit value, lowercase hex (16 digits, big-endian as a number).
    pub raw: String,
    /// Lowest firmware ABI minor the guest accepts.
    pub abi_minor: u8,
    /// Lowest firmware ABI major the guest accepts.
    pub abi_major: u8,
    /// Bit 16: SMT may be enabled on the host.
    pub smt: bool,
    /// Bit 18: a migration agent may be associated with the guest.
    pub migrate_ma: bool,
    /// Bit 19: debugging allowed (the host can read and write guest memory).
    pub debug: bool,
    /// Bit 20: the guest may run on one socket only.
    pub single_socket: bool,
    /// Bit 21: CXL may be populated with devices or memory.
    pub cxl_allow: bool,
    /// Bit 22: AES-256-XTS memory encryption required.
    pub mem_aes_256_xts: bool,
    /// Bit 23: RAPL must be disabled.
    pub rapl_dis: bool,
    /// Bit 24: ciphertext hiding must be enabled.
    pub ciphertext_hiding: bool,
    /// Bit 25: guest page swapping disabled (firmware ABI 1.58+).
    pub page_swap_disable: bool,
}

impl GuestPolicy {
    fn parse(v: u64) -> Result<Self, String> {
        // Bit 17 is reserved and must be one; bits 63:26 must be zero (go-sev-guest).
        if v & (1 << 17) == 0 {
            return Err(format!("POLICY {v:#018x}: reserved bit 17 is not set"));
        }
        if v >> 26 != 0 {
            return Err(format!(
                "POLICY {v:#018x}: reserved bits 63:26 are not zero"
            ));
        }
        let bit = |n: u32| v & (1 << n) != 0;
        Ok(Self {
            raw: format!("{v:016x}"),
            abi_minor: (v & 0xff) as u8,
            abi_major: ((v >> 8) & 0xff) as u8,
            smt: bit(16),
            migrate_ma: bit(18),
            debug: bit(19),
            single_socket: bit(20),
            cxl_allow: bit(21),
            mem_aes_256_xts: bit(22),
            rapl_dis: bit(23),
            ciphertext_hiding: bit(24),
            page_swap_disable: bit(25),
        })
    }
}

/// PLATFORM_INFO (u64): what the platform had enabled when the report was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlatformInfo {
    /// The 64-bit value, lowercase hex; bits not decoded below stay visible here.
    pub raw: String,
    /// Bit 0: SMT is enabled.
    pub smt_en: bool,
    /// Bit 1: transparent SME is enabled.
    pub tsme_en: bool,
    /// Bit 2: ECC memory is in use.
    pub ecc_en: bool,
    /// Bit 3: RAPL is disabled.
    pub rapl_dis: bool,
    /// Bit 4: ciphertext hiding is enabled.
    pub ciphertext_hiding_en: bool,
    /// Bit 5: the BadRAM alias check completed (AMD-SB-3015).
    pub alias_check_complete: bool,
    /// Bit 7: SEV-TIO is enabled.
    pub tio_en: bool,
}

impl PlatformInfo {
    fn parse(v: u64) -> Self {
        let bit = |n: u32| v & (1 << n) != 0;
        Self {
            raw: format!("{v:016x}"),
            smt_en: bit(0),
            tsme_en: bit(1),
            ecc_en: bit(2),
            rapl_dis: bit(3),
            ciphertext_hiding_en: bit(4),
            alias_check_complete: bit(5),
            tio_en: bit(7),
        }
    }
}

/// Which key signed the report (KEY_INFO bits 4:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SigningKey {
    /// The chip's VCEK (the only key this appraisal verifies).
    Vcek,
    /// A cloud provider's VLEK.
    Vlek,
    /// No key: the report is unsigned.
    None,
    /// A value AMD reserves.
    Reserved,
}

/// A parsed ATTESTATION_REPORT. Constructed only by [`Report::parse`].
#[derive(Clone, PartialEq, Eq)]
pub struct Report {
    raw: Box<[u8; REPORT_LEN]>,
    policy: GuestPolicy,
    platform_info: PlatformInfo,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("version", &self.version())
            .field("measurement", &hex::encode(self.measurement()))
            .finish_non_exhaustive()
    }
}

impl Report {
    /// Parse a report: exactly [`REPORT_LEN`] bytes, version 2 to 5, every reserved
    /// field zero, the policy's fixed bits as AMD defines them.
    pub fn parse(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let bad = |m: String| EvidenceError::invalid(format!("SEV-SNP report: {m}"));
        let raw: [u8; REPORT_LEN] = bytes
            .try_into()
            .map_err(|_| bad(format!("{} bytes, not {REPORT_LEN}", bytes.len())))?;
        let le64 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let policy = GuestPolicy::parse(le64(0x008)).map_err(bad)?;
        let platform_info = PlatformInfo::parse(le64(0x040));
        let r = Self {
            raw: Box::new(raw),
            policy,
            platform_info,
        };
        let version = r.version();
        if !(2..=5).contains(&version) {
            return Err(bad(format!("version {version} is not supported (2 to 5)")));
        }
        if r.key_info() >> 5 != 0 {
            return Err(bad(format!(
                "KEY_INFO {:#010x}: reserved bits 31:5 are not zero",
                r.key_info()
            )));
        }
        // Reserved, must be zero. v2 has no CPUID bytes; v5 added the mitigation vectors.
        let cpuid_end = if version >= 3 { 0x18B } else { 0x188 };
        let mit_end = if version >= 5 { 0x208 } else { 0x1F8 };
        for (from, to) in [
            (0x04C, 0x050),
            (cpuid_end, 0x1A0),
            (0x1EB, 0x1EC),
            (0x1EF, 0x1F0),
            (mit_end, SIGNED_LEN),
            (0x330, REPORT_LEN),
        ] {
            if let Some(i) = (from..to).find(|i| r.raw[*i] != 0) {
                return Err(bad(format!("reserved byte {i:#05x} is not zero")));
            }
        }
        Ok(r)
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }

    /// `N` bytes at `at`; every caller passes a constant offset inside the report.
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.raw[at..at + N]);
        out
    }

    /// The bytes as received.
    pub fn raw(&self) -> &[u8; REPORT_LEN] {
        &self.raw
    }

    /// VERSION.
    pub fn version(&self) -> u32 {
        self.u32_at(0x000)
    }
    /// GUEST_SVN.
    pub fn guest_svn(&self) -> u32 {
        self.u32_at(0x004)
    }
    /// POLICY, decoded.
    pub fn policy(&self) -> &GuestPolicy {
        &self.policy
    }
    /// FAMILY_ID.
    pub fn family_id(&self) -> [u8; 16] {
        self.array(0x010)
    }
    /// IMAGE_ID.
    pub fn image_id(&self) -> [u8; 16] {
        self.array(0x020)
    }
    /// VMPL the report was requested from (0 is the most privileged).
    pub fn vmpl(&self) -> u32 {
        self.u32_at(0x030)
    }
    /// SIGNATURE_ALGO (1 = ECDSA P-384 with SHA-384).
    pub fn signature_algo(&self) -> u32 {
        self.u32_at(0x034)
    }
    /// CURRENT_TCB.
    pub fn current_tcb(&self) -> TcbVersion {
        TcbVersion(self.array(0x038))
    }
    /// PLATFORM_INFO, decoded.
    pub fn platform_info(&self) -> &PlatformInfo {
        &self.platform_info
    }
    fn key_info(&self) -> u32 {
        self.u32_at(0x048)
    }
    /// KEY_INFO bit 0: an author key signed the ID key.
    pub fn author_key_en(&self) -> bool {
        self.key_info() & 1 != 0
    }
    /// KEY_INFO bit 1: the firmware masked the chip key and did not sign.
    pub fn mask_chip_key(&self) -> bool {
        self.key_info() & 2 != 0
    }
    /// KEY_INFO bits 4:2.
    pub fn signing_key(&self) -> SigningKey {
        match (self.key_info() >> 2) & 7 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            _ => SigningKey::Reserved,
        }
    }
    /// REPORT_DATA: what the guest asked the report to carry.
    pub fn report_data(&self) -> [u8; 64] {
        self.array(0x050)
    }
    /// MEASUREMENT: the launch digest.
    pub fn measurement(&self) -> [u8; 48] {
        self.array(0x090)
    }
    /// HOST_DATA: 32 bytes the host chose at launch.
    pub fn host_data(&self) -> [u8; 32] {
        self.array(0x0C0)
    }
    /// ID_KEY_DIGEST.
    pub fn id_key_digest(&self) -> [u8; 48] {
        self.array(0x0E0)
    }
    /// AUTHOR_KEY_DIGEST.
    pub fn author_key_digest(&self) -> [u8; 48] {
        self.array(0x110)
    }
    /// REPORT_ID.
    pub fn report_id(&self) -> [u8; 32] {
        self.array(0x140)
    }
    /// REPORT_ID_MA: all 0xFF when no migration agent is associated.
    pub fn report_id_ma(&self) -> [u8; 32] {
        self.array(0x160)
    }
    /// REPORTED_TCB: the TCB the VCEK that signs is derived from.
    pub fn reported_tcb(&self) -> TcbVersion {
        TcbVersion(self.array(0x180))
    }
    /// CPUID family, model and stepping (v3+).
    pub fn cpuid(&self) -> Option<(u8, u8, u8)> {
        (self.version() >= 3).then(|| (self.raw[0x188], self.raw[0x189], self.raw[0x18A]))
    }
    /// The product the CPUID names (v3+); `None` for v2 or an unknown CPU.
    pub fn product(&self) -> Option<Product> {
        self.cpuid().and_then(|(f, m, _)| Product::from_cpuid(f, m))
    }
    /// CHIP_ID: all zero when the host masked it.
    pub fn chip_id(&self) -> [u8; 64] {
        self.array(0x1A0)
    }
    /// COMMITTED_TCB.
    pub fn committed_tcb(&self) -> TcbVersion {
        TcbVersion(self.array(0x1E0))
    }
    /// Current firmware version `major.minor.build`.
    pub fn current_firmware(&self) -> String {
        format!(
            "{}.{}.{}",
            self.raw[0x1EA], self.raw[0x1E9], self.raw[0x1E8]
        )
    }
    /// Committed firmware version `major.minor.build`.
    pub fn committed_firmware(&self) -> String {
        format!(
            "{}.{}.{}",
            self.raw[0x1EE], self.raw[0x1ED], self.raw[0x1EC]
        )
    }
    /// LAUNCH_TCB.
    pub fn launch_tcb(&self) -> TcbVersion {
        TcbVersion(self.array(0x1F0))
    }
    /// The signature's R and S, little-endian, 72 bytes each.
    pub fn signature(&self) -> (&[u8], &[u8]) {
        (&self.raw[0x2A0..0x2E8], &self.raw[0x2E8..0x330])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fixture_report() -> Vec<u8> {
        let blob = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/dstack/sev-snp-attestation.bin"
        ))
        .unwrap();
        // SCALE: 00 (V0), 03 (SEV-SNP), compact length 1184 (0x1281), then the report.
        assert_eq!(&blob[..4], &[0x00, 0x03, 0x81, 0x12]);
        blob[4..4 + REPORT_LEN].to_vec()
    }

    #[test]
    fn fixture_report_decodes_as_dstack_states() {
        let r = Report::parse(&fixture_report()).unwrap();
        assert_eq!(r.version(), 3);
        assert_eq!(r.product(), Some(Product::Milan));
        assert_eq!(
            hex::encode(r.measurement()),
            "7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599847ff250dbffcd07e1ba639771d6f05d"
        );
        assert_eq!(
            hex::encode(r.host_data()),
            "783f0057820acb99249af56cc3b07b4e8d80f65183167cba9cf437bb680f742f"
        );
        assert!(hex::encode(r.chip_id()).starts_with("38d174589d2dff97"));
        assert_eq!(r.vmpl(), 0);
        assert!(!r.policy().debug && !r.policy().migrate_ma);
        assert_eq!(r.signing_key(), SigningKey::Vcek);
        let reported = r.reported_tcb().parts(Product::Milan);
        assert_eq!((reported.bootloader, reported.tee), (4, 0));
        assert_eq!((reported.snp, reported.microcode), (23, 213));
        assert_eq!(r.current_tcb().parts(Product::Milan).snp, 24);
        assert_eq!(r.current_firmware(), "1.55.29");
        assert_eq!(&r.report_data()[..24], b"attest-test-fixture-2026");
    }

    #[test]
    fn wrong_length_version_and_reserved_bytes_are_refused() {
        let good = fixture_report();
        for len in [0, 1, REPORT_LEN - 1, REPORT_LEN + 1] {
            let mut b = good.clone();
            b.resize(len, 0);
            assert!(Report::parse(&b).is_err(), "len {len}");
        }
        for (at, value, want) in [
            (0x000, 1, "version 1"),
            (0x000, 6, "version 6"),
            (0x04C, 1, "reserved byte 0x04c"),
            (0x1A0 - 1, 1, "reserved byte 0x19f"),
            (0x29F, 1, "reserved byte 0x29f"),
            (0x49F, 1, "reserved byte 0x49f"),
            (0x00B, 0x04, "reserved bits 63:26"),
            (0x04B, 0x80, "KEY_INFO"),
        ] {
            let mut b = good.clone();
            b[at] = value;
            let err = Report::parse(&b).unwrap_err().to_string();
            assert!(err.contains(want), "{at:#x}: {err}");
        }
        let mut b = good;
        b[0x00A] &= !0x02;
        let err = Report::parse(&b).unwrap_err().to_string();
        assert!(err.contains("bit 17"), "{err}");
    }

    #[test]
    fn turin_tcb_layout() {
        let t = TcbVersion([1, 2, 3, 4, 0, 0, 0, 9]).parts(Product::Turin);
        assert_eq!(
            (t.fmc, t.bootloader, t.tee, t.snp, t.microcode),
            (Some(1), 2, 3, 4, 9)
        );
        let m = TcbVersion([1, 2, 0, 0, 0, 0, 4, 9]).parts(Product::Milan);
        assert_eq!((m.fmc, m.bootloader, m.tee, m.snp), (None, 1, 2, 4));
    }
}
