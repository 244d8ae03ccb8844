//! The appraisal a decision token states in EAR terms (draft-ietf-rats-ear-04, the AR4SI
//! trustworthiness vector of draft-ietf-rats-ar4si): one submodule per appraised
//! component (`cpu0`, the CVM), its status and its vector, read from the decision's facts
//! and reason codes. The decision stays the policy's: the vector explains it to any EAR
//! consumer, and a denied decision is always `contraindicated`.

use std::collections::BTreeMap;

use serde::Serialize;

/// An AR4SI trustworthiness tier (EAR `ear_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// `none`: claim values -1..=1; no statement either way.
    None,
    /// `affirming`: values 2..=31; the aspect is trustworthy.
    Affirming,
    /// `warning`: values 32..=95; usable, but with a known weakness.
    Warning,
    /// `contraindicated`: values 96..=127; also every denied decision's status.
    Contraindicated,
}

impl Tier {
    /// The tier of an AR4SI claim value: -1..=1 none, 2..=31 affirming, 32..=95 warning,
    /// 96..=127 contraindicated (and the negative, implementation-specific ranges).
    pub fn of(value: i8) -> Self {
        match value {
            -1..=1 => Tier::None,
            2..=31 | -32..=-2 => Tier::Affirming,
            32..=95 | -96..=-33 => Tier::Warning,
            _ => Tier::Contraindicated,
        }
    }
}

/// AR4SI values used here (draft-ietf-rats-ar4si §2.3).
pub mod value {
    /// No claim on this aspect (tier none): the evidence says nothing about it.
    pub const NO_CLAIM: i8 = 0;
    /// Cryptographic validation failed (`hardware`, on `quote_signature_invalid`).
    pub const CRYPTO_FAILED: i8 = 99;
    // instance-identity
    /// An allowed CVM whose event log replayed, so its app id is attested.
    pub const RECOGNIZED_INSTANCE: i8 = 2;
    /// The evidence does not hold together: the quote does not bind the presented key, or
    /// stated report data differs from the quote's (`key_not_bound`, `evidence_inconsistent`).
    pub const UNTRUSTWORTHY_INSTANCE: i8 = 96;
    /// The app or tenant is not the one expected or pinned (`app_id_not_attested`,
    /// `tenant_not_mapped`, `leader_*_mismatch`, …).
    pub const UNRECOGNIZED_INSTANCE: i8 = 97;
    // configuration
    /// Allowed, RTMR3 replayed and a compose hash attested.
    pub const APPROVED_CONFIG: i8 = 2;
    /// A debug TD, or a compose hash, OS image or `mr_config` not pinned, expected or attested.
    pub const UNSUPPORTABLE_CONFIG: i8 = 96;
    // executables
    /// Allowed and verified, with the runtime (RTMR3) replayed too.
    pub const APPROVED_RT: i8 = 2;
    /// Allowed and verified, boot registers only (no event log replayed to RTMR3).
    pub const APPROVED_BOOT: i8 = 3;
    /// A boot register not pinned or not expected (`mrtd_not_pinned`, `rtmr0_not_pinned`, …).
    pub const UNRECOGNIZED_RT: i8 = 33;
    /// The event log does not replay to the quote's RTMR3 (`rtmr3_mismatch`).
    pub const CONTRAINDICATED_RT: i8 = 96;
    // hardware
    /// A verified quote whose TCB status is `UpToDate`.
    pub const GENUINE_HW: i8 = 2;
    /// A verified quote with any other TCB status (e.g. `SWHardeningNeeded`), or an allow
    /// warned of `tcb_grace` or `tcb_early_demotion`: a warning.
    pub const UNSAFE_HW: i8 = 32;
    /// The TCB status or an advisory refused by policy, or the TCB revoked
    /// (`tcb_status_not_accepted`, `tcb_out_of_date`, `tcb_eval_data_number_too_low`,
    /// `advisory_refused`, `tcb_revoked`).
    pub const CONTRAINDICATED_HW: i8 = 96;
    /// Not a genuine TDX platform by the trust root (`untrusted_root`, `dev_root`,
    /// `not_tdx`, `tcb_level_unknown`).
    pub const UNRECOGNIZED_HW: i8 = 97;
    // runtime-opaque
    /// A verified quote of a TD not in debug mode: its memory is encrypted.
    pub const ENCRYPTED_RT: i8 = 2;
    /// A debug TD: its memory is visible to the host.
    pub const VISIBLE_RT: i8 = 96;
    // sourced-data
    /// A verified quote with its collateral (or ITA's token) in order.
    pub const TRUSTED_SOURCES: i8 = 2;
    /// Collateral expired or unavailable, or the attestation service (ITA) failed.
    pub const UNTRUSTED_SOURCES: i8 = 32;
}

