//! dstack's own SDKs talk to the development agent exactly as a dstack app would: the Rust
//! dstack-sdk (0.1.3) over the unix socket and over TCP, and every method of the Python
//! dstack-sdk (0.5.4, the current release). What they get back is checked the way a
//! relying party checks a dstack CVM: `Info`'s measurements against a quote, `GetKey`'s
//! signature chain up to the KMS root that `key_provider_info` names, `Sign` with `Verify`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dstack_sdk::dstack_client::{DstackClient, TlsKeyConfig};
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use serde_json::{Value, json};
use sha2::Digest;
use sha3::Keccak256;
use teesql_tests::agent::TestAgent;
use teesql_tests::clients::{python, python_with};
use teesql_verifier::evidence;

fn keccak(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Keccak256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn recover(digest: &[u8; 32], sig: &[u8]) -> Vec<u8> {
    assert_eq!(sig.len(), 65, "r || s || v");
    let s = Signature::from_slice(&sig[..64]).unwrap();
    assert!(s.normalize_s().is_none(), "high-S signature");
    assert!(sig[64] <= 1, "v is the recovery id");
    VerifyingKey::recover_from_prehash(digest, &s, RecoveryId::from_byte(sig[64]).unwrap())
        .unwrap()
        .to_encoded_point(true)
        .as_bytes()
        .to_vec()
}

/// The public key of a `GetKey` secret: SEC1-compressed, or raw ed25519.
fn public_key(secret: &[u8], algorithm: &str) -> Vec<u8> {
    if algorithm == "ed25519" {
        use ring::signature::KeyPair;
        ring::signature::Ed25519KeyPair::from_seed_unchecked(secret)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec()
    } else {
        k256::ecdsa::SigningKey::from_slice(secret)
            .unwrap()
            .verifying_key()
            .to_encoded_point(true)
            .as_bytes()
            .to_vec()
    }
}

/// Check a signature chain as dstack's verifiers do: link 0 recovers the app's root key
/// from `purpose:hex(public key)`, link 1 recovers the KMS root from
/// `dstack-kms-issued:` || app id || app root key; that must be the KMS the agent names.
fn check_chain(public_key: &[u8], purpose: &str, chain: &[Vec<u8>], app_id: &[u8], kms: &[u8]) {
    assert_eq!(chain.len(), 2);
    let app_root = recover(
        &keccak(&[purpose.as_bytes(), b":", hex::encode(public_key).as_bytes()]),
        &chain[0],
    );
    let root = recover(
        &keccak(&[b"dstack-kms-issued:", app_id, &app_root]),
        &chain[1],
    );
    assert_eq!(
        hex::encode(root),
        hex::encode(kms),
        "the chain ends at the KMS root"
    );
}

/// The KMS root public key `key_provider_info` names.
/// The KMS root that signs `GetKey` chains (dstack's KMS publishes it as `k256_pubkey`),
/// after checking that `key_provider_info` names the agent's KMS by its root CA, as
/// dstack does.
fn kms_root(agent: &TestAgent, key_provider_info: &str) -> Vec<u8> {
    let v: Value = serde_json::from_str(key_provider_info).unwrap();
    assert_eq!(v["name"], "kms");
    assert_eq!(v["id"], agent.agent.kms_root_hex());
    agent.agent.kms_signing_root()
}

/// `mr_aggregated` as dstack computes it, from a quote's registers.
fn mr_aggregated(quote: &[u8]) -> String {
    let q = dcap_qvl::quote::Quote::parse(quote).unwrap();
    let td = q.report.as_td10().unwrap();
    let mut h = sha2::Sha256::new();
    for r in [&td.mr_td, &td.rt_mr0, &td.rt_mr1, &td.rt_mr2, &td.rt_mr3] {
        h.update(r);
    }
    let extra = [&td.mr_config_id, &td.mr_owner, &td.mr_owner_config];
    if extra.iter().any(|r| r.iter().any(|b| *b != 0)) {
        for r in extra {
            h.update(r);
        }
    }
    hex::encode(h.finalize())
}

/// The PPID of the platform that signed `quote`, from its verified PCK certificate.
fn ppid(agent: &TestAgent, quote: &[u8]) -> Vec<u8> {
    let now = teesql_verifier::Clock::System.now();
    dcap_qvl::verify::QuoteVerifier::new(agent.agent.root_der().to_vec())
        .verify(quote, &agent.agent.collateral().unwrap(), now)
        .unwrap()
        .ppid
}

async fn exercise(client: &DstackClient, agent: &TestAgent) {
    let version = client.version().await.unwrap();
    assert!(version.version.starts_with("teesql-dev-agent"));

    let info = client.info().await.unwrap();
    assert_eq!(info.tcb_info.mrtd, agent.agent.mrtd_hex());
    assert_eq!(info.app_id.len(), 40);
    assert_eq!(&info.compose_hash[..40], info.app_id);
    assert_eq!(
        info.compose_hash,
        hex::encode(sha2::Sha256::digest(info.tcb_info.app_compose.as_bytes()))
    );
    let kms = kms_root(agent, &info.key_provider_info);
    let app_id = hex::decode(&info.app_id).unwrap();

    let key = client
        .get_key(Some("pg/superuser".into()), Some("test".into()))
        .await
        .unwrap();
    let secret = key.decode_key().unwrap();
    assert_eq!(secret.len(), 32);
    let chain: Vec<Vec<u8>> = key.decode_signature_chain().unwrap();
    check_chain(
        &public_key(&secret, "secp256k1"),
        "test",
        &chain,
        &app_id,
        &kms,
    );
    let again = client
        .get_key(Some("pg/superuser".into()), Some("test".into()))
        .await
        .unwrap();
    assert_eq!(key.key, again.key, "keys are derived, not random");

    let quote = client.get_quote(b"teesql".to_vec()).await.unwrap();
    let raw = quote.decode_quote().unwrap();
    let q = evidence::decode_quote_bytes(&raw).unwrap();
    let td = q.td_report().unwrap();
    assert_eq!(&td.report_data[..6], b"teesql");
    // The SDK's own replay of the event log agrees with the quote's RTMR3.
    let rtmrs = quote.replay_rtmrs().unwrap();
    assert_eq!(rtmrs[&3], hex::encode(td.rtmr[3]));
    // Info's aggregate and device id are the quote's: its registers, its platform.
    let info = client.info().await.unwrap();
    assert_eq!(info.mr_aggregated, mr_aggregated(&raw));
    assert_eq!(
        info.device_id,
        hex::encode(sha2::Sha256::digest(ppid(agent, &raw)))
    );

    // Sign and Verify, every algorithm; the chain of a signature is the `vms` key's.
    for (algorithm, data) in [
        ("secp256k1", b"hello".to_vec()),
        (
            "secp256k1_prehashed",
            sha2::Sha256::digest(b"hello").to_vec(),
        ),
        ("ed25519", b"hello".to_vec()),
    ] {
        let s = client.sign(algorithm, data.clone()).await.unwrap();
        let sig = hex::decode(&s.signature).unwrap();
        let pk = hex::decode(&s.public_key).unwrap();
        assert_eq!(sig.len(), 64);
        assert_eq!(s.signature_chain.len(), 3);
        assert_eq!(s.signature_chain[0], s.signature);
        let links: Vec<Vec<u8>> = s.signature_chain[1..]
            .iter()
            .map(|h| hex::decode(h).unwrap())
            .collect();
        check_chain(&pk, "signing", &links, &app_id, &kms);
        let ok = client
            .verify(algorithm, data.clone(), sig.clone(), pk.clone())
            .await
            .unwrap();
        assert!(ok.valid, "{algorithm}");
        let other = client
            .verify(algorithm, vec![b'x'; data.len()], sig, pk)
            .await
            .unwrap();
        assert!(!other.valid, "{algorithm}");
    }

    client
        .emit_event("teesql-test".into(), b"payload".to_vec())
        .await
        .unwrap();
    let after = client.get_quote(b"x".to_vec()).await.unwrap();
    let td2 = evidence::decode_quote_bytes(&after.decode_quote().unwrap())
        .unwrap()
        .td_report()
        .unwrap();
    assert_ne!(td2.rtmr[3], td.rtmr[3], "an emitted event extends RTMR3");
    assert_eq!(after.replay_rtmrs().unwrap()[&3], hex::encode(td2.rtmr[3]));

    let att = client.attest(b"y".to_vec()).await.unwrap();
    let blob = att.decode_attestation().unwrap();
    assert_eq!(
        evidence::decode_attestation(&blob).unwrap().report_data[0],
        b'y'
    );

    let tls = client
        .get_tls_key(
            TlsKeyConfig::builder()
                .subject("db.local")
                .alt_names(vec!["localhost".into()])
                .usage_ra_tls(true)
                .usage_server_auth(true)
                .usage_client_auth(true)
                .build(),
        )
        .await
        .unwrap();
    assert!(tls.key.contains("PRIVATE KEY"));
    assert_eq!(tls.certificate_chain.len(), 2);
    let chain = evidence::decode_cert_chain(tls.certificate_chain.concat().as_bytes()).unwrap();
    let ev = evidence::decode_certificate_der(&chain).unwrap();
    assert!(ev.quote.is_some());
    assert_eq!(
        ev.certificate.unwrap().attestation_format,
        evidence::AttestationFormat::VersionedV0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let agent = TestAgent::start([3; 32], dir.path()).await.unwrap();
    let client = DstackClient::new(Some(agent.socket.to_str().unwrap()));
    exercise(&client, &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let agent = TestAgent::start([4; 32], dir.path()).await.unwrap();
    let client = DstackClient::new(Some(&agent.url));
    exercise(&client, &agent).await;
}

/// Every method of `DstackClient` in the current Python SDK (and the async client),
/// through the unix socket as `DSTACK_SIMULATOR_ENDPOINT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_every_method() {
    let Some(py) = python_with(&["dstack_sdk"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agent = TestAgent::start([5; 32], dir.path()).await.unwrap();
    let script = std::fs::read_to_string(
        teesql_tests::cluster::repo_root().join("tests/python/dstack_sdk_every_method.py"),
    )
    .unwrap();
    let o = python(&py, &script, &[agent.socket.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();

    assert_eq!(out["is_reachable"], true);
    assert!(
        out["version"]["version"]
            .as_str()
            .unwrap()
            .starts_with("teesql-dev-agent")
    );

    // Info as dstack 0.5 reports it, each field consistent with what the agent attests.
    let info = &out["info"];
    let tcb = &info["tcb_info"];
    assert_eq!(tcb["mrtd"], agent.agent.mrtd_hex());
    assert_eq!(info["compose_hash"], tcb["compose_hash"]);
    assert_eq!(info["compose_hash"], tcb["app_compose_sha256"]);
    assert_eq!(info["mr_aggregated"], tcb["mr_aggregated"]);
    assert_eq!(info["os_image_hash"], tcb["os_image_hash"]);
    assert_eq!(info["device_id"], tcb["device_id"]);
    let vm_config: Value = serde_json::from_str(info["vm_config"].as_str().unwrap()).unwrap();
    assert_eq!(vm_config["os_image_hash"], info["os_image_hash"]);
    assert_eq!(info["instance_id"], agent.agent.instance_id_hex());

    // Its quote: the same platform (device id), the same registers (mr_aggregated, taken
    // before any event was emitted), RTMR3 replayed by the SDK itself.
    let quote = hex::decode(out["get_quote"]["quote"].as_str().unwrap()).unwrap();
    assert_eq!(
        info["device_id"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(ppid(&agent, &quote)))
    );
    assert_eq!(
        info["mr_aggregated"].as_str().unwrap(),
        mr_aggregated(&quote)
    );
    let td = evidence::decode_quote_bytes(&quote)
        .unwrap()
        .td_report()
        .unwrap();
    assert_eq!(
        out["get_quote"]["replayed_rtmr3"].as_str().unwrap(),
        hex::encode(td.rtmr[3])
    );
    assert_eq!(&td.report_data[..13], b"teesql-python");
    assert_eq!(tcb["rtmr3"].as_str().unwrap(), hex::encode(td.rtmr[3]));
    assert_eq!(
        out["emit_event"]["events_after"].as_u64().unwrap(),
        out["get_quote"]["events"].as_u64().unwrap() + 1
    );
    let att = hex::decode(out["attest"].as_str().unwrap()).unwrap();
    assert_eq!(
        &evidence::decode_attestation(&att).unwrap().report_data[..13],
        b"teesql-attest"
    );

    // GetKey: every algorithm's chain leads to the KMS root Info names.
    let kms = kms_root(&agent, info["key_provider_info"].as_str().unwrap());
    let app_id = hex::decode(info["app_id"].as_str().unwrap()).unwrap();
    for algorithm in ["secp256k1", "k256", "ed25519"] {
        let k = &out["get_key"][algorithm];
        let secret = hex::decode(k["key"].as_str().unwrap()).unwrap();
        let chain: Vec<Vec<u8>> = k["signature_chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
            .collect();
        check_chain(
            &public_key(&secret, algorithm),
            "python-test",
            &chain,
            &app_id,
            &kms,
        );
    }
    assert_eq!(out["async"]["key"], out["get_key"]["secp256k1"]["key"]);
    assert_eq!(out["async"]["app_id"], info["app_id"]);

    // Sign / Verify.
    for algorithm in ["secp256k1", "secp256k1_prehashed", "ed25519"] {
        let s = &out["sign_verify"][algorithm];
        assert_eq!(s["valid"], true, "{algorithm}");
        assert_eq!(s["valid_for_other_data"], false, "{algorithm}");
    }

    // GetTlsKey, with dstack 0.5.7's options honoured.
    let chain = |v: &Value| {
        let pem: Vec<String> = serde_json::from_value(v["chain"].clone()).unwrap();
        evidence::decode_cert_chain(pem.concat().as_bytes()).unwrap()
    };
    let plain = evidence::decode_certificate_der(&chain(&out["get_tls_key"])).unwrap();
    assert!(plain.quote.is_some());
    assert!(out["get_tls_key"]["key_der_len"].as_u64().unwrap() > 0);
    let timed_chain = chain(&out["get_tls_key_options"]);
    let timed = evidence::decode_certificate_der(&timed_chain).unwrap();
    let cert = timed.certificate.unwrap();
    assert_eq!(cert.not_before, 1_767_225_600);
    assert_eq!(cert.not_after, 1_798_761_600);
    let app_info = cert.app_info.expect("with_app_info adds the .9 extension");
    assert_eq!(app_info["app_id"], info["app_id"]);
    assert_eq!(app_info["compose_hash"], info["compose_hash"]);
    assert_eq!(app_info["mr_aggregated"].as_str().map(str::len), Some(64));
}

/// The Python SDK the tests pin (0.5.4) against a dstack 0.6 agent: everything but
/// `EmitEvent` (gone in 0.6) works. The SDK replays RTMR3 from the digests a `GetQuote`
/// ships, which 0.6 leaves empty for runtime events, so its replay misses; the verifier
/// replays from names and payloads and matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_against_a_dstack_0_6_agent() {
    let Some(py) = python_with(&["dstack_sdk"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = teesql_devattest::AgentConfig::new([5; 32]);
    config.dstack = teesql_devattest::DstackVersion::V06;
    let agent = TestAgent::start_with(config, dir.path()).await.unwrap();
    let script = std::fs::read_to_string(
        teesql_tests::cluster::repo_root().join("tests/python/dstack_sdk_every_method.py"),
    )
    .unwrap();
    let o = python(&py, &script, &[agent.socket.to_str().unwrap(), "0.6"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();

    let info = &out["info"];
    assert_eq!(info["tcb_info"]["mrtd"], agent.agent.mrtd_hex());
    assert_eq!(info["instance_id"], agent.agent.instance_id_hex());
    let error = out["emit_event"]["error"]
        .as_str()
        .expect("EmitEvent refused");
    assert!(error.contains("404"), "{error}");
    let kms = kms_root(&agent, info["key_provider_info"].as_str().unwrap());
    let app_id = hex::decode(info["app_id"].as_str().unwrap()).unwrap();
    let k = &out["get_key"]["secp256k1"];
    let chain: Vec<Vec<u8>> = k["signature_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
        .collect();
    let secret = hex::decode(k["key"].as_str().unwrap()).unwrap();
    check_chain(
        &public_key(&secret, "secp256k1"),
        "python-test",
        &chain,
        &app_id,
        &kms,
    );

    // The quote and log the SDK returned: the verifier replays RTMR3, the SDK cannot.
    let quote = hex::decode(out["get_quote"]["quote"].as_str().unwrap()).unwrap();
    let td = evidence::decode_quote_bytes(&quote)
        .unwrap()
        .td_report()
        .unwrap();
    assert_ne!(
        out["get_quote"]["replayed_rtmr3"].as_str().unwrap(),
        hex::encode(td.rtmr[3])
    );
    let getquote = json!({
        "quote": out["get_quote"]["quote"],
        "event_log": out["get_quote"]["event_log"],
        "report_data": out["get_quote"]["report_data"],
        "vm_config": out["get_quote"]["vm_config"],
    });
    let ev = evidence::decode_getquote_json(getquote.to_string().as_bytes()).unwrap();
    let app = teesql_verifier::claims::AppraisedEvidence::build(&ev, None, None).app;
    let app = serde_json::to_value(app.unwrap()).unwrap();
    assert_eq!(
        app["rtmr3_replay"].as_str().unwrap(),
        hex::encode(td.rtmr[3])
    );
    let att = hex::decode(out["attest"].as_str().unwrap()).unwrap();
    let att = evidence::decode_attestation(&att).unwrap();
    assert_eq!(att.format, evidence::AttestationFormat::VersionedV1);
    assert_eq!(&att.report_data[..13], b"teesql-attest");
}
