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

    /// Refuses PEM that holds no certificate (or no key) or does not
    /// parse: said at build, not at the first connection.
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
