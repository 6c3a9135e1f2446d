//! Mutual TLS on the publisher API (`publisher.tls` with `client_ca`), certificates made in
//! the test: a client without a certificate from the CA cannot talk to either listener, one
//! with a certificate can.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_broker::{Broker, RedisBroker, RedisConfig};
use herald_publisher_api::PublisherConfig;
use herald_publisher_api::config::TlsConfig;
use herald_publisher_api::pb;
use herald_publisher_api::pb::publisher_client::PublisherClient;
use herald_testkit::RedisServer;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

use crate::helpers::{config, spawn_app_with_config, with_key};

/// A CA and two leaves it signed: the server's (for `localhost`) and a client's.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    server: (String, String),
    client: (String, String),
}

fn leaf(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "herald test ca");
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let server = leaf(&ca, "localhost");
    let client = leaf(&ca, "billing-backend");
    Pki { ca, server, client }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()).map(Result::unwrap).collect()
}

/// A TLS client trusting the test CA, speaking `alpn`, presenting `identity` if given.
fn client_config(pki: &Pki, identity: Option<&(String, String)>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs(&pki.ca.pem()).remove(0)).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let key =
                <PrivateKeyDer as rustls::pki_types::pem::PemObject>::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(certs(cert), key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn connect(addr: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// A gRPC channel to `addr` over TLS with `config`.
async fn grpc_channel(
    addr: String,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let (addr, config) = (addr.clone(), config.clone());
            async move { connect(&addr, config).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
}

/// `GET /livez` over TLS with `config`: the response, or the error that ended the exchange.
async fn livez(addr: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<String> {
    let mut tls = connect(addr, config).await?;
    tls.write_all(b"GET /livez HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response)
}

/// With mutual TLS on, a gRPC client (and an HTTP one) without a client certificate is
/// refused during the handshake, before any request; with a certificate from the CA it
/// publishes (and reads `/livez`).
#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let pki = pki();
    let dir = std::env::temp_dir().join(format!("herald-publisher-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tls = TlsConfig {
        cert: write(&dir, "server.pem", &pki.server.0),
        key: write(&dir, "server.key", &pki.server.1),
        client_ca: Some(write(&dir, "ca.pem", &pki.ca.pem())),
        reload_interval: std::time::Duration::from_secs(10),
    };
    let redis = RedisServer::start().await;
    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::new(RedisConfig { url: redis.url(), ..RedisConfig::default() }).unwrap());
    let app = spawn_app_with_config(broker, PublisherConfig { tls: Some(tls), ..config() }).await;
    let grpc_addr = app.grpc.trim_start_matches("http://").to_string();
    let http_addr = app.http.trim_start_matches("http://").to_string();
    let request = || {
        let message = pb::PublishRequest {
            channel: "chat:lobby".into(),
            data: b"1".to_vec(),
            event: None,
            idempotency_key: None,
        };
        with_key(message, crate::helpers::KEY)
    };

    let anonymous = client_config(&pki, None, b"h2");
    match grpc_channel(grpc_addr.clone(), anonymous).await {
        Err(_) => {}
        Ok(channel) => {
            let refused = PublisherClient::new(channel).publish(request()).await;
            assert!(refused.is_err(), "published without a client certificate: {refused:?}");
        }
    }
    let response = livez(&http_addr, client_config(&pki, None, b"http/1.1")).await;
    assert!(response.as_ref().map_or(true, |r| !r.contains("200 OK")), "{response:?}");

    let identified = client_config(&pki, Some(&pki.client), b"h2");
    let channel = grpc_channel(grpc_addr, identified).await.expect("the handshake succeeds");
    PublisherClient::new(channel).publish(request()).await.expect("published with a certificate");
    let response = livez(&http_addr, client_config(&pki, Some(&pki.client), b"http/1.1")).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert_eq!(app.received(1).await.len(), 1);
    app.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
