//! TLS for Herald's outbound connections: a gateway reporting to presence
//! (`[presence.client_tls]`) and calling the backend hook (`[gateway.hooks.client_tls]`).
//!
//! - [`ClientTlsConfig`]: the table (`ca`, `cert`, `key`); [`ClientTlsConfig::rustls_config`]
//!   turns it into a rustls [`ClientConfig`] on the workspace's one provider, ring, with errors
//!   that name the key to fix.
//! - [`grpc_channel`]: a lazily connecting tonic [`Channel`], over that TLS when given. tonic
//!   is built without its own TLS; its connector seam takes a TCP connection wrapped by
//!   tokio-rustls here instead ([`TlsConnector`]), so servers and clients share one rustls
//!   set-up and one provider. A server that asks for a client certificate the settings do not
//!   have, and then refuses the connection, is named as the cause of the failed connect.
//!
//! Unlike a listener's certificate ([`crate::tls`]), the client's is read once, at start: a
//! gateway that gets a renewed client certificate is restarted (a rolling restart drains).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use herald_protocol::ConfigError;
use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{TlsError, load_certs, provider};

/// A client's TLS settings: whom to trust, and what to present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM file with the CA certificates the server's certificate must chain to. Unset: the
    /// system's trust store (as `SSL_CERT_FILE` / `SSL_CERT_DIR` or the platform name it).
    pub ca: Option<PathBuf>,
    /// PEM file with the client certificate chain, leaf first, presented to servers that ask
    /// for one (mutual TLS). Needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM file with the client certificate's private key (PKCS#8, PKCS#1 or SEC1). Needs
    /// `cert`.
    pub key: Option<PathBuf>,
}

impl ClientTlsConfig {
    /// Whether any field is set: a plain-text endpoint with TLS settings is a mistake worth
    /// stopping for, not a silent downgrade.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Checks what can be checked without reading files: `cert` and `key` come together.
    /// `section` is the table's key (`presence.client_tls`).
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                Err(ConfigError::new(format!("{section}.key"), format!("needed with {section}.cert")))
            }
            (None, Some(_)) => {
                Err(ConfigError::new(format!("{section}.cert"), format!("needed with {section}.key")))
            }
            _ => Ok(()),
        }
    }

    /// A rustls client config offering `alpn` (`h2` for gRPC, `http/1.1` for HTTP): the
    /// server verified against `ca` (or the system's roots), the client certificate presented
    /// when `cert` and `key` are set. Errors name `section.ca`, `section.cert` or
    /// `section.key`.
    pub fn rustls_config(&self, section: &str, alpn: &[&[u8]]) -> Result<ClientConfig, ConfigError> {
        self.validate(section)?;
        let roots = self.roots(section)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new(section, e))?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let at = |field: &str, e: &dyn std::fmt::Display| {
                    ConfigError::new(format!("{section}.{field}"), e)
                };
                let chain = load_certs(cert).map_err(|e| at("cert", &e))?;
                let der = read_key(key).map_err(|e| at("key", &e))?;
                // rustls checks that the key belongs to the certificate.
                builder.with_client_auth_cert(chain, der).map_err(|e| {
                    at("key", &format!("{}: cannot be used with {}: {e}", key.display(), cert.display()))
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    fn roots(&self, section: &str) -> Result<RootCertStore, ConfigError> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                let at = |e: &dyn std::fmt::Display| ConfigError::new(format!("{section}.ca"), e);
                for ca in load_certs(path).map_err(|e| at(&e))? {
                    roots
                        .add(ca)
                        .map_err(|e| at(&format!("{}: unusable CA certificate: {e}", path.display())))?;
                }
            }
            None => {
                // Certificates the platform store holds but rustls cannot use are skipped, as
                // browsers do; an empty store is an error, since nothing could be verified.
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    let why = native.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                    return Err(ConfigError::new(
                        format!("{section}.ca"),
                        format!(
                            "unset, and the system trust store has no usable CA certificate{why}: set it"
                        ),
                    ));
                }
            }
        }
        Ok(roots)
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| TlsError::Pem { path: path.to_path_buf(), source })
}

/// Whether `url` names a TLS endpoint (`https://`, or `grpcs://` for the hook).
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("grpcs://")
}

/// A gRPC channel to `endpoint` that connects on first use (so a gateway starts while the
/// server is down); over TLS with `tls` when given, plain text otherwise. `endpoint`'s
/// `connect_timeout` covers the TCP connect and the TLS handshake together. `section` names
/// the settings in errors (`presence.client_tls`).
pub fn grpc_channel(endpoint: Endpoint, tls: Option<Arc<ClientConfig>>, section: &str) -> Channel {
    match tls {
        None => endpoint.connect_lazy(),
        Some(config) => endpoint.connect_with_connector_lazy(TlsConnector::new(config, section)),
    }
}

/// tonic's connector over TLS: TCP to the URI's host and port (443 when none), the handshake
/// verifying the certificate for that host.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    /// The cause named when a server asked for a client certificate we do not have and then
    /// refused the connection.
    missing_cert: Arc<str>,
}