/// What the vector is read from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    /// The policy's decision; false makes the status `contraindicated`.
    pub allow: bool,
    /// The decision's reason codes (when allowed, its warnings); known codes set vector
    /// claims.
    pub reasons: &'a [&'a str],
    /// A quote was presented.
    pub has_quote: bool,
    /// It verified up to a trust root.
    pub verified: bool,
    /// The quote's TCB status (`UpToDate`, `SWHardeningNeeded`, …); only `UpToDate` is
    /// `hardware` genuine. `None`: not known (no verified quote).
    pub tcb_status: Option<&'a str>,
    /// The TD's debug attribute: `Some(true)` makes `runtime-opaque` visible and the
    /// configuration unsupportable; `None` without a quote.
    pub debug: Option<bool>,
    /// The event log replayed to RTMR3; `None` without an event log.
    pub rtmr3_replayed: Option<bool>,
    /// The compose hash the event log attests.
    pub compose_hash: Option<&'a str>,
}

/// One submodule's appraisal: its status and its trustworthiness vector (AR4SI claim
/// name → value; every claim this verifier speaks to is present, 0 where it has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Appraisal {
    /// `ear_status`: `contraindicated` for a denial; for an allow, the vector's worst
    /// tier but at least `affirming`.
    pub status: Tier,
    /// `ear_trustworthiness_vector`: the six AR4SI claims (`configuration`, `executables`,
    /// `hardware`, `instance-identity`, `runtime-opaque`, `sourced-data`) → [`value`].
    pub vector: BTreeMap<&'static str, i8>,
}

