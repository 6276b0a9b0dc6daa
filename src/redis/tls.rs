//! TLS settings for `rediss://` connections (the `tls` feature).

use std::fmt;

use crate::error::Error;

/// TLS settings for `rediss://` connections: which certificate
/// authorities to trust, and a client certificate for mutual TLS. Given to
/// [`RedisBackendBuilder::tls`](super::RedisBackendBuilder::tls); applied
/// to a standalone Redis, every node of a Cluster, and behind Sentinel to
/// the primary (which then must be reached over TLS:
/// `SentinelPrimary::tls(true)`, else building fails) and to sentinels
/// reached by `rediss://`.
///
/// Connections use [rustls](https://docs.rs/rustls) (with the `ring`
/// provider, unless the application installed another process-wide).
/// Without [`root_certificates_pem`](Self::root_certificates_pem) the
/// server is verified against the system's trust store; `rediss://` alone,
/// without `tls(...)`, does the same.
///
/// ```no_run
/// # fn run() -> Result<(), redis_layers::Error> {
/// use redis_layers::redis::{RedisBackend, Tls};
///
/// let tls = Tls::new()
///     .root_certificates_pem(std::fs::read("/etc/redis/ca.pem").unwrap())
///     .client_certificate_pem(
///         std::fs::read("/etc/redis/client.pem").unwrap(),
///         std::fs::read("/etc/redis/client.key").unwrap(),
///     );
/// let backend = RedisBackend::builder()
///     .url("rediss://app:secret@redis.internal:6380")
///     .tls(tls)
///     .build()?;
/// # let _ = backend; Ok(()) }
/// ```
///
/// `Debug` shows whether each part is set, never its contents.
#[derive(Clone, Default)]
pub struct Tls {
    roots: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
    server_name: Option<String>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |b: bool| if b { "<set>" } else { "<system>" };
        f.debug_struct("Tls")
            .field("root_certificates", &set(self.roots.is_some()))
            .field(
                "client_certificate",
                &if self.client.is_some() {
                    "<set>"
                } else {
                    "<none>"
                },
            )
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Tls {
    /// The system's trust store, no client certificate.
    pub fn new() -> Self {
        Tls::default()
    }

    /// Trust only the certificate authorities in this PEM (one or more
    /// `CERTIFICATE` blocks), instead of the system's trust store: a
    /// private CA, as managed Redis services and self-run ones often use.
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots = Some(pem.into());
        self
    }

    /// Present this client certificate (PEM) and its private key (PEM,
    /// PKCS#8, PKCS#1 or SEC1) for mutual TLS (`tls-auth-clients yes`).
    pub fn client_certificate_pem(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.client = Some((certificate.into(), key.into()));
        self
    }

    /// Verify the server's certificate for `name`, and send `name` in
    /// the handshake (SNI), instead of the URL's host: for a Redis reached
    /// by an IP address, a tunnel or a private endpoint whose certificate
    /// names another host. A DNS name or an IP address.
    ///
    /// A standalone Redis (`url`) only: building fails for a Cluster or
    /// Sentinel, whose connections redis-rs opens itself. The backend then
    /// opens its connections (and the cache's subscription) itself, and
    /// has no bb8 pool: [`RedisBackend::pool`](super::RedisBackend::pool)
    /// is `None`.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The server name set, if any.
    pub(crate) fn server_name_override(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Refuses PEM that holds no certificate (or no key) or does not
    /// parse, or a server name that is neither a DNS name nor an IP
    /// address: said at build, not at the first connection.
    pub(crate) fn check(&self) -> Result<(), Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certificates = |pem: &[u8], what: &str| -> Result<(), Error> {
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                cert.map_err(|e| Error::config(format!("{what}: not PEM certificates ({e})")))?;
                n += 1;
            }
            if n == 0 {
                return Err(Error::config(format!("{what}: no PEM certificate found")));
            }
            Ok(())
        };
        if let Some(name) = &self.server_name {
            rustls::pki_types::ServerName::try_from(name.as_str()).map_err(|_| {
                Error::config(format!(
                    "TLS server name {name:?} is neither a DNS name nor an IP address"
                ))
            })?;
        }
        if let Some(roots) = &self.roots {
            certificates(roots, "TLS root certificates")?;
        }
        if let Some((cert, key)) = &self.client {
            certificates(cert, "TLS client certificate")?;
            PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                Error::config(format!("TLS client key: not a PEM private key ({e})"))
            })?;
        }
        Ok(())
    }

    /// redis-rs's form of these settings.
    pub(crate) fn certificates(&self) -> ::redis::TlsCertificates {
        ::redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| ::redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.roots.clone(),
        }
    }
}

