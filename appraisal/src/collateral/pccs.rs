//! A client for the PCCS / Intel PCS v4 collateral API.

use std::time::Duration;

use dcap_qvl::QuoteCollateralV3;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::value::RawValue;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, Pem, X509Certificate};

use super::{CollateralError, CollateralKey};
use crate::evidence::TeeType;
use crate::http::{BodyError, error_chain, read_bounded};

/// Intel's Provisioning Certification Service.
pub const INTEL_PCS_URL: &str = "https://api.trustedservices.intel.com";

/// Responses larger than this are not collateral (a TCB Info is about 10 KiB).
const MAX_RESPONSE: usize = 2 * 1024 * 1024;

/// Fetches collateral over HTTP; every request has a timeout and a size bound.
#[derive(Debug, Clone)]
pub struct PccsClient {
    base: String,
    http: reqwest::Client,
    /// Bounds one request and also the whole set: a PCCS that answers each request just in
    /// time must not hold a decision for several timeouts in a row.
    timeout: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfoResponse<'a> {
    #[serde(borrow)]
    tcb_info: &'a RawValue,
    signature: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QeIdentityResponse<'a> {
    #[serde(borrow)]
    enclave_identity: &'a RawValue,
    signature: String,
}

struct Response {
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl PccsClient {
    /// The PCCS base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A client for the PCCS or PCS at `base` (a trailing `/sgx|tdx/certification/v4` is
    /// dropped); `timeout` bounds each request and each whole collateral fetch.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, CollateralError> {
        let base = base
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4")
            .to_string();
        let http = crate::http::client_builder(timeout)
            .build()
            .map_err(|e| CollateralError::Invalid(format!("HTTP client: {e}")))?;
        Ok(Self {
            base,
            http,
            timeout,
        })
    }

    /// Fetch the collateral set for `key` (PCK CRL, TCB Info, QE Identity, root CA CRL),
    /// all of it within the client's timeout.
    pub async fn fetch(&self, key: &CollateralKey) -> Result<QuoteCollateralV3, CollateralError> {
        match tokio::time::timeout(self.timeout, self.fetch_set(key)).await {
            Ok(r) => r,
            Err(_) => Err(CollateralError::Fetch {
                key: key.clone(),
                url: self.base.clone(),
                detail: format!(
                    "timed out: the collateral set was not complete after {:?}",
                    self.timeout
                ),
            }),
        }
    }

