//! The PCCS (Intel PCS v4 API) of the development PKI, as typed axum routes, serving the
//! very collateral [`DevPki::collateral`] builds:
//!
//! - `GET /tdx/certification/v4/tcb?fmspc=<hex>[&update=standard|early][&tcbEvaluationDataNumber=N]`:
//!   `{"tcbInfo":{…},"signature":"<hex r||s>"}`, header `TCB-Info-Issuer-Chain` (URL-encoded
//!   PEM `[TCB signing, root]`). No `fmspc` → 400; another FMSPC or evaluation number → 404.
//! - `GET /tdx/certification/v4/qe/identity`: `{"enclaveIdentity":{…},"signature":…}`, header
//!   `SGX-Enclave-Identity-Issuer-Chain`.
//! - `GET /sgx/certification/v4/pckcrl?ca=platform[&encoding=der]`: the PCK CRL, DER with
//!   `encoding=der`, PEM otherwise; header `SGX-PCK-CRL-Issuer-Chain`. `ca=processor` → 404
//!   (there is no Processor CA); no `ca` → 400.
//! - `GET /sgx/certification/v4/rootcacrl`: the root CA CRL as hex text, as a PCCS serves it.
//! - `GET /tdx/certification/v4/tcbevaluationdatanumbers`: `{"tcbEvaluationDataNumbers":
//!   {…,"tcbEvalNumbers":[…]},"signature":…}`, header
//!   `TCB-Evaluation-Data-Numbers-Issuer-Chain` (the shape of Intel's, recorded in
//!   `testdata/pcs/`).
//!
//! With a rehearsed TCB recovery ([`crate::pki::TcbRecovery`]) `update=early` serves the
//! recovery's set at once and `update=standard` from its promotion on; a
//! `tcbEvaluationDataNumber` serves that set (17 or the recovery's), any other is 404.
//!
//! Anything else under the API (the SGX TCB Info and QE Identity included: this platform
//! only makes TDX quotes) is 404; a window that cannot be represented is 500.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dcap_qvl::QuoteCollateralV3;
use serde::Deserialize;

use crate::pki::{DevPki, DevPkiError};

/// What the PCCS routes need: the PKI and the collateral window it serves.
pub trait PccsSource: Clone + Send + Sync + 'static {
    fn pki(&self) -> &DevPki;
    /// Start and length of the collateral window, unix seconds.
    fn window(&self) -> (u64, u64);
    /// Called for every request (counting, logging).
    fn on_request(&self) {}
}

/// The PCCS routes, for a router with state `S`.
pub fn routes<S: PccsSource>() -> Router<S> {
    Router::new()
        .route("/tdx/certification/v4/tcb", get(tdx_tcb::<S>))
        .route(
            "/tdx/certification/v4/qe/identity",
            get(tdx_qe_identity::<S>),
        )
        .route(
            "/tdx/certification/v4/tcbevaluationdatanumbers",
            get(eval_numbers::<S>),
        )
        .route("/sgx/certification/v4/pckcrl", get(pck_crl::<S>))
        .route("/sgx/certification/v4/rootcacrl", get(root_ca_crl::<S>))
        .route("/sgx/certification/v4/{*rest}", get(not_found::<S>))
        .route("/tdx/certification/v4/{*rest}", get(not_found::<S>))
}

