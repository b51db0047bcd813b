//! The HTTPS server on an ephemeral 127.0.0.1 port with rcgen certificates: TLS 1.3 and
//! 1.2 both work, the AdmissionReview round trip works over TLS, and a rotated certificate
//! is served without a restart while a broken one is ignored.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lotabots_webhook::server::{PODS_PATH, admission_router, serve_tls};
use lotabots_webhook::tls::{TlsStore, load_files, server_config};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A server certificate for localhost and 127.0.0.1: (cert PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

fn client(
    roots: RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// POSTs `body` over TLS; returns (negotiated version, HTTP status line, body).
async fn post(
    addr: std::net::SocketAddr,
    connector: &TlsConnector,
    body: &[u8],
) -> std::io::Result<(rustls::ProtocolVersion, String, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let version = tls.get_ref().1.protocol_version().unwrap();
    let head = format!(
        "POST {PODS_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    let mut out = Vec::new();
    // The server closes after the response; an EOF without close_notify still leaves a
    // complete response in `out`.
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers.lines().next().unwrap_or_default().to_string();
    Ok((version, status, body.to_string()))
}

fn write(dir: &Path, name: &str, content: &str) {
    // Write then rename, as a Secret volume update does, so the watcher never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls12_and_tls13_and_reloads_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let ca1 = Ca::new("ca-one");
    let (cert, key) = ca1.leaf();
    write(dir.path(), "tls.crt", &cert);
    write(dir.path(), "tls.key", &key);

    let (config, initial) = load_files(&cert_path, &key_path).unwrap();
    let store = Arc::new(TlsStore::new(config));
    let s = state(policy());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_tls(
        listener,
        store.clone(),
        admission_router(s.clone()),
    ));
    let watcher = tokio::spawn(lotabots_webhook::tls::watch(
        cert_path.clone(),
        key_path.clone(),
        Duration::from_millis(50),
        initial,
        store.clone(),
        s.metrics.clone(),
    ));

    let body = pod_review("tls-1", typical_spec()).to_string();
    let c13 = client(ca1.roots(), &[&rustls::version::TLS13]);
    let (v, status, resp) = post(addr, &c13, body.as_bytes()).await.unwrap();
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
    assert!(status.contains("200"), "{status}");
    let r: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(r["response"]["uid"], "tls-1");
    assert_eq!(r["response"]["allowed"], true);

    let c12 = client(ca1.roots(), &[&rustls::version::TLS12]);
    let (v, status, _) = post(addr, &c12, body.as_bytes()).await.unwrap();
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_2);
    assert!(status.contains("200"), "{status}");

    // Rotate to a certificate from another CA: served from the next connection on.
    let ca2 = Ca::new("ca-two");
    let (cert2, key2) = ca2.leaf();
    write(dir.path(), "tls.key", &key2);
    write(dir.path(), "tls.crt", &cert2);
    let c2 = client(ca2.roots(), &[&rustls::version::TLS13]);
    let mut rotated = false;
    for _ in 0..100 {
        if post(addr, &c2, body.as_bytes()).await.is_ok() {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the new certificate was never served");
    assert!(
        post(addr, &c13, body.as_bytes()).await.is_err(),
        "old CA must no longer verify"
    );

    // A broken key is refused and the current certificate stays.
    write(
        dir.path(),
        "tls.key",
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    let m = &s.metrics;
    for _ in 0..100 {
        if m.reloads.with_label_values(&["tls", "error"]).get() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(m.reloads.with_label_values(&["tls", "error"]).get() >= 1);
    let (_, status, _) = post(addr, &c2, body.as_bytes()).await.unwrap();
    assert!(status.contains("200"), "{status}");

    server.abort();
    watcher.abort();
}

#[test]
fn unusable_material_is_reported_without_the_key() {
    let ca = Ca::new("ca");
    let (cert, key) = ca.leaf();
    let (_, other_key) = ca.leaf();
    assert!(server_config(cert.as_bytes(), key.as_bytes()).is_ok());
    let e = server_config(b"", key.as_bytes()).unwrap_err().to_string();
    assert!(e.starts_with("certificate"), "{e}");
    let e = server_config(cert.as_bytes(), b"nothing here")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("private key"), "{e}");
    // A key that does not match the certificate.
    let e = server_config(cert.as_bytes(), other_key.as_bytes())
        .unwrap_err()
        .to_string();
    // Whatever the error says, it must not contain the key.
    let body_line = other_key.lines().nth(1).unwrap();
    assert!(!e.contains(body_line), "{e}");
    let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(other_key.as_bytes()).unwrap();
    assert!(!format!("{der:?}").contains(body_line));
}