/// Makes rustls's `ring` provider the process default, unless one is set
/// already (an application's own choice wins: install `aws-lc-rs`'s, with
/// its post-quantum key exchange, before building the backend to use it).
/// `ring` because it builds anywhere Rust does (no C toolchain or cmake),
/// and without an explicit choice rustls panics in a program whose
/// dependencies enable both providers.
#[allow(deprecated)] // rustls 0.23.48 deprecates `ring` for lacking post-quantum suites
pub(crate) fn install_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err: another thread installed one first; that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The error for certificates or keys that do not parse.
pub(crate) fn invalid(e: ::redis::RedisError) -> Error {
    Error::config(format!(
        "invalid TLS settings (certificates and keys must be PEM): {e}"
    ))
}

/// Opens TLS connections to a standalone Redis with a server name of its
/// own ([`Tls::server_name`]): TCP to the URL's host and port, the
/// handshake for the name, then redis-rs's connection over that stream
/// (which authenticates and selects the database as the URL says).
pub(crate) struct Connector {
    tls: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    host: String,
    port: u16,
    info: ::redis::RedisConnectionInfo,
    timeout: std::time::Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// The connector for `client`'s address under `tls`, when `tls` names
    /// a server of its own; `timeout` bounds the TCP connect and the
    /// handshake.
    pub(crate) fn new(
        tls: &Tls,
        client: &::redis::Client,
        timeout: std::time::Duration,
    ) -> Result<Option<Connector>, Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let Some(name) = &tls.server_name else {
            return Ok(None);
        };
        let name = ServerName::try_from(name.clone())
            .map_err(|_| Error::config(format!("TLS server name {name:?} is not valid")))?;
        let ::redis::ConnectionAddr::TcpTls { host, port, .. } =
            client.get_connection_info().addr()
        else {
            return Err(Error::config(
                "a TLS server name needs a rediss:// URL (TLS to a standalone Redis)",
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        match &tls.roots {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| {
                        Error::config(format!("TLS root certificates: not PEM ({e})"))
                    })?;
                    roots
                        .add(cert)
                        .map_err(|e| Error::config(format!("TLS root certificate refused: {e}")))?;
                }
            }
            None => {
                // The system's store; a certificate it cannot use is
                // skipped, as redis-rs does.
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match &tls.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::config(format!("TLS client certificate: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| Error::config(format!("TLS client key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::config(format!("TLS client certificate refused: {e}")))?
            }
        };
        Ok(Some(Connector {
            tls: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            name,
            host: host.clone(),
            port: *port,
            info: client.get_connection_info().redis_settings().clone(),
            timeout,
        }))
    }

    /// A TLS stream to the server, within the connection timeout.
    async fn stream(
        &self,
    ) -> ::redis::RedisResult<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            self.tls.connect(self.name.clone(), tcp).await
        };
        match tokio::time::timeout(self.timeout, handshake).await {
            Ok(stream) => Ok(stream?),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the TLS connection was not set up within the connection timeout",
            )
            .into()),
        }
    }

    /// A multiplexed connection (its driver spawned on this runtime).
    pub(crate) async fn connect(
        &self,
        config: &::redis::AsyncConnectionConfig,
    ) -> ::redis::RedisResult<::redis::aio::MultiplexedConnection> {
        let stream = self.stream().await?;
        let (conn, driver) = ::redis::aio::MultiplexedConnection::new_with_config(
            &self.info,
            stream,
            config.clone(),
        )
        .await?;
        tokio::spawn(driver);
        Ok(conn)
    }

    /// A connection for pub/sub.
    pub(crate) async fn pubsub(&self) -> ::redis::RedisResult<::redis::aio::PubSub> {
        let stream = self.stream().await?;
        ::redis::aio::PubSub::new(&self.info, stream).await
    }
}
