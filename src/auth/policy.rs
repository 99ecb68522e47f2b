//! FIRST's access rules over a Globus introspection response, as pure functions: which
//! identity a token stands for, and whether the site policy lets it in. 401 means the token
//! itself is no good; 403 means a valid identity that a named rule refuses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::identity::{Identity, Method};
use crate::config::Globus;

/// RFC 7662 introspection with Globus' `session_info` and `identity_set_detail`.
#[derive(Debug, Clone, Deserialize)]
pub struct Introspection {
    pub active: bool,
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub identity_set_detail: Vec<IdentityDetail>,
    #[serde(default)]
    pub session_info: Option<SessionInfo>,
    #[serde(default)]
    pub policy_evaluations: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IdentityDetail {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub identity_provider: Option<String>,
    #[serde(default)]
    pub identity_provider_display_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionInfo {
    /// Keyed by identity id, in the order Globus sent them.
    #[serde(default)]
    pub authentications: Map<String, Value>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: the token is missing, malformed, inactive, expired or unknown.
    Unauthorized(String),
    /// 403: a valid identity that a rule refuses; the message names the rule.
    Forbidden(String),
}

/// The policy settings, with FIRST's names.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub globus_groups: Vec<String>,
    pub authorized_idp_domains: Vec<String>,
    pub authorized_groups_per_idp: BTreeMap<String, Vec<String>>,
    pub globus_policies: Vec<String>,
    pub authorized_globus_service_usernames: Vec<String>,
    /// Whether some target of the current catalog has `allowed_globus_groups`; shared with
    /// the reloader, which updates it when the catalog changes.
    pub target_groups: Arc<AtomicBool>,
}

impl Rules {
    pub fn from_config(g: &Globus) -> Rules {
        Rules {
            globus_groups: g.globus_groups.clone(),
            authorized_idp_domains: g.authorized_idp_domains.clone(),
            authorized_groups_per_idp: g.authorized_groups_per_idp.clone(),
            globus_policies: g.globus_policies.clone(),
            authorized_globus_service_usernames: g.authorized_globus_service_usernames.clone(),
            target_groups: Arc::default(),
        }
    }

    /// Whether deciding needs the caller's groups (fetched with two more calls, then
    /// cached with the identity): a global group rule, or any target's
    /// `allowed_globus_groups` (which would otherwise see no groups and refuse everyone).
    pub fn needs_groups(&self) -> bool {
        !self.globus_groups.is_empty()
            || !self.authorized_groups_per_idp.is_empty()
            || self.target_groups.load(Ordering::Relaxed)
    }