    async fn fetch_set(&self, key: &CollateralKey) -> Result<QuoteCollateralV3, CollateralError> {
        let tee = tee_path(key.tee);
        let pck = self
            .get(
                key,
                &format!(
                    "sgx/certification/v4/pckcrl?ca={}&encoding=der",
                    key.ca.as_str()
                ),
            )
            .await?;
        let tcb = self
            .get(
                key,
                &format!(
                    "{tee}/certification/v4/tcb?fmspc={}&update=standard",
                    key.fmspc
                ),
            )
            .await?;
        let qe = self
            .get(
                key,
                &format!("{tee}/certification/v4/qe/identity?update=standard"),
            )
            .await?;

        let invalid = |what: &str, detail: String| CollateralError::Fetch {
            key: key.clone(),
            url: self.base.clone(),
            detail: format!("{what}: {detail}"),
        };
        let pck_crl_issuer_chain = header(&pck, "SGX-PCK-CRL-Issuer-Chain")
            .ok_or_else(|| invalid("pckcrl", "no SGX-PCK-CRL-Issuer-Chain header".into()))?;
        let tcb_info_issuer_chain = header(&tcb, "TCB-Info-Issuer-Chain")
            .or_else(|| header(&tcb, "SGX-TCB-Info-Issuer-Chain"))
            .ok_or_else(|| invalid("tcb", "no TCB-Info-Issuer-Chain header".into()))?;
        let qe_identity_issuer_chain = header(&qe, "SGX-Enclave-Identity-Issuer-Chain")
            .ok_or_else(|| {
                invalid(
                    "qe/identity",
                    "no SGX-Enclave-Identity-Issuer-Chain header".into(),
                )
            })?;
        let tcb_resp: TcbInfoResponse<'_> =
            serde_json::from_slice(&tcb.body).map_err(|e| invalid("tcb", e.to_string()))?;
        let qe_resp: QeIdentityResponse<'_> =
            serde_json::from_slice(&qe.body).map_err(|e| invalid("qe/identity", e.to_string()))?;
        let pck_crl = der_or_hex(pck.body).map_err(|e| invalid("pckcrl", e))?;
        let root_ca_crl = self.root_ca_crl(key, &qe_identity_issuer_chain).await?;

        Ok(QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            // The signature covers the exact bytes served, so keep them as they came.
            tcb_info: tcb_resp.tcb_info.get().to_string(),
            tcb_info_signature: hex::decode(&tcb_resp.signature)
                .map_err(|e| invalid("tcb signature", e.to_string()))?,
            qe_identity_issuer_chain,
            qe_identity: qe_resp.enclave_identity.get().to_string(),
            qe_identity_signature: hex::decode(&qe_resp.signature)
                .map_err(|e| invalid("qe/identity signature", e.to_string()))?,
            pck_certificate_chain: None,
        })
    }

    /// The `early` TCB info of `key`'s platform (`update=early`): Intel's next TCB
    /// evaluation data set, served before it becomes the standard one.
    pub async fn fetch_early_tcb(
        &self,
        key: &CollateralKey,
    ) -> Result<crate::tcb::SignedTcbInfo, CollateralError> {
        let tee = tee_path(key.tee);
        let fetch = async {
            // The set's QE identity is asked for at the same time; without it the
            // forecast covers the platform and the TDX module only.
            let url = format!(
                "{tee}/certification/v4/tcb?fmspc={}&update=early",
                key.fmspc
            );
            let (tcb, qe) = tokio::join!(self.get(key, &url), self.fetch_early_qe(key, tee));
            let tcb = tcb?;
            let invalid = |detail: String| CollateralError::Fetch {
                key: key.clone(),
                url: self.base.clone(),
                detail: format!("tcb (early): {detail}"),
            };
            let chain = header(&tcb, "TCB-Info-Issuer-Chain")
                .or_else(|| header(&tcb, "SGX-TCB-Info-Issuer-Chain"))
                .ok_or_else(|| invalid("no TCB-Info-Issuer-Chain header".into()))?;
            let resp: TcbInfoResponse<'_> =
                serde_json::from_slice(&tcb.body).map_err(|e| invalid(e.to_string()))?;
            let signature = hex::decode(&resp.signature).map_err(|e| invalid(e.to_string()))?;
            let mut early =
                crate::tcb::SignedTcbInfo::new(resp.tcb_info.get().to_string(), signature, chain)
                    .map_err(|e| invalid(e.to_string()))?;
            early.qe_identity = qe;
            Ok(early)
        };
        self.within_timeout(key, fetch).await
    }

    async fn fetch_early_qe(
        &self,
        key: &CollateralKey,
        tee: &str,
    ) -> Option<crate::tcb::SignedDoc> {
        let qe = self
            .get(
                key,
                &format!("{tee}/certification/v4/qe/identity?update=early"),
            )
            .await
            .map_err(|e| tracing::debug!(error = %e, "no early QE identity"))
            .ok()?;
        let issuer_chain = header(&qe, "SGX-Enclave-Identity-Issuer-Chain")?;
        let resp: QeIdentityResponse<'_> = serde_json::from_slice(&qe.body).ok()?;
        Some(crate::tcb::SignedDoc {
            json: resp.enclave_identity.get().to_string(),
            signature: hex::decode(&resp.signature).ok()?,
            issuer_chain,
        })
    }

    /// The list of TCB evaluation data numbers Intel serves, with their TCB-recovery
    /// dates (`/tcbevaluationdatanumbers`; Intel PCS has it, a PCCS may not).
    pub async fn fetch_eval_numbers(
        &self,
        key: &CollateralKey,
    ) -> Result<crate::tcb::SignedList, CollateralError> {
        let tee = tee_path(key.tee);
        let fetch = async {
            let resp = self
                .get(
                    key,
                    &format!("{tee}/certification/v4/tcbevaluationdatanumbers"),
                )
                .await?;
            let issuer_chain = header(&resp, "TCB-Evaluation-Data-Numbers-Issuer-Chain")
                .ok_or_else(|| CollateralError::Fetch {
                    key: key.clone(),
                    url: self.base.clone(),
                    detail: "tcbevaluationdatanumbers: no TCB-Evaluation-Data-Numbers-Issuer-Chain header".into(),
                })?;
            Ok(crate::tcb::SignedList::new(resp.body, issuer_chain))
        };
        self.within_timeout(key, fetch).await
    }

    async fn within_timeout<T>(
        &self,
        key: &CollateralKey,
        fetch: impl std::future::Future<Output = Result<T, CollateralError>>,
    ) -> Result<T, CollateralError> {
        tokio::time::timeout(self.timeout, fetch)
            .await
            .unwrap_or_else(|_| {
                Err(CollateralError::Fetch {
                    key: key.clone(),
                    url: self.base.clone(),
                    detail: format!("timed out after {:?}", self.timeout),
                })
            })
    }

    /// A PCCS serves the root CA CRL itself; Intel PCS does not, so fall back to the
    /// CRL distribution point of the root certificate.
    async fn root_ca_crl(
        &self,
        key: &CollateralKey,
        issuer_chain: &str,
    ) -> Result<Vec<u8>, CollateralError> {
        if let Ok(resp) = self.get(key, "sgx/certification/v4/rootcacrl").await
            && let Ok(crl) = der_or_hex(resp.body)
        {
            return Ok(crl);
        }
        let url =
            root_crl_distribution_point(issuer_chain).ok_or_else(|| CollateralError::Fetch {
                key: key.clone(),
                url: self.base.clone(),
                detail:
                    "no rootcacrl endpoint and no CRL distribution point in the root certificate"
                        .into(),
            })?;
        Ok(self.get_url(key, &url).await?.body)
    }

    async fn get(&self, key: &CollateralKey, path: &str) -> Result<Response, CollateralError> {
        self.get_url(key, &format!("{}/{path}", self.base)).await
    }

    async fn get_url(&self, key: &CollateralKey, url: &str) -> Result<Response, CollateralError> {
        let fail = |detail: String| CollateralError::Fetch {
            key: key.clone(),
            url: url.to_string(),
            detail,
        };
        let describe = |e: reqwest::Error| {
            if e.is_timeout() {
                "timed out".to_string()
            } else {
                error_chain(&e)
            }
        };
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fail(describe(e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}")));
        }
        let headers = resp.headers().clone();
        let body = read_bounded(&mut resp, MAX_RESPONSE).await.map_err(|e| {
            fail(match e {
                BodyError::TooLarge => "response too large".into(),
                BodyError::Transport(e) => describe(e),
            })
        })?;
        Ok(Response { headers, body })
    }
}

