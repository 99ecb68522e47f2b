//! Subjects (who a limit applies to) and their limits: the configured defaults of the
//! subject's kind, with the admin's stored override on top.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{LimitSettings, Quotas};
use crate::store::QuotaOverrideRow;

/// What a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    User,
    Org,
    Model,
}

/// A subject, written `user:<id>`, `org:<name>` or `model:<name>` (the key in the
/// database, in Redis and in `/admin/quota/{subject}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    pub kind: Kind,
    key: String,
}

impl Subject {
    pub fn new(kind: Kind, name: &str) -> Subject {
        let prefix = match kind {
            Kind::User => "user:",
            Kind::Org => "org:",
            Kind::Model => "model:",
        };
        Subject {
            kind,
            key: format!("{prefix}{name}"),
        }
    }

    /// Parses `kind:name`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Subject> {
        let (kind, name) = text.split_once(':')?;
        if name.is_empty() || name.len() > 256 {
            return None;
        }
        let kind = match kind {
            "user" => Kind::User,
            "org" => Kind::Org,
            "model" => Kind::Model,
            _ => return None,
        };
        Some(Subject::new(kind, name))
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// The limits in force for one subject; 0 disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub requests_per_second: f64,
    pub burst: u64,
    pub max_in_flight: u64,
    pub tokens_per_minute: u64,
    pub requests_per_day: u64,
    pub tokens_per_day: u64,
    pub tokens_per_month: u64,
    pub max_batches: u64,
}

/// The limit fields an admin may override (the `PUT /admin/quota/{subject}` body).
pub const FIELDS: [&str; 8] = [
    "requests_per_second",
    "burst",
    "max_in_flight",
    "tokens_per_minute",
    "requests_per_day",
    "tokens_per_day",
    "tokens_per_month",
    "max_batches",
];

impl Limits {
    fn from_settings(l: &LimitSettings, max_batches: u64) -> Limits {
        Limits {
            requests_per_second: l.requests_per_second,
            burst: l.burst,
            max_in_flight: l.max_in_flight,
            tokens_per_minute: l.tokens_per_minute,
            requests_per_day: l.requests_per_day,
            tokens_per_day: l.tokens_per_day,
            tokens_per_month: l.tokens_per_month,
            max_batches,
        }
    }

    /// These limits with the override's set fields on top.
    pub fn with(mut self, o: Option<&QuotaOverrideRow>) -> Limits {
        let Some(o) = o else { return self };
        let n = |v: Option<i64>, d: u64| v.map(|v| u64::try_from(v).unwrap_or(0)).unwrap_or(d);
        self.requests_per_second = o.rps.unwrap_or(self.requests_per_second);
        self.burst = n(o.burst, self.burst);
        self.max_in_flight = n(o.max_in_flight, self.max_in_flight);
        self.tokens_per_minute = n(o.tokens_per_minute, self.tokens_per_minute);
        self.requests_per_day = n(o.daily_requests, self.requests_per_day);
        self.tokens_per_day = n(o.daily_tokens, self.tokens_per_day);
        self.tokens_per_month = n(o.monthly_tokens, self.tokens_per_month);
        self.max_batches = n(o.max_batches, self.max_batches);
        self
    }
}

/// The configured defaults of each kind.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub user: Limits,
    pub org: Limits,
    pub model: Limits,
}

impl Defaults {
    pub fn from_settings(q: &Quotas) -> Defaults {
        Defaults {
            user: Limits::from_settings(&q.user, q.max_batches_per_user),
            org: Limits::from_settings(&q.org, 0),
            model: Limits::from_settings(&q.model, 0),
        }
    }

    pub fn of(&self, kind: Kind) -> Limits {
        match kind {
            Kind::User => self.user,
            Kind::Org => self.org,
            Kind::Model => self.model,
        }
    }
}

