//! `inference-gateway check-config --probe`: one request to each target, with a short
//! timeout, to say which ones answer before the gateway serves. An HTTP target is asked
//! for its health path (the fixture's `health_path`, else `health.path`; `/v1/models`
//! when checks are off), with its API key when it has one.

use std::fmt;
use std::time::Duration;

use awc::error::{ConnectError, SendRequestError};

use crate::config::Settings;
use crate::fixtures::{TargetSpec, Transport};

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer on `path`.
    Reachable { path: String, status: u16 },
    /// Another status on `path`.
    Status { path: String, status: u16 },
    /// Nothing listens at the target's address.
    Refused,
    /// No answer within the timeout.
    Timeout(Duration),
    /// Another failure, by class (never the URL).
    Failed(String),
    /// The built-in demo target: answered inside the gateway.
    BuiltIn,
    /// Not reachable over HTTP from here (Globus Compute).
    NotProbed(&'static str),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Reachable { path, status } => {
                write!(f, "reachable (HTTP {status} on GET {path})")
            }
            Outcome::Status { path, status } => write!(f, "HTTP {status} on GET {path}"),
            Outcome::Refused => f.write_str("refused (nothing listens at its address)"),
            Outcome::Timeout(after) => {
                write!(f, "timeout (no answer within {} s)", after.as_secs_f64())
            }
            Outcome::Failed(class) => write!(f, "failed: {class}"),
            Outcome::BuiltIn => f.write_str("built in (the demo answers inside the gateway)"),
            Outcome::NotProbed(why) => write!(f, "not probed ({why})"),
        }
    }
}

/// The path a probe asks for.
fn probe_path(target: &TargetSpec, settings: &Settings) -> String {
    let path = target
        .health_path
        .as_deref()
        .unwrap_or(&settings.health.path);
    if path.is_empty() {
        "/v1/models".to_string()
    } else {
        path.to_string()
    }
}

/// Where the target is, for the operator: scheme, host and port (no credentials, no path).
pub fn address(target: &TargetSpec) -> String {
    match &target.transport {
        Transport::Demo => "built in".into(),
        Transport::GlobusCompute(g) => format!("Globus Compute endpoint {}", g.endpoint_uuid),
        Transport::Http => match target.base_url.parse::<awc::http::Uri>() {
            Ok(uri) => format!(
                "{}://{}",
                uri.scheme_str().unwrap_or("http"),
                uri.authority()
                    .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
                    .unwrap_or_default()
            ),
            Err(_) => "an unparsable base_url".into(),
        },
    }
}

/// Probes one target once, within `timeout` (connecting included).
pub async fn probe(target: &TargetSpec, settings: &Settings, timeout: Duration) -> Outcome {
    match &target.transport {
        Transport::Demo => return Outcome::BuiltIn,
        Transport::GlobusCompute(_) => {
            return Outcome::NotProbed("Globus Compute: reached through the Compute service")
        }
        Transport::Http => {}
    }
    let path = probe_path(target, settings);
    let client = awc::Client::builder()
        .connector(awc::Connector::new().timeout(timeout))
        .timeout(timeout)
        .disable_redirects()
        .finish();
    let mut req = client.get(format!("{}{path}", target.base_url));
    if let Some(key) = target
        .api_key_env
        .as_ref()
        .and_then(|var| std::env::var(var).ok())
        .filter(|k| !k.is_empty())
    {
        req = req.bearer_auth(key);
    }
    match req.send().await {
        Ok(res) if res.status().is_success() => Outcome::Reachable {
            path,
            status: res.status().as_u16(),
        },
        Ok(res) => Outcome::Status {
            path,
            status: res.status().as_u16(),
        },
        Err(e) => classify(&e, timeout),
    }
}

fn classify(e: &SendRequestError, timeout: Duration) -> Outcome {
    match e {
        SendRequestError::Connect(ConnectError::Io(io))
            if io.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            Outcome::Refused
        }
        SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
            Outcome::Timeout(timeout)
        }
        SendRequestError::Connect(ConnectError::Resolver(_) | ConnectError::NoRecords) => {
            Outcome::Failed("host name not resolved".into())
        }
        SendRequestError::Connect(ConnectError::Io(io)) => {
            Outcome::Failed(io.kind().to_string().to_lowercase())
        }
        SendRequestError::Connect(ConnectError::SslIsNotSupported) => {
            Outcome::Failed("TLS is not supported".into())
        }
        SendRequestError::Connect(_) => Outcome::Failed("connection failed".into()),
        _ => Outcome::Failed("the request failed".into()),
    }
}

/// Probes every target at once; the outcomes in the targets' order.
pub async fn probe_all(
    targets: &[TargetSpec],
    settings: &Settings,
    timeout: Duration,
) -> Vec<Outcome> {
    futures_util::future::join_all(targets.iter().map(|t| probe(t, settings, timeout))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_as_the_operator_needs() {
        assert_eq!(
            Outcome::Refused.to_string(),
            "refused (nothing listens at its address)"
        );
        assert_eq!(
            Outcome::Timeout(Duration::from_secs(2)).to_string(),
            "timeout (no answer within 2 s)"
        );
        assert_eq!(
            Outcome::Status {
                path: "/health".into(),
                status: 503
            }
            .to_string(),
            "HTTP 503 on GET /health"
        );
        let mut t = TargetSpec::for_test("t", "c");
        t.base_url = "https://user:secret@gpu1:8443/v".into();
        assert_eq!(address(&t), "https://gpu1:8443");
    }
}
