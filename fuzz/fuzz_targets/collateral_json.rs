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
use teesql_verifier::backend::dcap::{DcapBackend, TrustRoot};
use teesql_verifier::collateral::{Collateral, CollateralConfig, CollateralProvider};
use teesql_verifier::evidence::{Quote, TeeType, decode_quote_bytes};

static TDX_QUOTE: LazyLock<Quote> = LazyLock::new(|| {
    decode_quote_bytes(include_bytes!("../../testdata/dcap/tdx_quote")).expect("recorded TDX quote")
});
static SGX_QUOTE: LazyLock<Quote> = LazyLock::new(|| {
    decode_quote_bytes(include_bytes!("../../testdata/dcap/sgx_quote")).expect("recorded SGX quote")
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
    let quote = match key {
        Ok(key) if key.tee == TeeType::Sgx => &*SGX_QUOTE,
        Ok(_) => &*TDX_QUOTE,
        Err(_) => &*TDX_QUOTE,
    };
    let w = collateral.window;
    let now = if w.not_before <= w.not_after { w.not_before } else { w.not_after };
    let facts = BACKEND.verify_with(quote, &collateral, now);
    common::trace("verify_with", &facts.error.as_ref().map_or(Ok(()), |e| Err(e.message.clone())));
    if facts.verified {
        assert!(facts.error.is_none());
    }
});
