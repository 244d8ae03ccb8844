//! The verifier as a network service: TLS (trusted by CA file or by pinned certificate
//! hash), a unix socket, plaintext refused off loopback, PolicyAdmin behind a token,
//! request limits and decode errors that name the field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use teesql_proto::transport::{ServerTrust, cert_sha256_hex, connect_lazy};
use teesql_proto::v1::policy_admin_client::PolicyAdminClient;
use teesql_proto::v1::verifier_client::VerifierClient;
use teesql_proto::v1::{ListPoliciesRequest, VerifyQuoteRequest, verify_quote_request};
use teesql_verifier::service::config::{ServeConfig, ServeSettings};
use teesql_verifier::service::server::{Listeners, Verifier};
use tonic::transport::Channel;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A CA and a server certificate it issued for 127.0.0.1 and localhost, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    files: teesql_devattest::server_pki::ServerPki,
}

impl Pki {
    /// The verifier's settings serving TLS with this PKI's certificate.
    fn serving(&self) -> ServeSettings {
        ServeSettings {
            tls_cert: Some(self.files.cert.clone()),
            tls_key: Some(self.files.key.clone()),
            ..settings()
        }
    }

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = teesql_devattest::server_pki::ServerPki::write(
            dir.path(),
            "server",
            "test verifier CA",
        )
        .unwrap();
        Self { _dir: dir, files }
    }
}

fn settings() -> ServeSettings {
    ServeSettings {
        listen: Some("127.0.0.1:0".into()),
        policy_dirs: Some(vec![root().join("policies/teesql")]),
        collateral_file: Some(root().join("testdata/dcap/tdx_quote_collateral.json")),
        offline: Some(true),
        decision_log: Some("off".into()),
        now: Some(1_751_000_000),
        ..ServeSettings::default()
    }
}

/// Serve with `s`; the URL a client uses; stops when the sender drops.
async fn serve(s: ServeSettings) -> (String, tokio::sync::oneshot::Sender<()>) {
    let config = ServeConfig::resolve(s).unwrap();
    let tls = config.tls.is_some();
    let verifier = Verifier::start(&config).unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    let url = listeners.grpc.url(tls);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(verifier.run(listeners, async {
        let _ = rx.await;
    }));
    (url, tx)
}

fn channel(url: &str, trust: Option<&ServerTrust>) -> Channel {
    connect_lazy(url, trust, Duration::from_secs(5), Duration::from_secs(10)).unwrap()
}

fn quote_request() -> VerifyQuoteRequest {
    VerifyQuoteRequest {
        purpose: "quote".into(),
        evidence: Some(verify_quote_request::Evidence::Quote(
            std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap(),
        )),
        ..Default::default()
    }
}

