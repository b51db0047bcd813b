//! The real stores of the evidence store, as the harness starts them
//! (`ControlPlaneBuilder::with_stores`): each answers on 127.0.0.1 only, keeps its data in
//! the run directory, and enforces what the storage issue relies on — PostgreSQL wants
//! the password over TCP, SeaweedFS's S3 gateway refuses unsigned and badly signed
//! requests, fake-gcs-server serves the JSON API with URLs pointing back at 127.0.0.1.
//!
//! Plain HTTP through reqwest and a small SigV4 signer here; the S3 and GCS SDKs and sqlx
//! come with the storage issue. The control plane is the smallest (etcd and
//! kube-apiserver): the suite needs one, the stores do not use it.

use std::{net::IpAddr, process::ExitCode};

use anyhow::{Context, Result, ensure};
use lotabots_e2e::{ControlPlane, procfs, scenario, stores::Stores, suite::Ctx};
use reqwest::{Method, StatusCode};
use ring::hmac;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn main() -> ExitCode {
    lotabots_e2e::suite::main(
        "stores",
        || {
            ControlPlane::builder()
                .without_controller_manager()
                .without_scheduler()
                .without_kwok()
                .with_stores()
        },
        &[
            scenario!(stores_listen_on_loopback_only_and_keep_data_in_the_run_directory),
            scenario!(postgres_runs_sql_and_wants_the_password_over_tcp),
            scenario!(s3_refuses_unsigned_and_badly_signed_requests_and_serves_signed_ones),
            scenario!(gcs_creates_a_bucket_and_round_trips_an_object),
        ],
    )
}

