//! DCAP collateral JSON (dcap-qvl's `QuoteCollateralV3`, the collateral file format and
//! what the PCCS client assembles): the same steps as `Collateral::from_file` without
//! the file (serde parse + `Collateral::new`, which computes the validity window from
//! the TCB Info / QE Identity dates and both CRLs), then `Collateral::key` (TCB Info head,
//! PCK CRL issuer chain) and `DcapBackend::verify_with` against the recorded quote of
//! the same TEE type, at a time inside the collateral's window (signature chain, TCB
//! Info and QE Identity evaluation in dcap-qvl).
//!
//! The PCCS HTTP response parsing (`PccsClient::fetch`) is private and async over the
//! network; it ends in this same `QuoteCollateralV3` value.
#![no_main]

mod common;

use std::sync::{Arc, LazyLock};

use dcap_qvl::QuoteCollateralV3;
use libfuzzer_sys::fuzz_target;
use teesql_appraisal::backend::dcap::{DcapBackend, TrustRoot};
use teesql_appraisal::collateral::{
    Collateral, CollateralConfig, CollateralKey, CollateralProvider, key_for_quote,
};
use teesql_appraisal::evidence::{Quote, decode_quote_bytes, decode_quote_text};

/// The recorded quotes with their collateral keys; the first one is the fallback.
static QUOTES: LazyLock<Vec<(Quote, Option<CollateralKey>)>> = LazyLock::new(|| {
    let quotes = [
        decode_quote_bytes(include_bytes!("../../testdata/dcap/tdx_quote")),
        decode_quote_bytes(include_bytes!("../../testdata/dcap/tdx_quote_outdated")),
        decode_quote_bytes(include_bytes!("../../testdata/dcap/sgx_quote")),
        decode_quote_text(include_bytes!("../../testdata/dstack-near/quote.hex")),
    ];
    quotes
        .into_iter()
        .map(|q| {
            let q = q.expect("recorded quote decodes");
            let key = key_for_quote(&q).ok();
            (q, key)
        })
        .collect()
});
static BACKEND: LazyLock<DcapBackend> = LazyLock::new(|| {
    let config = CollateralConfig {
        pccs_url: None,
        ..CollateralConfig::default()
    };
    let provider = CollateralProvider::new(&config).expect("offline collateral provider");
    DcapBackend::new(TrustRoot::intel(), Arc::new(provider))
});

fuzz_target!(|data: &[u8]| {
    let raw = serde_json::from_slice::<QuoteCollateralV3>(data);
    common::trace("QuoteCollateralV3 JSON", &raw);
    let Ok(raw) = raw else {
        return;
    };
    let collateral = Collateral::new(raw);
    common::trace("Collateral::new", &collateral);
    let Ok(collateral) = collateral else {
        return;
    };
    let key = collateral.key();
    common::trace("Collateral::key", &key);
    // The recorded quote this collateral is for (same TEE, FMSPC and PCK CA), if any.
    let (quote, _) = key
        .ok()
        .and_then(|key| QUOTES.iter().find(|(_, k)| k.as_ref() == Some(&key)))
        .unwrap_or(&QUOTES[0]);
    let w = collateral.window;
    let now = if w.not_before <= w.not_after { w.not_before } else { w.not_after };
    let facts = BACKEND.verify_with(quote, &collateral, now);
    common::trace("verify_with", &facts.error.as_ref().map_or(Ok(()), |e| Err(e.message.clone())));
    if facts.verified {
        assert!(facts.error.is_none());
    }
});
