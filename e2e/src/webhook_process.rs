//! The webhook as the production binary runs it: `lotabots-webhook serve` as its own
//! process, its certificate and key read from files (and reloaded when they change), so
//! scenarios can stop it, restart it and rotate its certificate under a live API server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::operator_process::workspace_binary;
use crate::ports;
use crate::process::{DEFAULT_GRACE, Process};

/// A CA and the serving certificates it issues for 127.0.0.1.
pub struct WebhookPki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl WebhookPki {
    /// A fresh CA.
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lotabots-webhook test CA");
        let ca = params.self_signed(&key)?;
        Ok(Self {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (the webhook configuration's `caBundle`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A new serving certificate for 127.0.0.1: (certificate PEM, key PEM).
    pub fn issue(&self) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// `lotabots-webhook serve` with the default policy, on fixed 127.0.0.1 ports so that a
/// restart serves the URL the API server already knows.
pub struct WebhookProcess {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    ops_port: u16,
    process: Option<Process>,
}

impl WebhookProcess {
    /// Writes `cert`/`key` into `dir` and starts the binary next to the running test's
    /// `deps/` directory (`cargo test` builds it), waiting until it is ready.
    pub async fn start(dir: &Path, cert: &(String, String)) -> Result<Self> {
        let binary = workspace_binary("lotabots-webhook", "lotabots-webhook")?;
        std::fs::create_dir_all(dir)?;
        let p = ports::free_ports(2)?;
        let mut me = Self {
            binary,
            dir: dir.to_path_buf(),
            port: p[0],
            ops_port: p[1],
            process: None,
        };
        me.replace_certificate(cert)?;
        me.restart().await?;
        Ok(me)
    }

    /// Its admission endpoint, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The admission port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// The leaf certificate (DER) the server presents now, as a client trusting `ca_pem`
    /// sees it.
    pub async fn served_certificate(&self, ca_pem: &str) -> Result<Vec<u8>> {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1")?, tcp)
            .await
            .context("TLS handshake with the webhook")?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .context("the webhook presented no certificate")?;
        Ok(leaf.to_vec())
    }

    /// Replaces the certificate and key files the way a Secret volume is updated: each
    /// new file written aside, then renamed over the old one.
    pub fn replace_certificate(&self, (cert, key): &(String, String)) -> Result<()> {
        for (name, pem) in [("tls.key", key), ("tls.crt", cert)] {
            let tmp = self.dir.join(format!(".{name}.new"));
            std::fs::write(&tmp, pem)?;
            std::fs::rename(&tmp, self.dir.join(name))?;
        }
        Ok(())
    }

    /// Stops it (SIGTERM, then SIGKILL after the grace period); nothing if stopped.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(DEFAULT_GRACE);
        }
    }

    /// Starts it (if stopped) on the same ports and files and waits for `/readyz`.
    pub async fn restart(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let mut cmd = Command::new(&self.binary);
        cmd.arg("serve")
            .arg(format!("--listen=127.0.0.1:{}", self.port))
            .arg(format!("--ops-listen=127.0.0.1:{}", self.ops_port))
            .arg("--tls-cert")
            .arg(self.dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(self.dir.join("tls.key"))
            // Certificate changes show within a second (the default polls every 5 s).
            .arg("--reload-interval=1");
        let p = self.process.insert(Process::spawn(
            "lotabots-webhook",
            cmd,
            &self.dir.join("webhook.log"),
        )?);
        let ready = format!("http://127.0.0.1:{}/readyz", self.ops_port);
        p.wait_ready(&ready, Duration::from_secs(30)).await
    }
}

impl Drop for WebhookProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
