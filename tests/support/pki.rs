//! Certificates made at test time (rcgen: nothing checked in that could
//! expire) and `redis-server`s that speak TLS with them.
#![cfg(feature = "tls")]

use super::RedisServer;

/// A CA, a server certificate (for 127.0.0.1 and localhost by default), and a client
/// certificate, all signed by the CA, as PEM files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA's certificate (PEM).
    pub ca: String,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub client_cert: String,
    pub client_key: String,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::for_names(&["127.0.0.1", "localhost"])
    }

    /// A PKI whose server certificate names only `names`.
    pub fn for_names(names: &[&str]) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "redis-layers test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>, usage: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = usage;
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        // Client auth too: cluster nodes present it to each other.
        let (server_cert, server_key) = leaf(
            names.iter().map(|n| (*n).to_owned()).collect(),
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_cert, client_key) = leaf(
            vec!["client".into()],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let dir = tempfile::tempdir().unwrap();
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server_cert),
            ("server.key", server_key),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Pki {
            dir,
            ca: ca_cert.pem(),
            client_cert,
            client_key,
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A server listening for TLS on `tls_port` too (its plaintext port stays
/// for the harness), asking clients for a certificate when `mutual`.
pub fn tls_server(pki: &Pki, tls_port: u16, mutual: bool, extra: &[&str]) -> RedisServer {
    let port = tls_port.to_string();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let mut args = vec![
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        if mutual { "yes" } else { "no" },
    ];
    args.extend_from_slice(extra);
    RedisServer::start_with(&args)
}
