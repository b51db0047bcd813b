//! How to reach PostgreSQL: the URL, TLS and pool settings, and the URL with its
//! password masked for errors and logs.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use anyhow::{Context, Result};
use sqlx::postgres::PgConnectOptions;

pub use sqlx::postgres::PgSslMode as SslMode;

/// Connection settings. The URL may carry `sslmode` and `sslrootcert` as libpq's do;
/// [`DbOptions::ssl_mode`] and [`DbOptions::ssl_root_cert`] override them (e.g. from
/// flags or a mounted Secret).
#[derive(Clone)]
pub struct DbOptions {
    url: String,
    /// TLS mode (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`); `None`
    /// keeps the URL's (libpq's default: `prefer`).
    pub ssl_mode: Option<SslMode>,
    /// PEM file of the CA that signed the server's certificate; `None` keeps the URL's
    /// `sslrootcert`, else the Mozilla roots compiled in.
    pub ssl_root_cert: Option<PathBuf>,
    /// Pool size.
    pub max_connections: u32,
    /// How long connecting (and waiting for a pooled connection) may take.
    pub connect_timeout: Duration,
}

impl fmt::Debug for DbOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbOptions")
            .field("url", &redact_url(&self.url))
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl DbOptions {
    /// Defaults: 10 connections, 10 s to connect, TLS as the URL says.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ssl_mode: None,
            ssl_root_cert: None,
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The URL with the password masked.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// sqlx's options: the URL parsed, the overrides applied.
    pub(super) fn connect_options(&self) -> Result<PgConnectOptions> {
        let redacted = self.redacted_url();
        anyhow::ensure!(
            self.url.starts_with("postgres://") || self.url.starts_with("postgresql://"),
            "invalid PostgreSQL URL {redacted}: it must start with postgres:// or postgresql://"
        );
        anyhow::ensure!(
            self.max_connections > 0,
            "the PostgreSQL pool needs at least one connection"
        );
        let mut opts = PgConnectOptions::from_str(&self.url)
            .with_context(|| format!("invalid PostgreSQL URL {redacted}"))?
            .application_name("lotabots-store");
        if let Some(mode) = self.ssl_mode {
            opts = opts.ssl_mode(mode);
        }
        if let Some(ca) = &self.ssl_root_cert {
            // Read now, so that a missing file is reported as such and not as a failed
            // handshake on the first connection.
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading the PostgreSQL root CA {}", ca.display()))?;
            opts = opts.ssl_root_cert_from_pem(pem);
        }
        Ok(opts)
    }
}

/// `url` with its password masked (`postgres://user:***@host/db`), also one given as a
/// `password=` query parameter. A URL that does not parse is not echoed at all: there
/// is no telling where a password in it would be.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<a URL that does not parse>".into();
    };
    if parsed.password().is_some() {
        // Only fails for URLs without a host, which have no password either.
        let _ = parsed.set_password(Some("***"));
    }
    if parsed
        .query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("password"))
    {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_masked_wherever_it_is() {
        assert_eq!(
            redact_url("postgres://lotabots:s3cret@127.0.0.1:5432/lotabots?sslmode=require"),
            "postgres://lotabots:***@127.0.0.1:5432/lotabots?sslmode=require"
        );
        let q = redact_url("postgres://u@h/db?password=s3cret&sslmode=disable");
        assert!(!q.contains("s3cret"), "{q}");
        assert!(q.contains("sslmode=disable"), "{q}");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgres://u:s3cret@h:notaport/db"),
            "<a URL that does not parse>"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let o = DbOptions::new("postgres://u:s3cret@h/db");
        let d = format!("{o:?}");
        assert!(!d.contains("s3cret") && d.contains("***"), "{d}");
    }

    #[test]
    fn bad_urls_are_named_without_their_password() {
        for (url, want) in [
            ("mysql://u:s3cret@h/db", "must start with postgres://"),
            (
                "postgres://u:s3cret@h/db?sslmode=sometimes",
                "invalid PostgreSQL URL",
            ),
        ] {
            let e = format!("{:#}", DbOptions::new(url).connect_options().unwrap_err());
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("s3cret"), "{url}: {e}");
        }
        let mut o = DbOptions::new("postgres://u:s3cret@h/db");
        o.ssl_root_cert = Some("/nonexistent/ca.pem".into());
        let e = format!("{:#}", o.connect_options().unwrap_err());
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