    /// Records whether some target names `allowed_globus_groups` (at start and on reload).
    pub fn set_target_groups(&self, any: bool) {
        self.target_groups.store(any, Ordering::Relaxed);
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.trim().is_empty())
}

/// The domain of a username: what follows its **last** `@`. FIRST takes
/// `username.split("@")[1]`, the text after the first `@`; they differ only for usernames
/// with two `@` (`x@globus.org@accounts.google.com`: FIRST `globus.org`, here
/// `accounts.google.com`). The last part is the identity provider's own domain, which a
/// user cannot choose, so domain rules cannot be passed by picking a local part that
/// contains `@some-allowed-domain`.
fn domain_of(username: &str) -> Option<&str> {
    username.rsplit_once('@').map(|(_, d)| d)
}

/// Steps 3–6 of FIRST's check: active and unexpired, the identity (service client or the
/// session identity from an authorised IdP), and the Globus policies.
pub fn identify(token: &Introspection, now: i64, rules: &Rules) -> Result<Identity, Refusal> {
    if !token.active {
        return Err(Refusal::Unauthorized(
            "Token is either not active or invalid.".into(),
        ));
    }
    if token.exp.is_some_and(|exp| exp <= now) {
        return Err(Refusal::Unauthorized("Access token expired.".into()));
    }

    let service = non_empty(&token.username).filter(|u| {
        rules
            .authorized_globus_service_usernames
            .iter()
            .any(|s| s == u)
    });
    let identity = match (
        service,
        non_empty(&token.client_id),
        non_empty(&token.name),
        non_empty(&token.iss),
    ) {
        (Some(username), Some(client_id), Some(name), Some(iss)) => Identity {
            id: client_id.to_string(),
            username: username.to_string(),
            name: name.to_string(),
            org: None,
            groups: Vec::new(),
            idp_id: domain_of(username).unwrap_or_default().to_string(),
            idp_name: iss.to_string(),
            method: Method::GlobusService,
            admin: false,
            models: None,
            key_id: None,
        },
        _ => session_identity(token, rules)?,
    };

    if !rules.globus_policies.is_empty() {
        let evaluations = token.policy_evaluations.as_ref();
        let all_pass = evaluations.is_some_and(|e| {
            e.len() == rules.globus_policies.len()
                && rules.globus_policies.iter().all(|p| {
                    e.get(p)
                        .and_then(|v| v.get("evaluation"))
                        .is_some_and(truthy)
                })
        });
        if !all_pass {
            return Err(Refusal::Forbidden(
                "GLOBUS_POLICIES: your session does not meet the high-assurance policy; \
                 log out and log in again with an authorised identity provider."
                    .into(),
            ));
        }
    }
    if identity.username.is_empty() || identity.username.contains(['<', '>']) {
        return Err(Refusal::Forbidden(
            "The identity's username is empty or invalid.".into(),
        ));
    }
    Ok(identity)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The identity of the session: for each authentication (in order), the first identity
/// from that IdP; the first whose domain is authorised wins.
fn session_identity(token: &Introspection, rules: &Rules) -> Result<Identity, Refusal> {
    let idps: Vec<&str> = token
        .session_info
        .as_ref()
        .map(|s| {
            s.authentications
                .values()
                .filter_map(|a| a.get("idp").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let mut seen_domains = Vec::new();
    for idp in idps {
        let Some(detail) = token
            .identity_set_detail
            .iter()
            .find(|d| d.identity_provider.as_deref() == Some(idp))
        else {
            continue;
        };
        let username = detail.username.clone().unwrap_or_default();
        let domain = domain_of(&username).unwrap_or_default().to_string();
        let authorised = rules.authorized_idp_domains.is_empty()
            || rules.authorized_idp_domains.contains(&domain);
        if !authorised {
            seen_domains.push(domain);
            continue;
        }
        let id = detail
            .sub
            .clone()
            .or_else(|| detail.id.clone())
            .unwrap_or_default();
        return Ok(Identity {
            id,
            username,
            name: detail.name.clone().unwrap_or_default(),
            org: detail.organization.clone(),
            groups: Vec::new(),
            idp_id: idp.to_string(),
            idp_name: detail
                .identity_provider_display_name
                .clone()
                .unwrap_or_default(),
            method: Method::Globus,
            admin: false,
            models: None,
            key_id: None,
        });
    }
    if seen_domains.is_empty() {
        Err(Refusal::Unauthorized(
            "The token carries no session identity; log in again.".into(),
        ))
    } else {
        Err(Refusal::Forbidden(format!(
            "AUTHORIZED_IDP_DOMAINS: log in with an identity from {} (your session has {}).",
            rules.authorized_idp_domains.join(", "),
            seen_domains.join(", ")
        )))
    }
}

/// Steps 7–8: the group rules, once the caller's groups are known.
pub fn check_groups(identity: &Identity, rules: &Rules) -> Result<(), Refusal> {
    if let Some(required) = identity
        .domain()
        .and_then(|d| rules.authorized_groups_per_idp.get(d))
    {
        if !required.iter().any(|g| identity.groups.contains(g)) {
            return Err(Refusal::Forbidden(format!(
                "AUTHORIZED_GROUPS_PER_IDP: identities from {} must belong to one of the authorised groups.",
                identity.domain().unwrap_or_default()
            )));
        }
    }
    if !rules.globus_groups.is_empty()
        && !rules
            .globus_groups
            .iter()
            .any(|g| identity.groups.contains(g))
    {
        return Err(Refusal::Forbidden(
            "GLOBUS_GROUPS: you are not a member of any group authorised to use this gateway."
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_715_200_000;

    fn token(v: Value) -> Introspection {
        serde_json::from_value(v).unwrap()
    }

    fn alice() -> Value {
        json!({
            "active": true, "token_type": "Bearer", "scope": "s", "client_id": "cli",
            "sub": "40322b9a", "username": "alice@anl.gov", "name": "Alice", "email": "alice@anl.gov",
            "exp": NOW + 3600, "iat": NOW, "nbf": NOW, "iss": "https://auth.globus.org",
            "identity_set_detail": [
                {"id": "g-1", "sub": "g-1", "username": "alice@gmail.com", "name": "Alice G",
                 "identity_provider": "idp-google", "identity_provider_display_name": "Google"},
                {"id": "40322b9a", "sub": "40322b9a", "username": "alice@anl.gov", "name": "Alice",
                 "organization": "Argonne National Laboratory",
                 "identity_provider": "idp-anl", "identity_provider_display_name": "Argonne National Laboratory"}
            ],
            "session_info": {"session_id": "s1", "authentications": {
                "g-1": {"idp": "idp-google", "auth_time": 1},
                "40322b9a": {"idp": "idp-anl", "auth_time": 2}}},
            "policy_evaluations": {"pol-1": {"evaluation": true}}
        })
    }

    fn rules() -> Rules {
        Rules {
            authorized_idp_domains: vec!["anl.gov".into()],
            ..Rules::default()
        }
    }

    #[test]
    fn picks_the_first_session_identity_from_an_authorised_domain() {
        let id = identify(&token(alice()), NOW, &rules()).unwrap();
        assert_eq!(id.username, "alice@anl.gov");
        assert_eq!(id.id, "40322b9a");
        assert_eq!(id.idp_id, "idp-anl");
        assert_eq!(id.idp_name, "Argonne National Laboratory");
        assert_eq!(id.org.as_deref(), Some("Argonne National Laboratory"));
        assert_eq!(id.method, Method::Globus);
        // Without a domain rule, the first session identity wins.
        let id = identify(&token(alice()), NOW, &Rules::default()).unwrap();
        assert_eq!(id.username, "alice@gmail.com");
    }

    #[test]
    fn inactive_and_expired_tokens_are_401() {
        let mut t = alice();
        t["active"] = json!(false);
        assert!(matches!(
            identify(&token(t), NOW, &rules()),
            Err(Refusal::Unauthorized(_))
        ));
        let mut t = alice();
        t["exp"] = json!(NOW);
        assert_eq!(
            identify(&token(t), NOW, &rules()).unwrap_err(),
            Refusal::Unauthorized("Access token expired.".into())
        );
        assert!(matches!(
            identify(&token(json!({"active": false})), NOW, &rules()),
            Err(Refusal::Unauthorized(_))
        ));
    }

    #[test]
    fn wrong_idp_is_403_naming_the_rule() {
        let r = Rules {
            authorized_idp_domains: vec!["uchicago.edu".into()],
            ..Rules::default()
        };
        match identify(&token(alice()), NOW, &r) {
            Err(Refusal::Forbidden(m)) => assert!(m.starts_with("AUTHORIZED_IDP_DOMAINS"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn policies_must_all_evaluate_true_and_match_in_number() {
        let r = Rules {
            globus_policies: vec!["pol-1".into()],
            ..rules()
        };
        assert!(identify(&token(alice()), NOW, &r).is_ok());
        let mut t = alice();
        t["policy_evaluations"] = json!({"pol-1": {"evaluation": false}});
        assert!(
            matches!(identify(&token(t), NOW, &r), Err(Refusal::Forbidden(m)) if m.starts_with("GLOBUS_POLICIES"))
        );
        let two = Rules {
            globus_policies: vec!["pol-1".into(), "pol-2".into()],
            ..rules()
        };
        assert!(matches!(
            identify(&token(alice()), NOW, &two),
            Err(Refusal::Forbidden(_))
        ));
        let mut t = alice();
        t.as_object_mut().unwrap().remove("policy_evaluations");
        assert!(matches!(
            identify(&token(t), NOW, &r),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn authorised_service_client_calls_as_itself() {
        let t = json!({"active": true, "exp": NOW + 60, "username": "svc@clients.auth.globus.org",
                       "client_id": "svc-client", "name": "Batch service", "iss": "https://auth.globus.org"});
        let r = Rules {
            authorized_globus_service_usernames: vec!["svc@clients.auth.globus.org".into()],
            ..Rules::default()
        };
        let id = identify(&token(t.clone()), NOW, &r).unwrap();
        assert_eq!(
            (id.id.as_str(), id.method),
            ("svc-client", Method::GlobusService)
        );
        // Not listed: it needs a session identity, which a client token doesn't have.
        assert!(matches!(
            identify(&token(t), NOW, &Rules::default()),
            Err(Refusal::Unauthorized(_))
        ));
    }

    #[test]
    fn group_rules() {
        let mut id = identify(&token(alice()), NOW, &rules()).unwrap();
        let r = Rules {
            globus_groups: vec!["g-ok".into()],
            ..rules()
        };
        assert!(
            matches!(check_groups(&id, &r), Err(Refusal::Forbidden(m)) if m.starts_with("GLOBUS_GROUPS"))
        );
        id.groups = vec!["g-ok".into()];
        assert!(check_groups(&id, &r).is_ok());

        let per_idp = Rules {
            authorized_groups_per_idp: [("anl.gov".to_string(), vec!["g-anl".to_string()])].into(),
            ..rules()
        };
        assert!(
            matches!(check_groups(&id, &per_idp), Err(Refusal::Forbidden(m)) if m.starts_with("AUTHORIZED_GROUPS_PER_IDP"))
        );
        id.groups.push("g-anl".into());
        assert!(check_groups(&id, &per_idp).is_ok());
    }

    #[test]
    fn bad_usernames_are_refused() {
        let mut t = alice();
        t["identity_set_detail"][1]["username"] = json!("<script>@anl.gov");
        assert!(matches!(
            identify(&token(t), NOW, &rules()),
            Err(Refusal::Forbidden(_))
        ));
    }
}
