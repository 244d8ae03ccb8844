//! dstack's own Rust SDK (dstack-sdk 0.1.3) talks to the development agent, over the
//! unix socket and over TCP, exactly as a dstack app would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dstack_sdk::dstack_client::{DstackClient, TlsKeyConfig};
use teesql_tests::agent::TestAgent;
use teesql_verifier::evidence;

async fn exercise(client: &DstackClient, agent: &TestAgent) {
    let version = client.version().await.unwrap();
    assert!(version.version.starts_with("teesql-dev-agent"));

    let info = client.info().await.unwrap();
    assert_eq!(info.tcb_info.mrtd, agent.agent.mrtd_hex());
    assert_eq!(info.app_id.len(), 40);
    assert_eq!(&info.compose_hash[..40], info.app_id);

    let key = client
        .get_key(Some("pg/superuser".into()), Some("test".into()))
        .await
        .unwrap();
    assert_eq!(key.decode_key().unwrap().len(), 32);
    let again = client
        .get_key(Some("pg/superuser".into()), Some("test".into()))
        .await
        .unwrap();
    assert_eq!(key.key, again.key, "keys are derived, not random");

    let quote = client.get_quote(b"teesql".to_vec()).await.unwrap();
    let q = evidence::decode_quote_bytes(&quote.decode_quote().unwrap()).unwrap();
    let td = q.td_report().unwrap();
    assert_eq!(&td.report_data[..6], b"teesql");
    // The SDK's own replay of the event log agrees with the quote's RTMR3.
    let rtmrs = quote.replay_rtmrs().unwrap();
    assert_eq!(rtmrs[&3], hex::encode(td.rtmr[3]));

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
async fn sdk_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let agent = TestAgent::start([3; 32], dir.path()).await.unwrap();
    let client = DstackClient::new(Some(agent.socket.to_str().unwrap()));
    exercise(&client, &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let agent = TestAgent::start([4; 32], dir.path()).await.unwrap();
    let client = DstackClient::new(Some(&agent.url));
    exercise(&client, &agent).await;
}
