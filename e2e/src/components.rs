//! Command lines of the control-plane components. Pure functions of their settings, so a
//! unit test can check the one rule that matters most here: every address a component
//! binds to or is told to dial is on 127.0.0.0/8. controller-runtime's envtest is the
//! reference for the API server's flags.

use std::path::{Path, PathBuf};

use crate::{nodes::KWOK_NODE_SELECTOR, ports::LOOPBACK};

/// Service cluster IPs. A loopback range: nothing here may dial a cluster IP, and should
/// anything try (a webhook registered by Service, say), it reaches this machine and is
/// refused instead of leaving it.
pub const SERVICE_CIDR: &str = "127.96.0.0/16";
/// The first service IP (the `kubernetes` Service's), in the serving certificate as a
/// real cluster's is.
pub const FIRST_SERVICE_IP: &str = "127.96.0.1";
/// Pod IPs kwok hands out: loopback too, for the same reason.
pub const POD_CIDR: &str = "127.64.0.0/16";
/// The IP kwok gives its nodes.
pub const NODE_IP: &str = "127.0.0.1";

/// etcd settings.
#[derive(Clone, Debug)]
pub struct Etcd {
    /// Client port on 127.0.0.1.
    pub client_port: u16,
    /// Peer port on 127.0.0.1 (single member; bound all the same).
    pub peer_port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
}

impl Etcd {
    /// The URL clients use.
    pub fn client_url(&self) -> String {
        format!("http://{LOOPBACK}:{}", self.client_port)
    }

    /// etcd's arguments: a one-member cluster on loopback, no fsync (test data is thrown
    /// away, and fsync dominates etcd's latency on a shared disk).
    pub fn args(&self) -> Vec<String> {
        let client = self.client_url();
        let peer = format!("http://{LOOPBACK}:{}", self.peer_port);
        vec![
            "--name=default".into(),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            "--initial-cluster-state=new".into(),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ]
    }
}

/// kube-apiserver settings.
#[derive(Clone, Debug)]
pub struct ApiServer {
    /// Secure port on 127.0.0.1.
    pub port: u16,
    /// etcd's client URL.
    pub etcd_url: String,
    /// CA certificate for client certificates.
    pub client_ca: PathBuf,
    /// Serving certificate and key.
    pub tls_cert: PathBuf,
    /// Serving key.
    pub tls_key: PathBuf,
    /// ServiceAccount token signing key (private).
    pub sa_signing_key: PathBuf,
    /// ServiceAccount token verification key (public).
    pub sa_public_key: PathBuf,
    /// Directory for anything else it writes.
    pub cert_dir: PathBuf,
}

impl ApiServer {
    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("https://{LOOPBACK}:{}", self.port)
    }

    /// The ServiceAccount token issuer, as envtest sets it: the server's own URL.
    pub fn issuer(&self) -> String {
        self.url()
    }

    /// kube-apiserver's arguments. Admission plugins are the defaults (ServiceAccount
    /// included, unlike envtest), so pods get what a real cluster gives them.
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--advertise-address={LOOPBACK}"),
            format!("--bind-address={LOOPBACK}"),
            format!("--secure-port={}", self.port),
            format!("--etcd-servers={}", self.etcd_url),
            format!("--cert-dir={}", self.cert_dir.display()),
            format!("--tls-cert-file={}", self.tls_cert.display()),
            format!("--tls-private-key-file={}", self.tls_key.display()),
            format!("--client-ca-file={}", self.client_ca.display()),
            "--authorization-mode=RBAC,Node".into(),
            format!("--service-account-issuer={}", self.issuer()),
            format!("--api-audiences={}", self.issuer()),
            format!(
                "--service-account-key-file={}",
                self.sa_public_key.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                self.sa_signing_key.display()
            ),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            // The `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints
            // validation rejects (loopback) on every sync; nothing dials that Service here.
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            // Nothing calls the kubelets (kwok has none); keep it from trying other
            // address types than the loopback InternalIP kwok sets.
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--profiling=false".into(),
        ]
    }
}

/// kube-controller-manager's arguments: every default controller, no serving port, no
/// leader election (one instance, and a lease would only slow the start).
pub fn controller_manager_args(
    kubeconfig: &Path,
    root_ca: &Path,
    ca_key: &Path,
    sa_key: &Path,
) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--bind-address={LOOPBACK}"),
        "--secure-port=0".into(),
        "--leader-elect=false".into(),
        "--controllers=*".into(),
        format!("--root-ca-file={}", root_ca.display()),
        format!("--service-account-private-key-file={}", sa_key.display()),
        // The CSR signer, so that CertificateSigningRequests work as in a cluster.
        format!("--cluster-signing-cert-file={}", root_ca.display()),
        format!("--cluster-signing-key-file={}", ca_key.display()),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--cluster-name=lotabots-e2e".into(),
        "--profiling=false".into(),
    ]
}

/// kube-scheduler's arguments: no serving port, no leader election.
pub fn scheduler_args(kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--bind-address={LOOPBACK}"),
        "--secure-port=0".into(),
        "--leader-elect=false".into(),
        "--profiling=false".into(),
    ]
}

/// kwok's arguments: only the annotated nodes, the shipped stages, loopback node and pod
/// IPs, and no server of its own (no `--server-address`: nothing needs kubelet-style
/// logs or exec, and there is then no port to leak).
pub fn kwok_args(kubeconfig: &Path, stages: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--config={}", stages.display()),
        "--manage-all-nodes=false".into(),
        format!("--manage-nodes-with-annotation-selector={KWOK_NODE_SELECTOR}"),
        format!("--node-ip={NODE_IP}"),
        format!("--cidr={POD_CIDR}"),
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::IpAddr;

    /// Every IP in an argument (bare, in a URL, `IP:port` or a CIDR) is loopback.
    pub(crate) fn assert_loopback_only(args: &[String]) {
        for arg in args {
            let value = arg.split_once('=').map_or(arg.as_str(), |(_, v)| v);
            for part in value.split([',', '=']) {
                let host = part
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                let host = host.split(['/', ':']).next().unwrap_or_default();
                if let Ok(ip) = host.parse::<IpAddr>() {
                    assert!(ip.is_loopback(), "{arg} names {ip}, outside 127.0.0.0/8");
                }
            }
        }
    }

    #[test]
    fn every_address_is_loopback() {
        let p = Path::new("/x");
        let etcd = Etcd {
            client_port: 1,
            peer_port: 2,
            data_dir: p.into(),
        };
        let api = ApiServer {
            port: 3,
            etcd_url: etcd.client_url(),
            client_ca: p.into(),
            tls_cert: p.into(),
            tls_key: p.into(),
            sa_signing_key: p.into(),
            sa_public_key: p.into(),
            cert_dir: p.into(),
        };
        for args in [
            etcd.args(),
            api.args(),
            controller_manager_args(p, p, p, p),
            scheduler_args(p),
            kwok_args(p, p),
        ] {
            assert_loopback_only(&args);
        }
        assert!(
            api.args()
                .contains(&"--authorization-mode=RBAC,Node".to_string())
        );
    }

    #[test]
    fn the_check_catches_a_foreign_address() {
        let bad = std::panic::catch_unwind(|| {
            assert_loopback_only(&["--etcd-servers=http://10.0.0.5:2379".into()])
        });
        assert!(bad.is_err());
        let bad = std::panic::catch_unwind(|| assert_loopback_only(&["--cidr=10.0.0.0/24".into()]));
        assert!(bad.is_err());
    }
}
