//! `wss://` served by the gateway itself (`gateway.tls`): a client that trusts the test CA
//! verifies the certificate and connects, one that does not is refused, health and metrics
//! answer over TLS on the same port, and a certificate replaced on disk is served without a
//! restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::common::StandaloneProcess;

/// A test CA that issues leaf certificates for `localhost`.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// A new leaf for `localhost`: (certificate PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A TLS client that trusts this CA only.
    fn client(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        // ring, the workspace's one provider (deprecated in rustls for lacking post-quantum
        // key exchange, which the gateway does not offer either).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// Writes `contents` to `path` through a rename, as certificate tools do.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn tls_connect(connector: &TlsConnector, port: u16) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// The certificate the server presented.
fn served(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// `GET path` over TLS: the whole answer, empty when the connection failed.
async fn https_get(connector: &TlsConnector, port: u16, path: &str) -> String {
    let Ok(mut tls) = tls_connect(connector, port).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A `wss` connection for `token`: its `connected` frame and the certificate it was served.
async fn wss(
    connector: &TlsConnector,
    port: u16,
    token: &str,
) -> (serde_json::Value, CertificateDer<'static>) {
    let tls = tls_connect(connector, port).await.unwrap();
    let cert = served(&tls);
    let url = format!("wss://localhost:{port}/ws?token={token}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let hello = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
        Some(Ok(message)) => serde_json::from_str(message.to_text().unwrap()).unwrap(),
        other => panic!("no connected frame: {other:?}"),
    };
    (hello, cert)
}

/// Over `wss`, the gateway's certificate is verified against the test CA and the client
/// connects; a client that trusts another CA fails its handshake (counted); `/readyz` and
/// `/metrics` answer over TLS on the same port; and after the files are replaced, new
/// connections get the new certificate while the process keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_verifies_the_certificate_and_picks_up_a_new_one_without_a_restart() {
    let dir: PathBuf = std::env::temp_dir().join(format!("herald-e2e-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ca = TestCa::new("herald test CA");
    let (cert, key) = ca.leaf();
    replace(&cert_file, &cert);
    replace(&key_file, &key);
    let first = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();

    let (cert_path, key_path) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());
    let server = StandaloneProcess::start(&[
        ("HERALD_GATEWAY__TLS__CERT", cert_path),
        ("HERALD_GATEWAY__TLS__KEY", key_path),
        ("HERALD_GATEWAY__TLS__RELOAD_INTERVAL", "200ms"),
    ]);
    let trusting = ca.client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !https_get(&trusting, server.ws, "/readyz").await.starts_with("HTTP/1.1 200") {
        assert!(tokio::time::Instant::now() < deadline, "the gateway never answered /readyz over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let token = server.token("alice");
    let (hello, served_cert) = wss(&trusting, server.ws, &token).await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(served_cert, first);

    let stranger = TestCa::new("another CA").client();
    assert!(
        tls_connect(&stranger, server.ws).await.is_err(),
        "a client that does not trust the CA got through"
    );
    let plain = reqwest::get(format!("http://127.0.0.1:{}/readyz", server.ws)).await;
    assert!(plain.is_err(), "plain HTTP was answered on the TLS port");
    let metrics = https_get(&trusting, server.ws, "/metrics").await;
    let failures =
        metrics.lines().find(|l| l.starts_with("herald_gateway_tls_handshake_failures_total")).unwrap();
    assert_ne!(failures, "herald_gateway_tls_handshake_failures_total 0", "{failures}");

    let (cert, key) = ca.leaf();
    let second = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    replace(&key_file, &key);
    replace(&cert_file, &cert);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tls = tls_connect(&trusting, server.ws).await.unwrap();
        if served(&tls) == second {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (hello, served_cert) = wss(&trusting, server.ws, &token).await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(served_cert, second);
    std::fs::remove_dir_all(dir).unwrap();
}