/// The appraisal of the CVM behind a decision.
pub fn appraise(i: &Inputs<'_>) -> Appraisal {
    use value::*;
    let has = |codes: &[&str]| i.reasons.iter().any(|r| codes.contains(r));
    let ends = |suffix: &str| i.reasons.iter().any(|r| r.ends_with(suffix));

    let hardware = if has(&["quote_signature_invalid", "snp_unverified"]) {
        CRYPTO_FAILED
    } else if has(&["untrusted_root", "dev_root", "not_tdx", "tcb_level_unknown"]) {
        UNRECOGNIZED_HW
    } else if has(&[
        "snp_revoked",
        "snp_tcb_not_accepted",
        "tcb_status_not_accepted",
        "tcb_out_of_date",
        "tcb_eval_data_number_too_low",
        "advisory_refused",
        "tcb_revoked",
    ]) {
        CONTRAINDICATED_HW
    } else if i.allow && has(&["tcb_grace", "tcb_early_demotion"]) {
        // Allowed, but the platform is (or will soon be) behind Intel's TCB: a warning.
        UNSAFE_HW
    } else if i.verified {
        match i.tcb_status {
            Some("UpToDate") => GENUINE_HW,
            Some(_) => UNSAFE_HW,
            None => NO_CLAIM,
        }
    } else {
        NO_CLAIM
    };
    let runtime_opaque = match (i.verified, i.debug) {
        (_, Some(true)) => VISIBLE_RT,
        (true, Some(false)) => ENCRYPTED_RT,
        _ => NO_CLAIM,
    };
    let executables = if has(&["rtmr3_mismatch"]) {
        CONTRAINDICATED_RT
    } else if has(&[
        "mrtd_not_pinned",
        "rtmr0_not_pinned",
        "rtmr1_not_pinned",
        "rtmr2_not_pinned",
        "mrtd_not_expected",
        "snp_measurement_not_pinned",
    ]) {
        UNRECOGNIZED_RT
    } else if i.allow && i.verified {
        if i.rtmr3_replayed == Some(true) {
            APPROVED_RT
        } else {
            APPROVED_BOOT
        }
    } else {
        NO_CLAIM
    };
    let configuration = if i.debug == Some(true)
        || has(&["debug_td", "mr_config_mismatch"])
        || ends("compose_hash_not_pinned")
        || ends("compose_hash_not_expected")
        || has(&[
            "compose_hash_unattested",
            "os_image_hash_not_pinned",
            "os_image_hash_unattested",
        ]) {
        UNSUPPORTABLE_CONFIG
    } else if i.allow && i.rtmr3_replayed == Some(true) && i.compose_hash.is_some() {
        APPROVED_CONFIG
    } else {
        // A bare quote says nothing of the configuration: no claim (not a warning).
        NO_CLAIM
    };
    let instance_identity = if has(&["key_not_bound", "evidence_inconsistent"]) {
        UNTRUSTWORTHY_INSTANCE
    } else if has(&[
        "app_id_not_attested",
        "tenant_not_mapped",
        "tenant_ambiguous",
        "leader_instance_mismatch",
        "leader_app_mismatch",
        "app_id_not_pinned",
        "app_id_not_expected",
    ]) || ends("app_id_not_pinned")
    {
        UNRECOGNIZED_INSTANCE
    } else if i.allow && i.rtmr3_replayed == Some(true) {
        RECOGNIZED_INSTANCE
    } else {
        NO_CLAIM
    };
    let sourced_data = if has(&[
        "collateral_expired",
        "collateral_unavailable",
        "attestation_service_unavailable",
        "attestation_token_invalid",
    ]) {
        UNTRUSTED_SOURCES
    } else if i.verified {
        TRUSTED_SOURCES
    } else {
        NO_CLAIM
    };
    let vector = BTreeMap::from([
        ("configuration", configuration),
        ("executables", executables),
        ("hardware", hardware),
        ("instance-identity", instance_identity),
        ("runtime-opaque", runtime_opaque),
        ("sourced-data", sourced_data),
    ]);
    // A denial is contraindicated whatever else held; an allow is no more trustworthy
    // than its worst claim (EAR: the status never claims more than the vector).
    let worst = vector
        .values()
        .map(|v| Tier::of(*v))
        .max()
        .unwrap_or(Tier::None);
    let status = if i.allow {
        worst.max(Tier::Affirming)
    } else {
        Tier::Contraindicated
    };
    Appraisal { status, vector }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Inputs<'static> {
        Inputs {
            allow: true,
            reasons: &[],
            has_quote: true,
            verified: true,
            tcb_status: Some("UpToDate"),
            debug: Some(false),
            rtmr3_replayed: Some(true),
            compose_hash: Some("c1"),
        }
    }

    #[test]
    fn an_allowed_up_to_date_cvm_is_affirmed_on_every_claim() {
        let a = appraise(&allowed());
        assert_eq!(a.status, Tier::Affirming);
        assert!(
            a.vector.values().all(|v| Tier::of(*v) == Tier::Affirming),
            "{a:?}"
        );
    }

    #[test]
    fn known_vulnerabilities_make_an_allow_a_warning() {
        let a = appraise(&Inputs {
            tcb_status: Some("SWHardeningNeeded"),
            ..allowed()
        });
        assert_eq!(a.vector["hardware"], value::UNSAFE_HW);
        assert_eq!(a.status, Tier::Warning);
    }

    #[test]
    fn a_tcb_warning_makes_an_up_to_date_allow_a_warning() {
        for code in ["tcb_early_demotion", "tcb_grace"] {
            let a = appraise(&Inputs {
                reasons: &[code],
                ..allowed()
            });
            assert_eq!(a.vector["hardware"], value::UNSAFE_HW, "{code}");
            assert_eq!(a.status, Tier::Warning, "{code}");
        }
    }

    #[test]
    fn a_denial_is_contraindicated_and_the_vector_says_where() {
        for (code, claim, value) in [
            ("quote_signature_invalid", "hardware", value::CRYPTO_FAILED),
            (
                "tcb_status_not_accepted",
                "hardware",
                value::CONTRAINDICATED_HW,
            ),
            ("tcb_out_of_date", "hardware", value::CONTRAINDICATED_HW),
            ("dev_root", "hardware", value::UNRECOGNIZED_HW),
            ("rtmr3_mismatch", "executables", value::CONTRAINDICATED_RT),
            ("mrtd_not_pinned", "executables", value::UNRECOGNIZED_RT),
            (
                "compose_hash_not_pinned",
                "configuration",
                value::UNSUPPORTABLE_CONFIG,
            ),
            (
                "verifier_compose_hash_not_pinned",
                "configuration",
                value::UNSUPPORTABLE_CONFIG,
            ),
            (
                "app_id_not_attested",
                "instance-identity",
                value::UNRECOGNIZED_INSTANCE,
            ),
            (
                "key_not_bound",
                "instance-identity",
                value::UNTRUSTWORTHY_INSTANCE,
            ),
            (
                "collateral_expired",
                "sourced-data",
                value::UNTRUSTED_SOURCES,
            ),
        ] {
            let a = appraise(&Inputs {
                allow: false,
                reasons: &[code],
                ..allowed()
            });
            assert_eq!(a.status, Tier::Contraindicated, "{code}");
            assert_eq!(a.vector[claim], value, "{code}");
        }
        let debug = appraise(&Inputs {
            allow: false,
            reasons: &["debug_td"],
            debug: Some(true),
            ..allowed()
        });
        assert_eq!(debug.vector["runtime-opaque"], value::VISIBLE_RT);
    }

    #[test]
    fn nothing_presented_claims_nothing_but_is_still_refused() {
        let a = appraise(&Inputs {
            allow: false,
            reasons: &["client_attestation_required"],
            ..Inputs::default()
        });
        assert_eq!(a.status, Tier::Contraindicated);
        assert!(a.vector.values().all(|v| *v == value::NO_CLAIM));
    }

    #[test]
    fn tiers_follow_ar4si_ranges() {
        for (v, t) in [
            (0, Tier::None),
            (-1, Tier::None),
            (2, Tier::Affirming),
            (3, Tier::Affirming),
            (32, Tier::Warning),
            (36, Tier::Warning),
            (96, Tier::Contraindicated),
            (99, Tier::Contraindicated),
            (-2, Tier::Affirming),
            (-33, Tier::Warning),
            (-97, Tier::Contraindicated),
        ] {
            assert_eq!(Tier::of(v), t, "{v}");
        }
    }
}