fn stores(ctx: &Ctx) -> Result<&Stores> {
    ctx.plane().stores()
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn stores_listen_on_loopback_only_and_keep_data_in_the_run_directory(ctx: Ctx) -> Result<()> {
    let s = stores(&ctx)?;
    let run = ctx.plane().run_dir();
    for (name, pid) in ["postgres", "seaweedfs", "fake-gcs-server"]
        .into_iter()
        .zip(s.pids())
    {
        let socks = procfs::listening_sockets(pid);
        ensure!(!socks.is_empty(), "{name} (pid {pid}) listens on nothing");
        for a in &socks {
            ensure!(
                a.ip() == IpAddr::from([127, 0, 0, 1]),
                "{name} listens on {a}, not 127.0.0.1 ({socks:?})"
            );
        }
        let peers = procfs::tcp_peers(pid);
        for a in &peers {
            ensure!(
                a.ip().is_loopback(),
                "{name} is connected to {a}, outside 127.0.0.0/8 ({peers:?})"
            );
        }
        eprintln!(
            "{name}: listening on {socks:?}, connected to {} loopback peers",
            peers.len()
        );
    }
    // weed mini: master, volume, filer, S3 and admin, HTTP and gRPC each.
    let weed = procfs::listening_sockets(s.s3.pid());
    let s3_port: u16 =
        s.s3.endpoint()
            .rsplit_once(':')
            .context("port")?
            .1
            .parse()?;
    // (How many of them are up at this moment varies: the admin worker starts late.)
    ensure!(
        weed.iter().any(|a| a.port() == s3_port),
        "weed listens on {weed:?}, without the S3 port {s3_port}"
    );
    for dir in [
        s.postgres.data_dir(),
        s.s3.data_dir(),
        s.gcs.root(),
        s.postgres.socket_dir(),
    ] {
        ensure!(
            dir.starts_with(run) && dir.is_dir(),
            "{} is not a directory in {}",
            dir.display(),
            run.display()
        );
    }
    ensure!(
        s.postgres.data_dir().join("PG_VERSION").is_file(),
        "no PG_VERSION"
    );
    Ok(())
}

async fn postgres_runs_sql_and_wants_the_password_over_tcp(ctx: Ctx) -> Result<()> {
    let pg = &stores(&ctx)?.postgres;
    ensure!(
        pg.url()
            .starts_with(&format!("postgres://lotabots:{}@127.0.0.1:", pg.password())),
        "unexpected URL shape"
    );
    ensure!(pg.query("SELECT 1").await? == "1");
    let version = pg.query("SHOW server_version").await?;
    ensure!(version.starts_with("15."), "server_version {version}");
    ensure!(pg.query("SHOW listen_addresses").await? == "127.0.0.1");
    ensure!(pg.query("SELECT current_database()").await? == "lotabots");
    let data_dir = pg.query("SHOW data_directory").await?;
    ensure!(
        std::path::Path::new(&data_dir) == pg.data_dir(),
        "data_directory {data_dir}"
    );
    pg.query("CREATE TABLE evidence (digest text PRIMARY KEY, body bytea NOT NULL)")
        .await?;
    pg.query("INSERT INTO evidence VALUES ('sha256:aa', '\\x0102'), ('sha256:bb', '\\x03')")
        .await?;
    ensure!(
        pg.query("SELECT count(*) || ':' || sum(length(body)) FROM evidence")
            .await?
            == "2:3"
    );
    let dup = pg
        .query("INSERT INTO evidence VALUES ('sha256:aa', '\\x09')")
        .await
        .expect_err("a duplicate primary key must be refused");
    ensure!(
        format!("{dup:#}").contains("duplicate key"),
        "unexpected error: {dup:#}"
    );

    // Over TCP the password is required: a wrong one and none are refused.
    let wrong = pg.url().replace(pg.password(), "not-the-password");
    for (what, url) in [
        ("a wrong password", wrong),
        (
            "no password",
            format!("postgres://lotabots@127.0.0.1:{}/lotabots", pg.port()),
        ),
    ] {
        let out = psql_with_url(pg, &url).await?;
        ensure!(
            !out.status.success(),
            "psql with {what} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.contains("password authentication failed") || err.contains("no password supplied"),
            "psql with {what}: unexpected error {err}"
        );
    }
    Ok(())
}

/// `psql` of the stores' PostgreSQL with another URL (the same flags as `Postgres::psql`).
async fn psql_with_url(
    pg: &lotabots_e2e::stores::Postgres,
    url: &str,
) -> Result<std::process::Output> {
    let mut cmd = pg.psql();
    // The last --dbname wins.
    cmd.arg(format!("--dbname={url}"))
        .args(["-w", "-c", "SELECT 1"]);
    Ok(cmd.output().await?)
}

/// A SigV4-signed request (header auth, payload hash in `x-amz-content-sha256`).
struct Signer<'a> {
    access_key: &'a str,
    secret_key: &'a str,
    region: &'a str,
}

impl Signer<'_> {
    fn sign(
        &self,
        http: &reqwest::Client,
        method: Method,
        endpoint: &str,
        path: &str,
        body: &[u8],
    ) -> Result<reqwest::RequestBuilder> {
        self.sign_with(http, method, endpoint, path, body, &[])
    }

    /// [`Signer::sign`], with `extra` headers (lowercase names) sent and signed too.
    fn sign_with(
        &self,
        http: &reqwest::Client,
        method: Method,
        endpoint: &str,
        path: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Result<reqwest::RequestBuilder> {
        let url = reqwest::Url::parse(&format!("{endpoint}{path}"))?;
        let host = format!(
            "{}:{}",
            url.host_str().context("no host")?,
            url.port().context("no port")?
        );
        let now = jiff::Timestamp::now();
        let amz_date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
        let date = &amz_date[..8];
        let payload = hex(&Sha256::digest(body));
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", &host),
            ("x-amz-content-sha256", &payload),
            ("x-amz-date", &amz_date),
        ];
        headers.extend_from_slice(extra);
        headers.sort();
        let signed_headers = headers.iter().map(|h| h.0).collect::<Vec<_>>().join(";");
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let canonical = format!(
            "{method}\n{path}\n\n{canonical_headers}\n{signed_headers}\n{payload}",
            path = url.path(),
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let mac = |key: &[u8], data: &str| {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
                .as_ref()
                .to_vec()
        };
        let k = mac(format!("AWS4{}", self.secret_key).as_bytes(), date);
        let k = mac(&k, self.region);
        let k = mac(&k, "s3");
        let k = mac(&k, "aws4_request");
        let signature = hex(&mac(&k, &to_sign));
        let mut req = http.request(method, url);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        Ok(req
            .header("x-amz-date", &amz_date)
            .header("x-amz-content-sha256", &payload)
            .header(
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                    self.access_key
                ),
            )
            .body(body.to_vec()))
    }
}

