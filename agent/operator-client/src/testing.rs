//! A stand-in operator for tests (feature `testing`): a CA made on the spot, and an axum
//! [`Router`] served over TLS on an ephemeral 127.0.0.1 port with a certificate that CA
//! issued; what the workload pods' clients are pointed at in their tests.

use std::sync::Arc;

use axum::Router;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Its private key stays out of test output.
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A fresh CA whose common name is `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("a CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("a CA certificate"),
        }
    }

    /// Its certificate (PEM): the bundle a client is to trust.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server configuration for 127.0.0.1 and localhost, with a certificate this CA
    /// issued.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().expect("a server key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server certificate parameters")
            .signed_by(&key, &self.issuer)
            .expect("a server certificate");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("the key"),
        )
        .expect("the server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Serves `router` over TLS on an ephemeral 127.0.0.1 port with a certificate this CA
    /// issued, on a thread and runtime of its own (so synchronous tests can use it too;
    /// it lives as long as the test process); returns its base URL, `https://127.0.0.1:PORT`.
    pub fn serve(&self, router: Router) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("an ephemeral port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the listener's address");
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(self.server_config());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(
                axum_server::from_tcp_rustls(listener, tls).serve(router.into_make_service()),
            )
            .expect("the stand-in operator");
        });
        format!("https://{addr}")
    }
}