/// The query of the TCB Info and QE Identity endpoints.
#[derive(Debug, Deserialize)]
pub struct EvaluationQuery {
    fmspc: Option<String>,
    update: Option<String>,
    #[serde(rename = "tcbEvaluationDataNumber")]
    evaluation_data_number: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PckCrlQuery {
    ca: Option<String>,
    encoding: Option<String>,
}

fn error(status: StatusCode, message: &'static str) -> Response {
    (status, message).into_response()
}

/// A refusal before the response is built.
type Failure = (StatusCode, String);

async fn not_found<S: PccsSource>(State(s): State<S>) -> Response {
    s.on_request();
    error(StatusCode::NOT_FOUND, "not found")
}

fn collateral<S: PccsSource>(s: &S, eval: u32) -> Result<QuoteCollateralV3, Failure> {
    let (issued_at, validity) = s.window();
    s.pki()
        .collateral_of_set(issued_at, validity, eval)
        .map_err(|e: DevPkiError| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `update` and `tcbEvaluationDataNumber`, as the PCS checks them, and the set they
/// select.
fn check_evaluation<S: PccsSource>(s: &S, q: &EvaluationQuery) -> Result<u32, Failure> {
    let pki = s.pki();
    let now = i64::try_from(teesql_appraisal::Clock::System.now()).unwrap_or(i64::MAX);
    let fail = |status, message: &str| Err((status, message.to_string()));
    if q.update.is_some() && q.evaluation_data_number.is_some() {
        return fail(
            StatusCode::BAD_REQUEST,
            "give update or tcbEvaluationDataNumber, not both",
        );
    }
    if let Some(number) = &q.evaluation_data_number {
        return match number.parse::<u32>() {
            Ok(n) if n == DevPki::TCB_EVALUATION_DATA_NUMBER || n == pki.early_set() => Ok(n),
            Ok(_) => fail(StatusCode::NOT_FOUND, "not found"),
            Err(_) => fail(StatusCode::BAD_REQUEST, "invalid tcbEvaluationDataNumber"),
        };
    }
    match q.update.as_deref() {
        Some(u) if u.eq_ignore_ascii_case("early") => Ok(pki.early_set()),
        Some(u) if !u.eq_ignore_ascii_case("standard") => {
            fail(StatusCode::BAD_REQUEST, "invalid update")
        }
        _ => Ok(pki.standard_set(now)),
    }
}

async fn eval_numbers<S: PccsSource>(State(s): State<S>) -> Response {
    s.on_request();
    let (issued_at, validity) = s.window();
    match s.pki().eval_numbers(issued_at, validity) {
        Ok((body, chain)) => with_chain(
            "TCB-Evaluation-Data-Numbers-Issuer-Chain",
            &chain,
            "application/json",
            body.into_bytes(),
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A signed JSON document as the PCS wraps it: `{"<name>":<json>,"signature":"<hex>"}`,
/// the JSON kept byte for byte (the signature covers those bytes).
fn signed(name: &str, json: &str, signature: &[u8]) -> String {
    format!(
        "{{\"{name}\":{json},\"signature\":\"{}\"}}",
        hex::encode(signature)
    )
}

fn with_chain(
    header: &'static str,
    chain: &str,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response {
    (
        [
            ("content-type", content_type.to_string()),
            (header, crate::pki::percent_encode_header(chain)),
        ],
        body,
    )
        .into_response()
}

async fn tdx_tcb<S: PccsSource>(State(s): State<S>, Query(q): Query<EvaluationQuery>) -> Response {
    s.on_request();
    let Some(fmspc) = &q.fmspc else {
        return error(StatusCode::BAD_REQUEST, "missing fmspc");
    };
    if !fmspc.eq_ignore_ascii_case(&hex::encode(s.pki().fmspc())) {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    let eval = match check_evaluation(&s, &q) {
        Ok(eval) => eval,
        Err(r) => return r.into_response(),
    };
    match collateral(&s, eval) {
        Ok(c) => with_chain(
            "TCB-Info-Issuer-Chain",
            &c.tcb_info_issuer_chain,
            "application/json",
            signed("tcbInfo", &c.tcb_info, &c.tcb_info_signature).into_bytes(),
        ),
        Err(r) => r.into_response(),
    }
}

async fn tdx_qe_identity<S: PccsSource>(
    State(s): State<S>,
    Query(q): Query<EvaluationQuery>,
) -> Response {
    s.on_request();
    let eval = match check_evaluation(&s, &q) {
        Ok(eval) => eval,
        Err(r) => return r.into_response(),
    };
    match collateral(&s, eval) {
        Ok(c) => with_chain(
            "SGX-Enclave-Identity-Issuer-Chain",
            &c.qe_identity_issuer_chain,
            "application/json",
            signed("enclaveIdentity", &c.qe_identity, &c.qe_identity_signature).into_bytes(),
        ),
        Err(r) => r.into_response(),
    }
}

async fn pck_crl<S: PccsSource>(State(s): State<S>, Query(q): Query<PckCrlQuery>) -> Response {
    s.on_request();
    let Some(ca) = &q.ca else {
        return error(StatusCode::BAD_REQUEST, "missing ca");
    };
    if !ca.eq_ignore_ascii_case("platform") {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    let c = match collateral(&s, DevPki::TCB_EVALUATION_DATA_NUMBER) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let der = q
        .encoding
        .as_deref()
        .is_some_and(|e| e.eq_ignore_ascii_case("der"));
    let (content_type, body) = if der {
        ("application/pkix-crl", c.pck_crl)
    } else {
        (
            "application/x-pem-file",
            crate::pki::pem_text("X509 CRL", &c.pck_crl).into_bytes(),
        )
    };
    with_chain(
        "SGX-PCK-CRL-Issuer-Chain",
        &c.pck_crl_issuer_chain,
        content_type,
        body,
    )
}

async fn root_ca_crl<S: PccsSource>(State(s): State<S>) -> Response {
    s.on_request();
    match collateral(&s, DevPki::TCB_EVALUATION_DATA_NUMBER) {
        Ok(c) => ([("content-type", "text/plain")], hex::encode(c.root_ca_crl)).into_response(),
        Err(r) => r.into_response(),
    }
}
