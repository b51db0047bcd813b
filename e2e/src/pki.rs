//! The control plane's own PKI, generated in-process with rcgen for every run: a CA, the
//! API server's serving certificate, one client certificate per user, and the
//! ServiceAccount token signing key pair. Nothing is shared between runs, so a leaked
//! file can never authenticate to another run's API server.
//!
//! Keys are ECDSA P-256 (rcgen's default): Go's crypto/tls and rustls both accept them,
//! and kube-apiserver signs ServiceAccount tokens with them as ES256.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and its private key, as PEM files on disk.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key.
    pub key: PathBuf,
}

/// Files of the generated PKI.
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate every component trusts (`--client-ca-file`, `--root-ca-file`,
    /// the kubeconfig's `certificate-authority`) and its key (for the controller-manager's
    /// CSR signer).
    pub ca: CertFiles,
    /// kube-apiserver's serving certificate (127.0.0.1, localhost and the in-cluster names).
    pub apiserver: CertFiles,
    /// ServiceAccount token signing key (private, PKCS#8) and its public key (PKIX).
    pub service_account_key: PathBuf,
    /// Public half of [`Pki::service_account_key`].
    pub service_account_pub: PathBuf,
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// Who a client certificate identifies: the API server takes the CN as the user name and
/// each O as a group.
#[derive(Clone, Debug)]
pub struct ClientIdentity<'a> {
    /// User name (certificate CN).
    pub user: &'a str,
    /// Groups (certificate O entries).
    pub groups: &'a [&'a str],
}

/// The group that RBAC's bootstrap policy binds to `cluster-admin`.
pub const SYSTEM_MASTERS: &str = "system:masters";

impl Pki {
    /// Generates a CA, the API server's serving certificate (valid for 127.0.0.1,
    /// localhost and `extra_ips`, e.g. the first service cluster IP that in-cluster
    /// clients would use) and the ServiceAccount key pair into `dir`.
    pub fn generate(dir: &Path, extra_ips: &[IpAddr]) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "lotabots-e2e-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = write_pair(dir, "ca", &ca_cert.pem(), &ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut sans = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into()?),
        ];
        for name in [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            sans.push(SanType::DnsName(name.try_into()?));
        }
        sans.extend(extra_ips.iter().copied().map(SanType::IpAddress));
        let mut serving = leaf_params("kube-apiserver", &[]);
        serving.subject_alt_names = sans;
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;
        let apiserver = write_pair(dir, "apiserver", &serving_cert.pem(), &serving_key)?;

        let sa_key = KeyPair::generate()?;
        let service_account_key = dir.join("sa.key");
        let service_account_pub = dir.join("sa.pub");
        write_private(&service_account_key, &sa_key.serialize_pem())?;
        fs::write(&service_account_pub, sa_key.public_key_pem())?;

        Ok(Self {
            ca,
            apiserver,
            service_account_key,
            service_account_pub,
            dir: dir.to_path_buf(),
            issuer,
        })
    }

    /// Issues a client certificate for `who`, written as `<file_stem>.crt`/`.key`.
    pub fn client_cert(&self, file_stem: &str, who: &ClientIdentity<'_>) -> Result<CertFiles> {
        let mut params = leaf_params(who.user, who.groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        write_pair(&self.dir, file_stem, &cert.pem(), &key)
    }
}

fn leaf_params(common_name: &str, orgs: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for org in orgs {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *org);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params
}

fn write_pair(dir: &Path, stem: &str, cert_pem: &str, key: &KeyPair) -> Result<CertFiles> {
    let files = CertFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    fs::write(&files.cert, cert_pem)
        .with_context(|| format!("writing {}", files.cert.display()))?;
    write_private(&files.key, &key.serialize_pem())?;
    Ok(files)
}

/// Private keys are written owner-only, as kubeadm does: the run directory lives in a
/// shared temp dir.
fn write_private(path: &Path, pem: &str) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), &["10.0.0.1".parse().unwrap()]).unwrap();
        let admin = pki
            .client_cert(
                "admin",
                &ClientIdentity {
                    user: "admin",
                    groups: &[SYSTEM_MASTERS],
                },
            )
            .unwrap();
        for f in [
            &pki.ca.cert,
            &pki.apiserver.cert,
            &pki.apiserver.key,
            &pki.service_account_key,
            &pki.service_account_pub,
            &admin.cert,
            &admin.key,
        ] {
            let text = fs::read_to_string(f).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}", f.display());
        }
        assert!(
            fs::read_to_string(&pki.service_account_pub)
                .unwrap()
                .contains("PUBLIC KEY")
        );
    }
}