async fn decide(ch: Channel) -> Result<bool, tonic::Status> {
    VerifierClient::new(ch)
        .verify_quote(quote_request())
        .await
        .map(|r| r.into_inner().allow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifier_is_trusted_by_ca_or_pin_and_refused_otherwise() {
    let pki = Pki::new();
    let (url, _stop) = serve(pki.serving()).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let by_ca = ServerTrust::CaFile(pki.files.ca.clone());
    assert!(decide(channel(&url, Some(&by_ca))).await.unwrap());
    let pin = ServerTrust::from_settings(None, Some(&cert_sha256_hex(&pki.files.cert_der)), &|k| {
        k.to_string()
    })
    .unwrap()
    .unwrap();
    assert!(decide(channel(&url, Some(&pin))).await.unwrap());

    // Another certificate's hash, another CA: no decision is taken from this server.
    let wrong_pin = ServerTrust::CertSha256([7; 32]);
    let e = decide(channel(&url, Some(&wrong_pin))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let other = Pki::new();
    let e = decide(channel(
        &url,
        Some(&ServerTrust::CaFile(other.files.ca.clone())),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    // A plaintext client gets nothing from a TLS listener.
    let plain = url.replace("https://", "http://");
    assert!(decide(channel(&plain, None)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_serves_decisions_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("verifier.sock");
    let (url, stop) = serve(ServeSettings {
        listen: Some(format!("unix://{}", sock.display())),
        ..settings()
    })
    .await;
    assert_eq!(url, format!("unix://{}", sock.display()));
    assert!(decide(channel(&url, None)).await.unwrap());
    // Over the local socket PolicyAdmin answers without a token.
    let listed = PolicyAdminClient::new(channel(&url, None))
        .list_policies(ListPoliciesRequest {})
        .await
        .unwrap();
    assert!(listed.into_inner().policy_hash.starts_with("sha256:"));
    drop(stop);
    // The socket file goes when the verifier stops.
    for _ in 0..100 {
        if !sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!sock.exists(), "the socket file was left behind");
}

#[test]
fn plaintext_off_loopback_is_refused_unless_told() {
    let errors = ServeConfig::resolve(ServeSettings {
        listen: Some("0.0.0.0:0".into()),
        ..settings()
    })
    .unwrap_err();
    assert!(
        errors
            .join("\n")
            .contains("plaintext gRPC on a non-loopback address"),
        "{errors:?}"
    );
    assert!(
        ServeConfig::resolve(ServeSettings {
            listen: Some("0.0.0.0:0".into()),
            insecure_plaintext: Some(true),
            ..settings()
        })
        .is_ok()
    );
    let errors = ServeConfig::resolve(ServeSettings {
        tls_cert: Some("/nonexistent.pem".into()),
        ..settings()
    })
    .unwrap_err();
    assert!(
        errors.join("\n").contains("give both, or neither"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_admin_needs_the_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef-admin";
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    // Readable by others: refused, as ssh refuses such a key, naming the mode.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = ServeConfig::resolve(ServeSettings {
        admin_token_file: Some(file.clone()),
        ..settings()
    })
    .unwrap_err()
    .join("\n");
    assert!(
        e.contains("admin_token_file") && e.contains("0644") && e.contains("too open"),
        "{e}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (url, _stop) = serve(ServeSettings {
        admin_token_file: Some(dir.path().join("admin.token")),
        reflection: Some(false),
        ..settings()
    })
    .await;
    let ch = channel(&url, None);
    let ask = |bearer: Option<&str>| {
        let mut req = tonic::Request::new(ListPoliciesRequest {});
        if let Some(b) = bearer {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {b}").parse().unwrap());
        }
        let mut client = PolicyAdminClient::new(ch.clone());
        async move { client.list_policies(req).await }
    };
    assert_eq!(
        ask(None).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        ask(Some("not-the-token-at-all")).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert!(ask(Some(token)).await.is_ok());
    // Decisions need no token.
    assert!(decide(ch.clone()).await.unwrap());
    // Reflection was turned off.
    let mut refl =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch);
    let e = refl
        .server_reflection_info(tokio_stream::iter(vec![
            tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
}

/// VerifyPeerRequest with `user` (tag 3) as raw bytes, to send a string field that is
/// not UTF-8, which a generated client cannot.
#[derive(Clone, PartialEq, prost::Message)]
struct RawPeerRequest {
    #[prost(string, tag = "1")]
    purpose: String,
    #[prost(bytes = "vec", tag = "3")]
    user: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_specific_codes() {
    let (url, _stop) = serve(ServeSettings {
        max_message_kib: Some(64),
        ..settings()
    })
    .await;
    let ch = channel(&url, None);

    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    let e = grpc
        .unary::<_, teesql_proto::v1::Decision, _>(
            tonic::Request::new(RawPeerRequest {
                purpose: "sidecar".into(),
                user: vec![0xff, 0xfe, b'x'],
            }),
            "/teesql.verifier.v1.Verifier/VerifyPeer".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("VerifyPeerRequest.user"),
        "{}",
        e.message()
    );

    let mut big = quote_request();
    big.event_log = "x".repeat(100 << 10);
    let e = VerifierClient::new(ch.clone())
        .verify_quote(big)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("the limit is 65536 bytes"),
        "{}",
        e.message()
    );

    // And the service still answers.
    assert!(decide(ch).await.unwrap());
}

/// A peer that opens TCP to the TLS listener and says nothing is closed at the handshake
/// deadline, and meanwhile a real client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_on_the_tls_listener_is_closed_at_the_deadline() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new();
    let (url, _stop) = serve(pki.serving()).await;
    let addr = url.trim_start_matches("https://").to_string();
    // Before the connect: the server's deadline runs from its accept, which may come
    // before this task resumes after the connect on a busy machine.
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let by_ca = ServerTrust::CaFile(pki.files.ca.clone());
    assert!(decide(channel(&url, Some(&by_ca))).await.unwrap());
    let deadline = teesql_verifier::service::grpc::TLS_HANDSHAKE_DEADLINE;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(deadline * 3, silent.read(&mut buf))
        .await
        .expect("the silent peer was never closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= deadline, "closed before the deadline");
}