/// The PCS path segment of a TEE.
fn tee_path(tee: TeeType) -> &'static str {
    match tee {
        TeeType::Tdx => "tdx",
        TeeType::Sgx => "sgx",
    }
}

/// A URL-encoded PEM chain from a response header.
fn header(resp: &Response, name: &str) -> Option<String> {
    let raw = resp.headers.get(name)?.to_str().ok()?;
    percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// CRLs come as DER from Intel PCS and as hex text from some PCCS versions.
fn der_or_hex(body: Vec<u8>) -> Result<Vec<u8>, String> {
    if body.first() == Some(&0x30) {
        return Ok(body);
    }
    let text = std::str::from_utf8(&body).map_err(|_| "CRL is neither DER nor hex".to_string())?;
    hex::decode(text.trim()).map_err(|_| "CRL is neither DER nor hex".to_string())
}

fn root_crl_distribution_point(issuer_chain: &str) -> Option<String> {
    let root = Pem::iter_from_buffer(issuer_chain.as_bytes())
        .filter_map(Result::ok)
        .last()?;
    let (_, cert) = X509Certificate::from_der(&root.contents).ok()?;
    cert.extensions().iter().find_map(|ext| {
        let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() else {
            return None;
        };
        points.iter().find_map(|p| match &p.distribution_point {
            Some(DistributionPointName::FullName(names)) => names.iter().find_map(|n| match n {
                GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            }),
            _ => None,
        })
    })
}
