//! The token helper (the role of FIRST's `inference-auth-token.py`): a native-app login to
//! Globus Auth with PKCE, tokens kept 0600 under the user's config directory, and a fresh
//! access token printed on demand (refreshed when it is about to expire).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Refresh this long before expiry, so a printed token is good for a while.
const EXPIRY_MARGIN_SECS: i64 = 60;

/// Where and how to log in.
#[derive(Debug, Clone)]
pub struct LoginSettings {
    pub auth_base: String,
    pub client_id: String,
    pub scopes: String,
    pub redirect_uri: String,
    /// Identity-provider domains the login must use (FIRST's `CLI_ALLOWED_DOMAINS`).
    pub domains: Vec<String>,
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredTokens {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Unix seconds.
    pub expires_at: i64,
    #[serde(default)]
    pub scope: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    scope: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("not logged in: run `inference-gateway auth login` first")]
    NotLoggedIn,
    #[error("{0}")]
    Io(String),
    #[error("Globus Auth: {0}")]
    Remote(String),
}

/// The default token file: `$XDG_CONFIG_HOME/inference-gateway/tokens.json` (or
/// `~/.config/...`).
pub fn default_token_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("inference-gateway").join("tokens.json"))
}

fn now() -> i64 {
    crate::auth::globus::unix_now()
}

/// A PKCE verifier (64 random hex characters) and its S256 challenge.
pub fn pkce_pair() -> (String, String) {
    let verifier = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The page the user opens to log in.
pub fn authorize_url(s: &LoginSettings, challenge: &str, state: &str) -> String {
    let domains = s.domains.join(",");
    let mut params = vec![
        ("client_id", s.client_id.as_str()),
        ("redirect_uri", s.redirect_uri.as_str()),
        ("scope", s.scopes.as_str()),
        ("response_type", "code"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("access_type", "offline"),
        ("state", state),
        ("prompt", "login"),
    ];
    if !domains.is_empty() {
        params.push(("session_required_single_domain", domains.as_str()));
    }
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    format!("{}/v2/oauth2/authorize?{query}", s.auth_base)
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn load(path: &Path) -> Result<Option<StoredTokens>, LoginError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LoginError::Io(format!("{} is not a token file: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LoginError::Io(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the tokens readable by the user only (0600), atomically.
pub fn save(path: &Path, tokens: &StoredTokens) -> Result<(), LoginError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| LoginError::Io(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let body = serde_json::to_vec_pretty(tokens).map_err(|e| LoginError::Io(e.to_string()))?;
    file.write_all(&body).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

async fn token_request(
    s: &LoginSettings,
    form: &[(&str, &str)],
) -> Result<StoredTokens, LoginError> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut res = client
        .post(format!("{}/v2/oauth2/token", s.auth_base))
        .send_form(&form)
        .await
        .map_err(|e| LoginError::Remote(e.to_string()))?;
    let body = res
        .body()
        .limit(1024 * 1024)
        .await
        .map_err(|e| LoginError::Remote(e.to_string()))?;
    if !res.status().is_success() {
        let detail: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let reason = detail
            .get("error_description")
            .or_else(|| detail.get("error"))
            .and_then(|v| v.as_str())
            .unwrap_or("request refused")
            .to_string();
        return Err(LoginError::Remote(format!(
            "HTTP {}: {reason}",
            res.status().as_u16()
        )));
    }
    let t: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| LoginError::Remote(format!("bad token answer: {e}")))?;
    Ok(StoredTokens {
        access_token: t.access_token,
        refresh_token: t.refresh_token,
        expires_at: now() + t.expires_in.unwrap_or(3600),
        scope: t.scope,
    })
}

/// Interactive login: prints the URL, reads the code from `input`, stores the tokens.
/// Without `force`, a stored token that is still valid (or refreshable) is kept.
pub async fn login(
    s: &LoginSettings,
    force: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), LoginError> {
    if !force {
        if let Some(t) = load(&s.token_file)? {
            if t.expires_at - EXPIRY_MARGIN_SECS > now() || t.refresh_token.is_some() {
                let _ = writeln!(
                    out,
                    "Already logged in ({}); use --force to log in again.",
                    s.token_file.display()
                );
                return Ok(());
            }
        }
    }
    let (verifier, challenge) = pkce_pair();
    let state = uuid::Uuid::new_v4().simple().to_string();
    let _ = writeln!(
        out,
        "Open this address in a browser and log in:\n\n  {}\n",
        authorize_url(s, &challenge, &state)
    );
    let _ = write!(out, "Then paste the authorization code here: ");
    let _ = out.flush();
    let mut code = String::new();
    input
        .read_line(&mut code)
        .map_err(|e| LoginError::Io(format!("cannot read the code: {e}")))?;
    let code = code.trim();
    if code.is_empty() {
        return Err(LoginError::Io("no authorization code given".into()));
    }
    let tokens = token_request(
        s,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &s.redirect_uri),
            ("client_id", &s.client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await?;
    save(&s.token_file, &tokens)?;
    let _ = writeln!(
        out,
        "\nLogged in; tokens stored in {} (mode 0600).",
        s.token_file.display()
    );
    Ok(())
}

/// A valid access token, refreshed (and stored) first if it is about to expire.
pub async fn access_token(s: &LoginSettings) -> Result<String, LoginError> {
    let tokens = load(&s.token_file)?.ok_or(LoginError::NotLoggedIn)?;
    if tokens.expires_at - EXPIRY_MARGIN_SECS > now() {
        return Ok(tokens.access_token);
    }
    let refresh = tokens
        .refresh_token
        .clone()
        .ok_or(LoginError::NotLoggedIn)?;
    let mut fresh = token_request(
        s,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &s.client_id),
        ],
    )
    .await?;
    // Globus may not rotate the refresh token; keep the old one then.
    if fresh.refresh_token.is_none() {
        fresh.refresh_token = Some(refresh);
    }
    save(&s.token_file, &fresh)?;
    Ok(fresh.access_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        let (verifier, challenge) = pkce_pair();
        assert_eq!(verifier.len(), 64);
        assert_eq!(
            challenge,
            URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
        );
        assert_ne!(pkce_pair().0, verifier);
    }

    #[test]
    fn authorize_url_carries_pkce_and_encodes_scopes() {
        let s = LoginSettings {
            auth_base: "https://auth.globus.org".into(),
            client_id: "cid".into(),
            scopes: "openid https://x/scopes/y".into(),
            redirect_uri: "https://auth.globus.org/v2/web/auth-code".into(),
            domains: vec!["anl.gov".into()],
            token_file: PathBuf::from("/tmp/x"),
        };
        let url = authorize_url(&s, "CHAL", "st");
        assert!(url.starts_with("https://auth.globus.org/v2/oauth2/authorize?client_id=cid&"));
        assert!(url.contains("code_challenge=CHAL&code_challenge_method=S256"));
        assert!(url.contains("scope=openid%20https%3A%2F%2Fx%2Fscopes%2Fy"));
        assert!(url.ends_with("&session_required_single_domain=anl.gov"));
    }

    #[test]
    fn token_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("tokens.json");
        let t = StoredTokens {
            access_token: "a".into(),
            refresh_token: Some("r".into()),
            expires_at: 5,
            scope: String::new(),
        };
        save(&path, &t).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().unwrap().access_token, "a");
    }
}
