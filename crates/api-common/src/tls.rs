//! TLS for Herald's listeners: certificate and key PEM files into a rustls [`ServerConfig`]
//! whose certificate is reloaded when the files change, and, optionally, client certificates
//! checked against a CA (mutual TLS).
//!
//! - [`TlsConfig`]: the `tls` table a role's configuration carries (`cert`, `key`,
//!   `client_ca`, `reload_interval`).
//! - [`ReloadingCert`]: the certificate rustls hands out, swapped in place by
//!   [`ReloadingCert::reload_if_changed`] (polled by [`ReloadingCert::watch`]). Certificates
//!   are renewed every few weeks (ACME, cert-manager) and a restart to pick one up would drop
//!   every connection; a file that fails to load (half written, key and certificate out of
//!   step) leaves the old certificate in service and is logged, rather than taking the
//!   listener down.
//! - [`server_config`]: both of them into a [`ServerConfig`] on the `ring` provider, the one
//!   crypto provider of the workspace.
//!
//! The client CA is read once, at start: a CA rotates far more rarely than a leaf, and is
//! rotated by adding the new CA to the bundle and restarting.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use herald_protocol::ConfigError;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// The `tls` table of a listener: serve TLS with this certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificates client certificates must chain to. Set, every client
    /// must present one (mutual TLS); unset, clients are not asked for any.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How often `cert` and `key` are checked for changes (their contents).
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

/// Why TLS could not be set up, or a certificate not (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: not valid PEM: {source}", path.display())]
    Pem { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{}: no certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: the key cannot be used with {}: {source}", key.display(), cert.display())]
    Key { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("{}: unusable client CA: {source}", path.display())]
    ClientCa { path: PathBuf, source: rustls::server::VerifierBuilderError },
    #[error("{}: unusable client CA certificate: {source}", path.display())]
    ClientCaCert { path: PathBuf, source: rustls::Error },
    #[error("TLS settings refused: {0}")]
    Settings(#[from] rustls::Error),
}

impl TlsError {
    /// This error as a configuration error of `section` (`gateway.tls`), naming the field of
    /// `config` to fix: `cert`, `key` or `client_ca`.
    pub fn config_error(&self, section: &str, config: &TlsConfig) -> ConfigError {
        let field = match self {
            Self::Read { path, .. } | Self::Pem { path, .. } | Self::NoCertificate { path } => {
                if *path == config.key {
                    "key"
                } else if Some(path) == config.client_ca.as_ref() {
                    "client_ca"
                } else {
                    "cert"
                }
            }
            Self::Key { .. } => "key",
            Self::ClientCa { .. } | Self::ClientCaCert { .. } => "client_ca",
            Self::Settings(_) => "cert",
        };
        ConfigError::new(format!("{section}.{field}"), self)
    }
}

/// The `ring` provider, which every TLS config of the workspace uses. rustls 0.23.48
/// deprecates it for lacking post-quantum key exchange (which needs aws-lc-rs); the workspace
/// keeps one provider, ring, and its classical key exchange (X25519, P-256, P-384).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What identifies a version of the files: a hash of each one's contents (`None` while it
/// cannot be read). Not the modification time: two writes within the file system's clock tick,
/// of equal length, would look alike, and a certificate and key of a few KiB are cheap to read
/// at each poll.
type Stamp = [Option<u64>; 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |path: &Path| {
        fs::read(path).ok().map(|bytes| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&bytes, &mut hasher);
            std::hash::Hasher::finish(&hasher)
        })
    };
    [one(cert), one(key)]
}

/// The server certificate, reloaded from its files while the listener runs.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The certificate handed to each new handshake; handshakes in progress keep theirs.
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamp at the last load attempt, successful or not: a broken file is tried
    /// again once it changes, not logged on every poll.
    seen: Mutex<Stamp>,
}

impl ReloadingCert {
    /// Loads `cert` and `key`; an error if either is unreadable or they do not match.
    pub fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let seen = stamp(cert, key);
        let current = load_certified_key(cert, key, &provider)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new(current),
            seen: Mutex::new(seen),
        })
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the files again if their contents changed since the last try:
    /// `Ok(true)` when a new certificate is in service, `Ok(false)` when nothing changed. On
    /// an error the certificate in service stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.cert, &self.key);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        self.reload()?;
        Ok(true)
    }

    /// Loads the files again, whether or not they changed (on `SIGHUP`, say).
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = load_certified_key(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// Checks the files every `interval` until `shutdown`, logging each reload and each
    /// failure (after which the previous certificate stays in service).
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match self.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    "TLS certificate not reloaded; the previous one stays in service"
                ),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// The certificates of the PEM file at `path`, in order; an error if there are none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert)?;
    let pem = read(key)?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|source| TlsError::Pem { path: key.to_path_buf(), source })?;
    let certified = CertifiedKey::from_der(chain, der, provider).map_err(|source| TlsError::Key {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })?;
    Ok(Arc::new(certified))
}

