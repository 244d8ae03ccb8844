//! The development agent's PCCS over HTTP, as dcap-qvl's collateral client and the
//! verifier's PCCS client ask it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dcap_qvl::QuoteCollateralV3;
use teesql_devattest::agent::{AgentConfig, DevAgent};
use teesql_devattest::{DevPki, DevTdReport};

const ISSUED_AT: u64 = 1_767_225_600;

struct Running {
    agent: DevAgent,
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start() -> Running {
    let mut config = AgentConfig::new([0x42; 32]);
    config.collateral_issued_at = Some(ISSUED_AT);
    let agent = DevAgent::new(config).unwrap();
    let (url, tx) = agent.spawn_on_loopback(0, Vec::new()).await.unwrap();
    Running {
        agent,
        url,
        _stop: tx,
    }
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    /// A header, percent-decoded like dcap-qvl's client does.
    fn header(&self, name: &str) -> String {
        let raw = self.headers.get(name).unwrap().to_str().unwrap();
        percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .unwrap()
            .into_owned()
    }
}

async fn get(r: &Running, path: &str) -> Answer {
    let resp = reqwest::get(format!("{}{path}", r.url)).await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.unwrap().to_vec(),
    }
}

#[tokio::test]
async fn pccs_answers_reassemble_into_verifying_collateral() {
    #[derive(serde::Deserialize)]
    struct TcbInfoResponse {
        #[serde(rename = "tcbInfo")]
        tcb_info: Box<serde_json::value::RawValue>,
        signature: String,
    }
    #[derive(serde::Deserialize)]
    struct QeIdentityResponse {
        #[serde(rename = "enclaveIdentity")]
        enclave_identity: Box<serde_json::value::RawValue>,
        signature: String,
    }
    let r = start().await;
    let pki = DevPki::from_seed([0x42; 32]).unwrap();
    let fmspc = hex::encode_upper(pki.fmspc());
    let ok = |a: &Answer, what: &str| {
        assert_eq!(
            a.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&a.body)
        )
    };

    let pckcrl = get(&r, "/sgx/certification/v4/pckcrl?ca=platform&encoding=der").await;
    ok(&pckcrl, "pckcrl");
    let tcb = get(
        &r,
        &format!("/tdx/certification/v4/tcb?fmspc={fmspc}&update=standard"),
    )
    .await;
    ok(&tcb, "tcb");
    let qe = get(&r, "/tdx/certification/v4/qe/identity?update=standard").await;
    ok(&qe, "qe");
    let rootcacrl = get(&r, "/sgx/certification/v4/rootcacrl").await;
    ok(&rootcacrl, "rootcacrl");

    let tcb_json: TcbInfoResponse = serde_json::from_slice(&tcb.body).unwrap();
    let qe_json: QeIdentityResponse = serde_json::from_slice(&qe.body).unwrap();
    let rebuilt = QuoteCollateralV3 {
        pck_crl_issuer_chain: pckcrl.header("SGX-PCK-CRL-Issuer-Chain"),
        root_ca_crl: hex::decode(&rootcacrl.body).unwrap(),
        pck_crl: pckcrl.body.clone(),
        tcb_info_issuer_chain: tcb.header("TCB-Info-Issuer-Chain"),
        tcb_info: tcb_json.tcb_info.get().to_string(),
        tcb_info_signature: hex::decode(&tcb_json.signature).unwrap(),
        qe_identity_issuer_chain: qe.header("SGX-Enclave-Identity-Issuer-Chain"),
        qe_identity: qe_json.enclave_identity.get().to_string(),
        qe_identity_signature: hex::decode(&qe_json.signature).unwrap(),
        pck_certificate_chain: None,
    };
    assert_eq!(rebuilt, r.agent.collateral().unwrap());
    let quote = pki.quote(&DevTdReport::default()).unwrap();
    let report = dcap_qvl::verify::QuoteVerifier::new(pki.root_der().to_vec())
        .verify(&quote, &rebuilt, ISSUED_AT + 3600)
        .unwrap();
    assert_eq!(report.status, "UpToDate");

    // The headers are URL-encoded (no raw newlines) and the bodies typed.
    let raw = tcb
        .headers
        .get("TCB-Info-Issuer-Chain")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(!raw.contains('\n'));
    assert_eq!(tcb.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(
        pckcrl.headers.get("content-type").unwrap(),
        "application/pkix-crl"
    );
    assert!(r.agent.pccs_requests() >= 4);
}

#[tokio::test]
async fn pccs_variants_and_errors() {
    let r = start().await;
    let pki = DevPki::from_seed([0x42; 32]).unwrap();
    let fmspc_lower = hex::encode(pki.fmspc());
    let n = DevPki::TCB_EVALUATION_DATA_NUMBER;
    for path in [
        format!("/tdx/certification/v4/tcb?fmspc={fmspc_lower}"),
        format!("/tdx/certification/v4/tcb?fmspc={fmspc_lower}&update=early"),
        format!("/tdx/certification/v4/tcb?fmspc={fmspc_lower}&tcbEvaluationDataNumber={n}"),
        "/tdx/certification/v4/qe/identity".to_owned(),
        format!("/tdx/certification/v4/qe/identity?tcbEvaluationDataNumber={n}"),
        "/sgx/certification/v4/pckcrl?ca=PLATFORM&encoding=DER".to_owned(),
    ] {
        assert_eq!(get(&r, &path).await.status, 200, "{path}");
    }
    // The JSON inside is the signed collateral text, byte for byte.
    let collateral = r.agent.collateral().unwrap();
    let body = get(
        &r,
        &format!("/tdx/certification/v4/tcb?fmspc={fmspc_lower}"),
    )
    .await
    .body;
    assert!(
        String::from_utf8(body)
            .unwrap()
            .starts_with(&format!("{{\"tcbInfo\":{},", collateral.tcb_info))
    );
    // Without encoding=der the PCK CRL is PEM.
    let pem_crl = get(&r, "/sgx/certification/v4/pckcrl?ca=platform").await;
    assert_eq!(pem_crl.status, 200);
    assert!(pem_crl.body.starts_with(b"-----BEGIN X509 CRL-----\n"));

    for (path, status) in [
        (
            "/tdx/certification/v4/tcb?fmspc=000000000000".to_string(),
            404,
        ),
        ("/tdx/certification/v4/tcb".to_string(), 400),
        (
            "/tdx/certification/v4/tcb?fmspc=zz&update=standard".to_string(),
            404,
        ),
        (
            format!("/tdx/certification/v4/tcb?fmspc={fmspc_lower}&update=bogus"),
            400,
        ),
        (
            format!("/tdx/certification/v4/tcb?fmspc={fmspc_lower}&tcbEvaluationDataNumber=1"),
            404,
        ),
        (
            format!("/tdx/certification/v4/tcb?fmspc={fmspc_lower}&tcbEvaluationDataNumber=x"),
            400,
        ),
        (
            format!("/sgx/certification/v4/tcb?fmspc={fmspc_lower}"),
            404,
        ),
        ("/sgx/certification/v4/qe/identity".to_string(), 404),
        (
            "/sgx/certification/v4/pckcrl?ca=processor&encoding=der".to_string(),
            404,
        ),
        ("/sgx/certification/v4/pckcrl".to_string(), 400),
        ("/tdx/certification/v4/pckcrl?ca=platform".to_string(), 404),
        ("/sgx/certification/v3/rootcacrl".to_string(), 404),
        ("/sgx/certification/v4/rootcacrlx".to_string(), 404),
    ] {
        assert_eq!(get(&r, &path).await.status, status, "{path}");
    }
}
