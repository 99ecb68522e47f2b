//! Security headers on every response, and the listener's TLS configuration.
//!
//! Every response gets `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer` and, unless the handler set its own, the strictest
//! `Content-Security-Policy` (`default-src 'none'`): API answers are data, never pages.
//! The two pages, `/docs` and `/admin/ui`, set a policy that allows only their own script
//! and style. With TLS on, `Strict-Transport-Security` is added too.

use std::io;
use std::sync::Arc;

use actix_web::middleware::DefaultHeaders;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Tls;

pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
/// The docs page: its own script, style and `/openapi.json`, nothing else.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The admin console (`/admin/ui`): the same as the docs page, its own script and style and
/// calls to the admin API of this origin. Bars are sized through the CSSOM, which a policy
/// without `'unsafe-inline'` allows.
pub const CONSOLE_CSP: &str = DOCS_CSP;

/// The headers middleware; `hsts_max_age` is `Some` when the listener speaks TLS.
pub fn headers(hsts_max_age: Option<u64>) -> DefaultHeaders {
    let mut h = DefaultHeaders::new()
        .add(("x-content-type-options", "nosniff"))
        .add(("x-frame-options", "DENY"))
        .add(("referrer-policy", "no-referrer"))
        .add(("content-security-policy", API_CSP));
    if let Some(age) = hsts_max_age {
        h = h.add((
            "strict-transport-security",
            format!("max-age={age}; includeSubDomains"),
        ));
    }
    h
}

/// A rustls server configuration offering TLS 1.3 and 1.2 only, from PEM files.
pub fn server_config(tls: &Tls) -> io::Result<rustls::ServerConfig> {
    let invalid = |key: &str, msg: String| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{key}: {msg}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .map_err(|e| {
            invalid(
                "server.tls.cert_file",
                format!("{}: {e}", tls.cert_file.display()),
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            invalid(
                "server.tls.cert_file",
                format!("{}: {e}", tls.cert_file.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            "server.tls.cert_file",
            format!("{} holds no PEM certificate", tls.cert_file.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        invalid(
            "server.tls.key_file",
            format!("{}: {e}", tls.key_file.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid("server.tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("server.tls", format!("certificate and key do not fit: {e}")))
}