/// An admin's override as sent in a `PUT` body: each field a number, or `null`/absent for
/// the default. Unknown fields are refused (the error names the field).
pub fn parse_override(
    subject: &Subject,
    body: &serde_json::Value,
    now_ms: i64,
) -> Result<QuotaOverrideRow, (String, String)> {
    let Some(obj) = body.as_object() else {
        return Err((
            String::new(),
            "The body must be a JSON object of limit fields.".into(),
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err((
            unknown.clone(),
            format!(
                "Unknown limit `{unknown}`; the fields are {}.",
                FIELDS.join(", ")
            ),
        ));
    }
    let int = |name: &str| -> Result<Option<i64>, (String, String)> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_i64().filter(|n| *n >= 0).map(Some).ok_or_else(|| {
                (
                    name.to_string(),
                    format!("`{name}` must be a whole number >= 0 or null."),
                )
            }),
        }
    };
    let rps = match obj.get("requests_per_second") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| {
                    (
                        "requests_per_second".to_string(),
                        "`requests_per_second` must be a number >= 0 or null.".to_string(),
                    )
                })?,
        ),
    };
    let burst = int("burst")?;
    if rps.is_some_and(|r| r > 0.0) && burst == Some(0) {
        return Err((
            "burst".into(),
            "`burst` must be at least 1 when `requests_per_second` is set.".into(),
        ));
    }
    Ok(QuotaOverrideRow {
        subject: subject.key().to_string(),
        rps,
        burst,
        max_in_flight: int("max_in_flight")?,
        daily_requests: int("requests_per_day")?,
        daily_tokens: int("tokens_per_day")?,
        monthly_tokens: int("tokens_per_month")?,
        updated_at: now_ms,
        tokens_per_minute: int("tokens_per_minute")?,
        max_batches: int("max_batches")?,
    })
}

/// An override as the admin API shows it (the same field names as the `PUT` body).
pub fn override_json(o: &QuotaOverrideRow) -> serde_json::Value {
    serde_json::json!({
        "requests_per_second": o.rps,
        "burst": o.burst,
        "max_in_flight": o.max_in_flight,
        "tokens_per_minute": o.tokens_per_minute,
        "requests_per_day": o.daily_requests,
        "tokens_per_day": o.daily_tokens,
        "tokens_per_month": o.monthly_tokens,
        "max_batches": o.max_batches,
        "updated_at": o.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subjects_parse_and_print() {
        let s = Subject::parse("user:alice@anl.gov").unwrap();
        assert_eq!((s.kind, s.key()), (Kind::User, "user:alice@anl.gov"));
        assert_eq!(Subject::parse("org:a:b").unwrap().key(), "org:a:b");
        for bad in ["alice", "team:x", "user:", ""] {
            assert!(Subject::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn overrides_replace_only_their_fields() {
        let base = Defaults::from_settings(
            &crate::config::Settings::load_from(None, None, Vec::new())
                .unwrap()
                .quotas,
        )
        .user;
        assert_eq!(base.requests_per_second, 50.0);
        assert_eq!(base.max_batches, 10);
        let subject = Subject::new(Kind::User, "bob");
        let o = parse_override(
            &subject,
            &json!({"tokens_per_day": 0, "burst": 7, "max_in_flight": null}),
            5,
        )
        .unwrap();
        let l = base.with(Some(&o));
        assert_eq!((l.tokens_per_day, l.burst), (0, 7));
        assert_eq!(l.max_in_flight, base.max_in_flight);
        assert_eq!(l.tokens_per_month, base.tokens_per_month);
    }

    #[test]
    fn bad_override_bodies_name_the_field() {
        let s = Subject::new(Kind::Org, "anl");
        let field = |body| parse_override(&s, &body, 0).unwrap_err().0;
        assert_eq!(field(json!({"rps": 1})), "rps");
        assert_eq!(field(json!({"burst": -1})), "burst");
        assert_eq!(field(json!({"tokens_per_day": "many"})), "tokens_per_day");
        assert_eq!(
            field(json!({"requests_per_second": 5, "burst": 0})),
            "burst"
        );
        assert_eq!(field(json!([1])), "");
    }
}
