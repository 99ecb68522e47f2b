//! Who a caller is, once authenticated, and what targets they may use.

use serde::{Deserialize, Serialize};

use crate::fixtures::TargetSpec;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `auth.mode = "none"`: nobody is checked.
    None,
    /// A Globus Auth user token (introspected).
    Globus,
    /// A Globus confidential client listed in `authorized_globus_service_usernames`.
    GlobusService,
    /// An OIDC/JWT token verified against the configured JWKS.
    Oidc,
    /// A gateway API key.
    ApiKey,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub id: String,
    pub username: String,
    pub name: String,
    pub org: Option<String>,
    /// Group ids (Globus group UUIDs).
    pub groups: Vec<String>,
    pub idp_id: String,
    pub idp_name: String,
    #[serde(rename = "auth_method")]
    pub method: Method,
    /// Carries the admin role (API keys with role `admin`).
    pub admin: bool,
    /// Models this caller may use; `None` = every model its access lists allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// The API key used, if any (its id, never the secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl Identity {
    /// The caller when authentication is off.
    pub fn anonymous() -> Identity {
        Identity {
            id: "anonymous".into(),
            username: "anonymous".into(),
            name: "anonymous".into(),
            org: None,
            groups: Vec::new(),
            idp_id: String::new(),
            idp_name: String::new(),
            method: Method::None,
            admin: false,
            models: None,
            key_id: None,
        }
    }

    /// Whether the caller may name this model at all (API keys may be limited to some).
    pub fn may_name(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|m| m == model))
    }

    /// The domain of the username (`alice@anl.gov` → `anl.gov`).
    pub fn domain(&self) -> Option<&str> {
        self.username.rsplit_once('@').map(|(_, d)| d)
    }

    /// Whether the target's access lists let this caller in. With authentication off
    /// there is nobody to check, so everything is open (loopback only).
    pub fn may_use(&self, target: &TargetSpec) -> bool {
        if self.method == Method::None {
            return true;
        }
        self.permission(target).is_ok()
    }

    /// Like [`Identity::may_use`], with the rule that refused.
    pub fn permission(&self, target: &TargetSpec) -> Result<(), String> {
        if !target.allowed_globus_groups.is_empty()
            && !target
                .allowed_globus_groups
                .iter()
                .any(|g| self.groups.contains(g))
        {
            return Err(format!(
                "not a member of any group allowed to use {} on {}",
                target.model, target.cluster
            ));
        }
        if !target.allowed_domains.is_empty()
            && !self
                .domain()
                .is_some_and(|d| target.allowed_domains.iter().any(|a| a == d))
        {
            return Err(format!(
                "identities from this domain may not use {} on {}",
                target.model, target.cluster
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(groups: &[&str], domains: &[&str]) -> TargetSpec {
        TargetSpec {
            allowed_globus_groups: groups.iter().map(|s| s.to_string()).collect(),
            allowed_domains: domains.iter().map(|s| s.to_string()).collect(),
            ..TargetSpec::for_test("t", "sophia")
        }
    }

    fn alice(groups: &[&str]) -> Identity {
        Identity {
            id: "1".into(),
            username: "alice@anl.gov".into(),
            name: "Alice".into(),
            org: None,
            groups: groups.iter().map(|s| s.to_string()).collect(),
            idp_id: "idp".into(),
            idp_name: "ANL".into(),
            method: Method::Globus,
            admin: false,
            models: None,
            key_id: None,
        }
    }

    #[test]
    fn open_targets_are_open_to_everyone_authenticated() {
        assert!(alice(&[]).may_use(&spec(&[], &[])));
    }

    #[test]
    fn group_lists_need_a_shared_group() {
        assert!(alice(&["g1"]).may_use(&spec(&["g1", "g2"], &[])));
        let err = alice(&["g3"]).permission(&spec(&["g1"], &[])).unwrap_err();
        assert!(err.contains("group"), "{err}");
    }

    #[test]
    fn domain_lists_need_the_username_domain() {
        assert!(alice(&[]).may_use(&spec(&[], &["anl.gov"])));
        assert!(!alice(&[]).may_use(&spec(&[], &["uchicago.edu"])));
    }

    #[test]
    fn anonymous_bypasses_lists_because_auth_is_off() {
        assert!(Identity::anonymous().may_use(&spec(&["g1"], &["x.org"])));
        assert_eq!(Identity::anonymous().domain(), None);
    }
}