/// A [`ServerConfig`] serving `config`'s certificate (reloaded through the returned
/// [`ReloadingCert`], whose [`ReloadingCert::watch`] the caller runs), asking for client
/// certificates when `client_ca` is set. ALPN is left to the caller (`http/1.1` for the
/// gateway, `h2` for gRPC).
pub fn server_config(config: &TlsConfig) -> Result<(ServerConfig, Arc<ReloadingCert>), TlsError> {
    let provider = provider();
    let cert = Arc::new(ReloadingCert::load(&config.cert, &config.key, provider.clone())?);
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in load_certs(path)? {
                roots.add(ca).map_err(|source| TlsError::ClientCaCert { path: path.clone(), source })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa { path: path.clone(), source })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok((builder.with_cert_resolver(cert.clone()), cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a leaf for `localhost` it signed, as PEM: (ca cert, leaf cert, leaf key).
    fn issue(ca_name: &str) -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herald-tls-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `contents` to `path` through a rename, as certificate tools do.
    fn replace(path: &Path, contents: &str) {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, contents).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    fn config(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
            reload_interval: Duration::from_secs(1),
        }
    }

    /// A changed certificate is picked up, and a broken one leaves the previous in service.
    #[test]
    fn a_changed_certificate_replaces_the_old_and_a_broken_one_does_not() {
        let dir = dir("reload");
        let config = config(&dir);
        let (_, cert, key) = issue("first");
        replace(&config.cert, &cert);
        replace(&config.key, &key);
        let (_, resolver) = server_config(&config).unwrap();
        let first = resolver.current();
        assert!(!resolver.reload_if_changed().unwrap(), "nothing changed yet");

        let (_, cert, key) = issue("second");
        replace(&config.cert, &cert);
        // The certificate is new, the key still the old one: refused, the old pair serves on.
        let mismatch = resolver.reload_if_changed().unwrap_err();
        assert!(matches!(mismatch, TlsError::Key { .. }), "{mismatch}");
        assert_eq!(resolver.current().cert, first.cert);
        assert!(!resolver.reload_if_changed().unwrap(), "a failed version is not retried until it changes");

        replace(&config.key, &key);
        assert!(resolver.reload_if_changed().unwrap());
        assert_ne!(resolver.current().cert, first.cert);

        replace(&config.cert, "not a certificate");
        assert!(resolver.reload_if_changed().is_err());
        assert_ne!(resolver.current().cert, first.cert, "the second certificate still serves");
        fs::remove_dir_all(dir).unwrap();
    }

    /// Missing or wrong files are configuration errors naming the field to fix.
    #[test]
    fn load_errors_name_the_field() {
        let dir = dir("errors");
        let mut config = config(&dir);
        let (ca, cert, key) = issue("ca");
        let error =
            |config: &TlsConfig| server_config(config).unwrap_err().config_error("gateway.tls", config).key;
        assert_eq!(error(&config), "gateway.tls.cert");
        replace(&config.cert, &cert);
        assert_eq!(error(&config), "gateway.tls.key");
        replace(&config.key, &cert);
        assert_eq!(error(&config), "gateway.tls.key");
        replace(&config.key, &key);
        config.client_ca = Some(dir.join("ca.pem"));
        assert_eq!(error(&config), "gateway.tls.client_ca");
        replace(&dir.join("ca.pem"), &ca);
        server_config(&config).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    /// With a client CA, a client without a certificate is refused and one the CA signed
    /// gets through: the mutual TLS the publisher and presence APIs use.
    #[tokio::test]
    async fn mutual_tls_asks_for_a_certificate_the_ca_signed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = dir("mtls");
        let mut config = config(&dir);
        let (ca, cert, key) = issue("ca");
        replace(&config.cert, &cert);
        replace(&config.key, &key);
        replace(&dir.join("ca.pem"), &ca);
        config.client_ca = Some(dir.join("ca.pem"));
        let (server, _) = server_config(&config).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"hello").await;
                    let _ = tls.shutdown().await;
                }
            }
        });

        let mut roots = RootCertStore::empty();
        roots.add(load_certs(&dir.join("ca.pem")).unwrap().remove(0)).unwrap();
        let client = |identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>| {
            let builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone());
            let config = match identity {
                None => builder.with_no_client_auth(),
                Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            };
            tokio_rustls::TlsConnector::from(Arc::new(config))
        };
        let greet = |connector: tokio_rustls::TlsConnector| async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await?;
            let mut out = Vec::new();
            tls.read_to_end(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        assert!(greet(client(None)).await.is_err(), "a client without a certificate got through");
        let identity =
            (load_certs(&config.cert).unwrap(), PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap());
        assert_eq!(greet(client(Some(identity))).await.unwrap(), b"hello");
        fs::remove_dir_all(dir).unwrap();
    }
}