/// Base64 (standard, padded) of the SHA-256 of `data`, as x-amz-checksum-sha256 wants.
fn base64_sha256(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let digest = Sha256::digest(data);
    let mut out = String::new();
    for chunk in digest.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Status and body of a response.
async fn send(req: reqwest::RequestBuilder) -> Result<(StatusCode, String)> {
    let resp = req.send().await?;
    Ok((resp.status(), resp.text().await?))
}

async fn s3_refuses_unsigned_and_badly_signed_requests_and_serves_signed_ones(
    ctx: Ctx,
) -> Result<()> {
    let s3 = &stores(&ctx)?.s3;
    let http = http();
    let ep = s3.endpoint();
    let bucket = "evidence-primary";
    let good = Signer {
        access_key: s3.access_key(),
        secret_key: s3.secret_key(),
        region: s3.region(),
    };
    let bad = Signer {
        secret_key: "not-the-secret-key",
        ..good
    };
    let unknown = Signer {
        access_key: "LBUNKNOWNKEY",
        ..good
    };

    // Anonymous: refused, and nothing is created.
    let (st, body) = send(http.put(format!("{ep}/{bucket}"))).await?;
    ensure!(
        st == StatusCode::FORBIDDEN && body.contains("AccessDenied"),
        "unsigned PUT bucket: {st} {body}"
    );
    let (st, body) = send(bad.sign(&http, Method::PUT, ep, &format!("/{bucket}"), b"")?).await?;
    ensure!(
        st == StatusCode::FORBIDDEN && body.contains("SignatureDoesNotMatch"),
        "PUT bucket signed with a wrong secret: {st} {body}"
    );
    let (st, body) =
        send(unknown.sign(&http, Method::PUT, ep, &format!("/{bucket}"), b"")?).await?;
    ensure!(
        st == StatusCode::FORBIDDEN && body.contains("InvalidAccessKeyId"),
        "PUT bucket signed with an unknown key: {st} {body}"
    );

    // Signed with the run's keys: bucket, object, read back.
    let (st, body) = send(good.sign(&http, Method::PUT, ep, &format!("/{bucket}"), b"")?).await?;
    ensure!(st.is_success(), "signed PUT bucket: {st} {body}");
    let key = format!("/{bucket}/bundles/sha256-0123");
    let data = b"{\"ciphertext\":\"...\"}";
    let (st, body) = send(good.sign(&http, Method::PUT, ep, &key, data)?).await?;
    ensure!(st.is_success(), "signed PUT object: {st} {body}");
    let (st, body) = send(good.sign(&http, Method::GET, ep, &key, b"")?).await?;
    ensure!(
        st.is_success() && body.as_bytes() == data,
        "signed GET object: {st} {body}"
    );
    // Checksums the client sends are verified: a Content-MD5 or x-amz-checksum-sha256
    // that does not match the body is refused, and nothing is stored.
    let other = b"other bytes";
    let md5_of_other = "6z1Xc8kqS0P4m0v0Yd8yVw=="; // not the body's MD5
    let sha_of_other = base64_sha256(other);
    for (header, value) in [
        ("content-md5", md5_of_other.to_string()),
        ("x-amz-checksum-sha256", sha_of_other),
    ] {
        let path = format!("{key}-{header}");
        let req = good.sign_with(&http, Method::PUT, ep, &path, data, &[(header, &value)])?;
        let (st, body) = send(req).await?;
        ensure!(
            st == StatusCode::BAD_REQUEST,
            "PUT with a wrong {header}: {st} {body}"
        );
        let (st, _) = send(good.sign(&http, Method::GET, ep, &path, b"")?).await?;
        ensure!(
            st == StatusCode::NOT_FOUND,
            "the object with a wrong {header} was stored ({st})"
        );
    }
    // SeaweedFS 4.48 does NOT compare the body with the signed x-amz-content-sha256
    // (observed: 200 and the other body stored); the storage issue must send a checksum
    // header to have the body checked. Shown, not asserted.
    let tampered = good
        .sign(
            &http,
            Method::PUT,
            ep,
            &format!("{key}-tampered"),
            b"signed",
        )?
        .body("tampered");
    let (st, _) = send(tampered).await?;
    eprintln!("S3: PUT whose body differs from the signed payload hash: {st}");
    // Anonymous reads and listings are refused too.
    for path in [key.as_str(), &format!("/{bucket}"), "/"] {
        let (st, body) = send(http.get(format!("{ep}{path}"))).await?;
        ensure!(
            st == StatusCode::FORBIDDEN,
            "unsigned GET {path}: {st} {body}"
        );
    }
    Ok(())
}

async fn gcs_creates_a_bucket_and_round_trips_an_object(ctx: Ctx) -> Result<()> {
    let gcs = &stores(&ctx)?.gcs;
    let http = http();
    let ep = gcs.endpoint();
    let bucket = "evidence-backup";
    let resp = http
        .post(format!("{ep}/storage/v1/b?project=lotabots"))
        .json(&json!({"name": bucket}))
        .send()
        .await?;
    ensure!(
        resp.status().is_success(),
        "create bucket: {}",
        resp.status()
    );
    let created: Value = resp.json().await?;
    ensure!(created["name"] == bucket, "{created}");
    ensure!(
        created["selfLink"]
            .as_str()
            .is_some_and(|l| l.starts_with(&format!("{ep}/"))),
        "selfLink does not point at 127.0.0.1: {created}"
    );

    let name = "bundles/sha256-4567";
    let data = b"encrypted bundle bytes";
    let resp = http
        .post(format!(
            "{ep}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}"
        ))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await?;
    ensure!(resp.status().is_success(), "upload: {}", resp.status());
    let obj: Value = resp.json().await?;
    ensure!(
        obj["name"] == name && obj["size"].as_str() == Some(data.len().to_string().as_str()),
        "{obj}"
    );
    ensure!(
        obj["mediaLink"]
            .as_str()
            .is_some_and(|l| l.starts_with(&format!("{ep}/"))),
        "mediaLink does not point at 127.0.0.1: {obj}"
    );

    let escaped = name.replace('/', "%2F");
    let resp = http
        .get(format!("{ep}/storage/v1/b/{bucket}/o/{escaped}?alt=media"))
        .send()
        .await?;
    ensure!(resp.status().is_success(), "download: {}", resp.status());
    ensure!(
        resp.bytes().await?.as_ref() == data,
        "downloaded other bytes"
    );

    let list: Value = http
        .get(format!("{ep}/storage/v1/b/{bucket}/o?prefix=bundles/"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        list["items"].as_array().map(Vec::len) == Some(1),
        "listing: {list}"
    );
    let resp = http
        .get(format!("{ep}/storage/v1/b/{bucket}/o/no-such-object"))
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::NOT_FOUND,
        "missing object: {}",
        resp.status()
    );
    // The filesystem backend keeps the object under the run directory.
    let on_disk = std::fs::read(gcs.root().join(bucket).join(name))
        .context("the object is not on disk under the GCS root")?;
    ensure!(on_disk == data, "the stored bytes differ");
    Ok(())
}