impl TlsConnector {
    /// A connector with `config` (from [`ClientTlsConfig::rustls_config`]) of `section`.
    pub fn new(config: Arc<ClientConfig>, section: &str) -> Self {
        let missing_cert = format!(
            "the server asked for a client certificate and none is configured ({section}.cert and .key)"
        );
        Self { config, missing_cert: missing_cert.into() }
    }
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsConn>>> + Send>>;

impl tonic::codegen::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsConn>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Without a certificate of our own, a resolver per connection notes whether the server
        // asks for one (see `first_word`).
        let asked =
            (!self.config.client_auth_cert_resolver.has_certs()).then(|| Arc::new(AskedForCert::default()));
        let config = match &asked {
            None => self.config.clone(),
            Some(asked) => {
                let mut config = (*self.config).clone();
                config.client_auth_cert_resolver = asked.clone();
                Arc::new(config)
            }
        };
        let missing_cert = self.missing_cert.clone();
        Box::pin(async move {
            let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
            // `host()` keeps an IPv6 address's brackets; names and sockets want it without.
            let host = uri.host().ok_or_else(|| invalid(format!("{uri}: no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())
                .map_err(|e| invalid(format!("{host}: not a server name: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let failed = |e: std::io::Error, why: &str| {
                std::io::Error::new(e.kind(), format!("TLS handshake with {host}:{port} failed: {e}{why}"))
            };
            let mut tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| failed(e, ""))?;
            let mut first = Vec::new();
            if asked.is_some_and(|a| a.0.load(Ordering::Relaxed)) {
                first = first_word(&mut tls).await.map_err(|e| failed(e, &format!("; {missing_cert}")))?;
            }
            Ok(TokioIo::new(TlsConn { inner: tls, first, at: 0 }))
        })
    }
}

/// The server's first bytes, after it asked for a client certificate we did not have. In TLS
/// 1.3 the client's side of the handshake completes before the server checks the
/// certificate, and a refusal arrives afterwards, as an alert or a closed connection, into
/// whatever request is on its way (as "connection closed" or "broken pipe", which say nothing
/// about why). Waiting for the server's first word (an HTTP/2 server sends its SETTINGS at
/// once) turns a refusal into a failed connect that names its cause, and lets a server that
/// only asks, and accepts clients without a certificate, go on. The endpoint's connect
/// timeout bounds the wait.
async fn first_word(tls: &mut TlsStream<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut first = vec![0; 16 * 1024];
    match tls.read(&mut first).await? {
        0 => Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "connection closed")),
        n => {
            first.truncate(n);
            Ok(first)
        }
    }
}

/// A client "certificate resolver" without certificates that remembers being asked.
#[derive(Debug, Default)]
struct AskedForCert(AtomicBool);

impl ResolvesClientCert for AskedForCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// A client TLS connection, with the bytes [`first_word`] read handed out first.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    first: Vec<u8>,
    /// How much of `first` has been read.
    at: usize,
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.first.len() {
            let n = buf.remaining().min(this.first.len() - this.at);
            buf.put_slice(&this.first[this.at..this.at + n]);
            this.at += n;
            if this.at == this.first.len() {
                this.first = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-client-tls-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A CA and a leaf it signed, as PEM: (ca cert, leaf cert, leaf key).
    fn issue() -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["gateway".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
    }

    /// A certificate without its key (or the reverse), missing files and a key that belongs to
    /// another certificate stop start-up naming the key to fix.
    #[test]
    fn errors_name_the_key_to_fix() {
        let dir = dir("errors");
        let (ca, cert, key) = issue();
        let (_, _, other_key) = issue();
        for (name, contents) in
            [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key), ("other.pem", &other_key)]
        {
            fs::write(dir.join(name), contents).unwrap();
        }
        let error =
            |config: ClientTlsConfig| config.rustls_config("presence.client_tls", &[b"h2"]).unwrap_err().key;
        let full = ClientTlsConfig {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join("cert.pem")),
            key: Some(dir.join("key.pem")),
        };
        assert_eq!(error(ClientTlsConfig { key: None, ..full.clone() }), "presence.client_tls.key");
        assert_eq!(error(ClientTlsConfig { cert: None, ..full.clone() }), "presence.client_tls.cert");
        assert_eq!(
            error(ClientTlsConfig { ca: Some(dir.join("none.pem")), ..full.clone() }),
            "presence.client_tls.ca"
        );
        assert_eq!(
            error(ClientTlsConfig { ca: Some(dir.join("key.pem")), ..full.clone() }),
            "presence.client_tls.ca"
        );
        assert_eq!(
            error(ClientTlsConfig { cert: Some(dir.join("none.pem")), ..full.clone() }),
            "presence.client_tls.cert"
        );
        assert_eq!(
            error(ClientTlsConfig { key: Some(dir.join("other.pem")), ..full.clone() }),
            "presence.client_tls.key"
        );
        let config = full.rustls_config("presence.client_tls", &[b"h2"]).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        assert_eq!(config.alpn_protocols, [b"h2".to_vec()]);
        fs::remove_dir_all(dir).unwrap();
    }
}
