//! Reads backends and federated models from FIRST's Django fixture files, as they are:
//! `endpoints.json` (both `resource_server.endpoint` and the newer
//! `resource_server_async.endpoint` with `endpoint_adapter` and `config`),
//! `federated_endpoints.json` and `clusters.json`, plus our own additions (`base_url`,
//! `api_key_env_name`, `health_path`). Unknown fields are kept; a broken file gives an error
//! naming the file, the entry and the field.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

pub const ENDPOINTS_FILE: &str = "endpoints.json";
pub const FEDERATED_FILE: &str = "federated_endpoints.json";
pub const CLUSTERS_FILE: &str = "clusters.json";

/// Everything the fixtures describe.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Every target, unique by slug, in file order.
    pub targets: Vec<TargetSpec>,
    /// Every model clients can name, in file order.
    pub models: Vec<ModelSpec>,
    /// Clusters named in `clusters.json` (targets may name others).
    pub clusters: Vec<ClusterSpec>,
}

/// How requests reach a target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Transport {
    /// Plain HTTP to `base_url`.
    #[default]
    Http,
    /// A registered function on a Globus Compute endpoint (FIRST's deployment model).
    GlobusCompute(GlobusComputeTarget),
    /// The built-in demo responder (`framework: "demo"`): answered inside the gateway's
    /// process by [`crate::proxy::demo`], no server, no port.
    Demo,
}

/// The framework that names the built-in demo target.
pub const DEMO_FRAMEWORK: &str = "demo";
/// What a demo target shows where others show their server's address.
pub const DEMO_BASE_URL: &str = "builtin://demo";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobusComputeTarget {
    pub endpoint_uuid: String,
    pub function_uuid: String,
    /// The port of the model server on the compute node (passed to the function).
    pub api_port: u16,
}

/// One inference server (FIRST's "endpoint").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TargetSpec {
    pub slug: String,
    pub cluster: String,
    pub framework: String,
    /// The model name this target serves, sent upstream in the `model` field.
    pub model: String,
    /// Server root: `{base_url}/v1/chat/completions` is its chat endpoint.
    pub base_url: String,
    /// Environment variable holding the upstream API key, if the target needs one.
    pub api_key_env: Option<String>,
    /// Health-check path overriding `health.path` ("" disables checks).
    pub health_path: Option<String>,
    /// Response timeout overriding `upstream.response_timeout_secs`.
    pub request_timeout: Option<Duration>,
    pub allowed_globus_groups: Vec<String>,
    pub allowed_domains: Vec<String>,
    /// Command that submits the target's job when its model is cold (e.g. `qsub
    /// start-vllm.pbs`), run with `sh -c` on the gateway host.
    pub start_command: Option<String>,
    /// The scheduler job serving this target: its job name, or the directory in its
    /// submit script path (Parsl: the Globus Compute endpoint's name). Default: the slug.
    pub scheduler_job: Option<String>,
    pub transport: Transport,
    /// Fields we don't interpret (endpoint_uuid, function_uuid, ...), kept for later use.
    pub extra: Map<String, Value>,
}

impl TargetSpec {
    /// A plain HTTP target on loopback, for unit tests.
    #[cfg(test)]
    pub fn for_test(slug: &str, cluster: &str) -> TargetSpec {
        TargetSpec {
            slug: slug.into(),
            cluster: cluster.into(),
            framework: "vllm".into(),
            model: "m".into(),
            base_url: "http://127.0.0.1:1".into(),
            ..Default::default()
        }
    }

    /// The key scheduler jobs are matched on.
    pub fn job_key(&self) -> &str {
        self.scheduler_job.as_deref().unwrap_or(&self.slug)
    }
}

/// A model name clients can ask for, and the targets that serve it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub description: Option<String>,
    /// Slugs of the targets, in preference order of the files.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub name: String,
    pub extra: Map<String, Value>,
}

impl ClusterSpec {
    /// A text value of the cluster's `config` (a JSON object, or FIRST's JSON-in-a-string).
    pub fn config_text(&self, key: &str) -> Option<String> {
        let config = self.extra.get("config")?;
        let parsed;
        let config = match config {
            Value::String(text) => {
                parsed = serde_json::from_str::<Value>(text).ok()?;
                &parsed
            }
            other => other,
        };
        config
            .get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
    }
}

/// A fixture problem: which file, which entry, which field, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {entry}: {field}: {message}")]
pub struct FixtureError {
    pub file: String,
    pub entry: String,
    pub field: String,
    pub message: String,
}

impl Catalog {
    /// Reads the fixture files in `dir`. `endpoints.json` is required; the others are optional.
    pub fn load(dir: &Path) -> Result<Catalog, FixtureError> {
        let endpoints = read_array(&dir.join(ENDPOINTS_FILE), true)?.unwrap_or_default();
        let federated = read_array(&dir.join(FEDERATED_FILE), false)?.unwrap_or_default();
        let clusters = read_array(&dir.join(CLUSTERS_FILE), false)?.unwrap_or_default();
        Self::from_values(&endpoints, &federated, &clusters)
    }

    /// Builds a catalog from already-parsed fixture arrays (file names only label errors).
    pub fn from_values(
        endpoints: &[Value],
        federated: &[Value],
        clusters: &[Value],
    ) -> Result<Catalog, FixtureError> {
        let mut catalog = Catalog::default();
        let mut slugs: HashMap<String, usize> = HashMap::new();
        let mut models: BTreeMap<String, usize> = BTreeMap::new();

        for (i, entry) in clusters.iter().enumerate() {
            let e = Entry::new(CLUSTERS_FILE, i, entry)?;
            let name = e.required_str("cluster_name")?;
            let mut extra = e.fields.clone();
            extra.remove("cluster_name");
            catalog.clusters.push(ClusterSpec { name, extra });
        }

        for (i, entry) in endpoints.iter().enumerate() {
            let e = Entry::new(ENDPOINTS_FILE, i, entry)?;
            let target = e.target(None)?;
            if slugs.contains_key(&target.slug) {
                return Err(e.error("endpoint_slug", format!("duplicate slug {:?}", target.slug)));
            }
            add_to_model(&mut catalog, &mut models, &target.model, None, &target.slug);
            slugs.insert(target.slug.clone(), catalog.targets.len());
            catalog.targets.push(target);
        }

        for (i, entry) in federated.iter().enumerate() {
            let e = Entry::new(FEDERATED_FILE, i, entry)?;
            let name = e.required_str("target_model_name")?;
            let description = e.optional_str("description")?;
            let list = match e.fields.get("targets") {
                Some(Value::Array(list)) if !list.is_empty() => list,
                Some(Value::Array(_)) => return Err(e.error("targets", "is empty")),
                Some(_) => return Err(e.error("targets", "must be a list")),
                None => return Err(e.error("targets", "is required")),
            };
            for (j, t) in list.iter().enumerate() {
                let Value::Object(tfields) = t else {
                    return Err(e.error(&format!("targets[{j}]"), "must be an object"));
                };
                let slug = match tfields.get("endpoint_slug") {
                    Some(Value::String(s)) if slugs.contains_key(s) => s.clone(),
                    _ => {
                        // An inline target: a full target description inside the federated entry.
                        let inner = Entry {
                            file: e.file,
                            label: format!("{} targets[{j}]", e.label),
                            fields: tfields.clone(),
                        };
                        let target = inner.target(Some(&name))?;
                        if let Some(&idx) = slugs.get(&target.slug) {
                            catalog.targets[idx].slug.clone()
                        } else {
                            let slug = target.slug.clone();
                            slugs.insert(slug.clone(), catalog.targets.len());
                            catalog.targets.push(target);
                            slug
                        }
                    }
                };
                add_to_model(&mut catalog, &mut models, &name, description.clone(), &slug);
            }
        }
        Ok(catalog)
    }

    pub fn target(&self, slug: &str) -> Option<&TargetSpec> {
        self.targets.iter().find(|t| t.slug == slug)
    }
}

fn add_to_model(
    catalog: &mut Catalog,
    index: &mut BTreeMap<String, usize>,
    name: &str,
    description: Option<String>,
    slug: &str,
) {
    let idx = *index.entry(name.to_string()).or_insert_with(|| {
        catalog.models.push(ModelSpec {
            name: name.to_string(),
            description: None,
            targets: Vec::new(),
        });
        catalog.models.len() - 1
    });
    let model = &mut catalog.models[idx];
    if model.description.is_none() {
        model.description = description;
    }
    if !model.targets.iter().any(|s| s == slug) {
        model.targets.push(slug.to_string());
    }
}

fn read_array(path: &Path, required: bool) -> Result<Option<Vec<Value>>, FixtureError> {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(e) => {
            return Err(FixtureError {
                file,
                entry: "-".into(),
                field: "-".into(),
                message: format!("cannot read: {e}"),
            })
        }
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => Ok(Some(items)),
        Ok(_) => Err(FixtureError {
            file,
            entry: "-".into(),
            field: "-".into(),
            message: "must be a JSON list of fixture entries".into(),
        }),
        Err(e) => Err(FixtureError {
            file,
            entry: format!("line {}", e.line()),
            field: "-".into(),
            message: format!("invalid JSON: {e}"),
        }),
    }
}

/// One `{model, pk, fields}` entry, with what we need to label its errors.
struct Entry<'a> {
    file: &'a str,
    label: String,
    fields: Map<String, Value>,
}

impl<'a> Entry<'a> {
    fn new(file: &'a str, index: usize, value: &Value) -> Result<Entry<'a>, FixtureError> {
        let label = match value.get("pk") {
            Some(pk) => format!("entry {index} (pk {pk})"),
            None => format!("entry {index}"),
        };
        let fields = match value.get("fields") {
            Some(Value::Object(fields)) => fields.clone(),
            _ => {
                return Err(FixtureError {
                    file: file.into(),
                    entry: label,
                    field: "fields".into(),
                    message: "is required and must be an object".into(),
                })
            }
        };
        Ok(Entry {
            file,
            label,
            fields,
        })
    }

    fn error(&self, field: &str, message: impl Into<String>) -> FixtureError {
        FixtureError {
            file: self.file.into(),
            entry: self.label.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A field from `fields`, or from `fields.config` (the newer fixture form).
    fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name).or_else(|| {
            self.fields
                .get("config")
                .and_then(|c| c.as_object())
                .and_then(|c| c.get(name))
        })
    }

    fn optional_str(&self, name: &str) -> Result<Option<String>, FixtureError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.error(name, "must be a string")),
        }
    }

    fn required_str(&self, name: &str) -> Result<String, FixtureError> {
        match self.optional_str(name)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(self.error(name, "must not be empty")),
            None => Err(self.error(name, "is required")),
        }
    }

    /// A list of strings, also accepted as one comma-separated string (FIRST stores both).
    fn string_list(&self, name: &str) -> Result<Vec<String>, FixtureError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| self.error(name, "must list strings"))
                })
                .collect(),
            Some(_) => Err(self.error(name, "must be a list of strings")),
        }
    }

    fn target(&self, federated_model: Option<&str>) -> Result<TargetSpec, FixtureError> {
        let cluster = self.required_str("cluster")?;
        let framework = self.required_str("framework")?;
        let model = match federated_model {
            Some(default) => self
                .optional_str("model")?
                .unwrap_or_else(|| default.to_string()),
            None => self.required_str("model")?,
        };
        let slug = match self.optional_str("endpoint_slug")? {
            Some(s) if !s.is_empty() => s,
            _ => slugify(&format!("{cluster}-{framework}-{model}")),
        };
        let transport = if framework == DEMO_FRAMEWORK {
            for field in ["base_url", "api_url", "api_port", "transport"] {
                if self.get(field).is_some_and(|v| !v.is_null()) {
                    return Err(self.error(
                        field,
                        "a `demo` target is built into the gateway and has no server to \
                         name (remove the field, or give the target another framework)",
                    ));
                }
            }
            Transport::Demo
        } else {
            self.transport()?
        };
        let base_url = match &transport {
            Transport::Demo => DEMO_BASE_URL.to_string(),
            // The model server is on the compute node; base_url is informative only.
            Transport::GlobusCompute(g) if self.optional_str("base_url")?.is_none() => {
                format!("http://127.0.0.1:{}", g.api_port)
            }
            _ => self.base_url()?,
        };
        let request_timeout = match self.get("api_request_timeout") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(secs) if secs > 0.0 => Some(Duration::from_secs_f64(secs)),
                _ => {
                    return Err(self.error(
                        "api_request_timeout",
                        "must be a positive number of seconds",
                    ))
                }
            },
        };
        let mut health_path = self.optional_str("health_path")?;
        if matches!(transport, Transport::GlobusCompute(_)) && health_path.is_none() {
            // Not reachable from here: the endpoint's status stands in for health.
            health_path = Some(String::new());
        }
        if let Some(p) = &health_path {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(self.error("health_path", "must start with '/' or be empty"));
            }
        }
        let known = [
            "endpoint_slug",
            "cluster",
            "framework",
            "model",
            "base_url",
            "api_url",
            "api_key_env_name",
            "api_request_timeout",
            "health_path",
            "allowed_globus_groups",
            "allowed_domains",
            "start_command",
            "scheduler_job",
            "transport",
        ];
        let mut extra = Map::new();
        for (k, v) in &self.fields {
            if k == "config" {
                if let Value::Object(cfg) = v {
                    for (ck, cv) in cfg {
                        if !known.contains(&ck.as_str()) {
                            extra.insert(ck.clone(), cv.clone());
                        }
                    }
                }
            } else if !known.contains(&k.as_str()) {
                extra.insert(k.clone(), v.clone());
            }
        }
        Ok(TargetSpec {
            slug,
            cluster,
            framework,
            model,
            base_url,
            api_key_env: self.optional_str("api_key_env_name")?,
            health_path,
            request_timeout,
            allowed_globus_groups: self.string_list("allowed_globus_groups")?,
            allowed_domains: self.string_list("allowed_domains")?,
            start_command: self
                .optional_str("start_command")?
                .filter(|c| !c.trim().is_empty()),
            scheduler_job: self
                .optional_str("scheduler_job")?
                .filter(|c| !c.trim().is_empty()),
            transport,
            extra,
        })
    }

    /// `transport: "globus-compute"` (or the newer form's `endpoint_adapter` ending in
    /// `GlobusComputeEndpoint`) with `endpoint_uuid` and `function_uuid`; else HTTP.
    fn transport(&self) -> Result<Transport, FixtureError> {
        let adapter = self.optional_str("endpoint_adapter")?.unwrap_or_default();
        let globus = match self.optional_str("transport")?.as_deref() {
            None | Some("") => adapter.ends_with("GlobusComputeEndpoint"),
            Some("http") => false,
            Some("globus-compute") => true,
            Some(other) => {
                return Err(self.error(
                    "transport",
                    format!("{other:?} is not \"http\" or \"globus-compute\""),
                ))
            }
        };
        if !globus {
            return Ok(Transport::Http);
        }
        let uuid = |name: &str| -> Result<String, FixtureError> {
            let v = self.required_str(name)?;
            if uuid::Uuid::parse_str(&v).is_err() {
                return Err(self.error(name, format!("{v:?} is not a UUID")));
            }
            Ok(v)
        };
        let api_port = match self.get("api_port") {
            None | Some(Value::Null) => 8000,
            Some(port) => port
                .as_u64()
                .or_else(|| port.as_str().and_then(|s| s.parse().ok()))
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| self.error("api_port", "must be a port number (1-65535)"))?
                as u16,
        };
        Ok(Transport::GlobusCompute(GlobusComputeTarget {
            endpoint_uuid: uuid("endpoint_uuid")?,
            function_uuid: uuid("function_uuid")?,
            api_port,
        }))
    }

    /// `base_url`, else the newer form's `config.api_url` (a full endpoint URL in FIRST),
    /// else `http://127.0.0.1:{api_port}`.
    fn base_url(&self) -> Result<String, FixtureError> {
        let (field, raw) = if let Some(url) = self.optional_str("base_url")? {
            ("base_url", url)
        } else if let Some(url) = self.optional_str("api_url")? {
            ("api_url", url)
        } else if let Some(port) = self.get("api_port") {
            let port = port
                .as_u64()
                .or_else(|| port.as_str().and_then(|s| s.parse().ok()))
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| self.error("api_port", "must be a port number (1-65535)"))?;
            return Ok(format!("http://127.0.0.1:{port}"));
        } else {
            return Err(self.error(
                "base_url",
                "is required for an HTTP target (or config.api_url, or api_port)",
            ));
        };
        normalize_base_url(&raw).map_err(|m| self.error(field, m))
    }
}

/// Turns what operators write (`http://h:8000/`, `http://h:8000/v1`,
/// `https://api.x.com/v1/chat/completions`) into the server root the routes are appended to.
pub fn normalize_base_url(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        ("http://", rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        ("https://", rest)
    } else {
        return Err(format!("{url:?} must start with http:// or https://"));
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() || url.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no host"));
    }
    // Anything from the API version on is the route, which the gateway appends itself.
    let mut path = path.trim_end_matches('/');
    if let Some(i) = path.find("/v1/") {
        path = &path[..i];
    } else if let Some(stripped) = path.strip_suffix("/v1") {
        path = stripped;
    }
    Ok(format!("{scheme}{host}{path}"))
}

/// FIRST's slugs: lower case, runs of anything else turned into one '-'.
pub fn slugify(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// The fixture directory's files, for messages.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    [ENDPOINTS_FILE, FEDERATED_FILE, CLUSTERS_FILE]
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_legacy_endpoint_with_only_api_port_is_loopback_http() {
        let eps = vec![json!({"model":"resource_server.endpoint","pk":1,"fields":{
            "endpoint_slug":"sophia-vllm-llama","cluster":"sophia","framework":"vllm",
            "model":"meta-llama/Meta-Llama-3-8B-Instruct","api_port":8001,
            "endpoint_uuid":"a5ac731e","function_uuid":"3a060933",
            "allowed_globus_groups":"g1, g2"}})];
        let c = Catalog::from_values(&eps, &[], &[]).unwrap();
        let t = &c.targets[0];
        assert_eq!(t.base_url, "http://127.0.0.1:8001");
        assert_eq!(t.allowed_globus_groups, vec!["g1", "g2"]);
        assert_eq!(t.extra.get("endpoint_uuid"), Some(&json!("a5ac731e")));
        assert_eq!(c.models[0].name, "meta-llama/Meta-Llama-3-8B-Instruct");
        assert_eq!(c.models[0].targets, vec!["sophia-vllm-llama"]);
    }

    #[test]
    fn globus_compute_targets_by_transport_or_adapter() {
        let ep = "a5ac731e-7b4c-4a6e-9f0e-1c2d3e4f5a6b";
        let func = "3a060933-1111-4222-8333-944455556666";
        let eps = vec![
            json!({"pk":1,"fields":{"endpoint_slug":"a","cluster":"sophia","framework":"vllm",
                "model":"m","api_port":8001,"endpoint_uuid":ep,"function_uuid":func,
                "transport":"globus-compute","start_command":"qsub start.pbs",
                "scheduler_job":"sophia-m"}}),
            json!({"model":"resource_server_async.endpoint","pk":2,"fields":{
                "endpoint_slug":"b","cluster":"sophia","framework":"vllm","model":"m",
                "endpoint_adapter":"resource_server_async.endpoints.globus_compute.GlobusComputeEndpoint",
                "config":{"api_port":8000,"endpoint_uuid":ep,"function_uuid":func}}}),
        ];
        let c = Catalog::from_values(&eps, &[], &[]).unwrap();
        let expected = |port| {
            Transport::GlobusCompute(GlobusComputeTarget {
                endpoint_uuid: ep.into(),
                function_uuid: func.into(),
                api_port: port,
            })
        };
        assert_eq!(c.targets[0].transport, expected(8001));
        assert_eq!(
            c.targets[0].start_command.as_deref(),
            Some("qsub start.pbs")
        );
        assert_eq!(c.targets[0].job_key(), "sophia-m");
        assert_eq!(c.targets[0].health_path.as_deref(), Some(""));
        assert_eq!(c.targets[1].transport, expected(8000));
        assert_eq!(c.targets[1].job_key(), "b");

        let bad = vec![
            json!({"pk":1,"fields":{"cluster":"c","framework":"f","model":"m",
            "transport":"globus-compute","endpoint_uuid":ep}}),
        ];
        assert_eq!(
            Catalog::from_values(&bad, &[], &[]).unwrap_err().field,
            "function_uuid"
        );
        let bad = vec![
            json!({"pk":1,"fields":{"cluster":"c","framework":"f","model":"m",
            "transport":"carrier-pigeon","base_url":"http://h"}}),
        ];
        assert_eq!(
            Catalog::from_values(&bad, &[], &[]).unwrap_err().field,
            "transport"
        );
    }

    #[test]
    fn newer_form_reads_config_api_url_key_env_and_timeout() {
        let eps = vec![
            json!({"model":"resource_server_async.endpoint","pk":3,"fields":{
            "endpoint_slug":"openai-gpt4o","cluster":"openai","framework":"api","model":"gpt-4o",
            "endpoint_adapter":"resource_server_async.endpoints.direct_api.DirectAPIEndpoint",
            "config":{"api_url":"https://api.openai.com/v1/chat/completions",
                      "api_key_env_name":"OPENAI_API_KEY","api_request_timeout":120}}}),
        ];
        let c = Catalog::from_values(&eps, &[], &[]).unwrap();
        let t = &c.targets[0];
        assert_eq!(t.base_url, "https://api.openai.com");
        assert_eq!(t.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        assert_eq!(t.request_timeout, Some(Duration::from_secs(120)));
        assert_eq!(
            t.extra.get("endpoint_adapter"),
            Some(&json!(
                "resource_server_async.endpoints.direct_api.DirectAPIEndpoint"
            ))
        );
    }

    #[test]
    fn same_model_on_two_clusters_is_one_model_with_two_targets() {
        let eps = vec![
            json!({"pk":1,"fields":{"endpoint_slug":"a","cluster":"c1","framework":"vllm","model":"m","base_url":"http://127.0.0.1:1/v1"}}),
            json!({"pk":2,"fields":{"endpoint_slug":"b","cluster":"c2","framework":"vllm","model":"m","base_url":"http://127.0.0.1:2/"}}),
        ];
        let c = Catalog::from_values(&eps, &[], &[]).unwrap();
        assert_eq!(c.models.len(), 1);
        assert_eq!(c.models[0].targets, vec!["a", "b"]);
        assert_eq!(c.targets[0].base_url, "http://127.0.0.1:1");
        assert_eq!(c.targets[1].base_url, "http://127.0.0.1:2");
    }

    #[test]
    fn federated_entry_references_and_inline_targets() {
        let eps = vec![
            json!({"pk":1,"fields":{"endpoint_slug":"sophia-8b","cluster":"sophia","framework":"vllm","model":"llama-8b","base_url":"http://127.0.0.1:1"}}),
        ];
        let fed = vec![
            json!({"model":"resource_server.federatedendpoint","pk":1,"fields":{
            "name":"Llama 8B (Federated)","slug":"federated-llama-8b","target_model_name":"llama-8b-fed",
            "description":"d","targets":[
                {"cluster":"sophia","framework":"vllm","model":"llama-8b","endpoint_slug":"sophia-8b"},
                {"cluster":"local","framework":"vllm","model":"llama-8b","endpoint_slug":"local-8b","api_port":8009}]}}),
        ];
        let c = Catalog::from_values(&eps, &fed, &[]).unwrap();
        let m = c.models.iter().find(|m| m.name == "llama-8b-fed").unwrap();
        assert_eq!(m.targets, vec!["sophia-8b", "local-8b"]);
        assert_eq!(m.description.as_deref(), Some("d"));
        assert_eq!(
            c.target("local-8b").unwrap().base_url,
            "http://127.0.0.1:8009"
        );
    }

    #[test]
    fn errors_name_file_entry_and_field() {
        let eps = vec![
            json!({"pk":7,"fields":{"endpoint_slug":"x","cluster":"c","framework":"f","model":"m"}}),
        ];
        let err = Catalog::from_values(&eps, &[], &[]).unwrap_err();
        assert_eq!(err.file, "endpoints.json");
        assert_eq!(err.entry, "entry 0 (pk 7)");
        assert_eq!(err.field, "base_url");

        let eps = vec![
            json!({"pk":1,"fields":{"cluster":"c","framework":"f","model":"m","base_url":"ftp://x"}}),
        ];
        assert_eq!(
            Catalog::from_values(&eps, &[], &[]).unwrap_err().field,
            "base_url"
        );

        let eps = vec![
            json!({"pk":1,"fields":{"cluster":"c","framework":"f","model":"m","api_port":"http"}}),
        ];
        assert_eq!(
            Catalog::from_values(&eps, &[], &[]).unwrap_err().field,
            "api_port"
        );

        let eps = vec![json!({"pk":1})];
        assert_eq!(
            Catalog::from_values(&eps, &[], &[]).unwrap_err().field,
            "fields"
        );
    }

    #[test]
    fn broken_json_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ENDPOINTS_FILE), "[{\"pk\": 1,").unwrap();
        let err = Catalog::load(dir.path()).unwrap_err();
        assert!(err.file.ends_with(ENDPOINTS_FILE));
        assert!(err.message.contains("invalid JSON"));
    }

    #[test]
    fn base_url_normalisation() {
        assert_eq!(normalize_base_url("http://h:1/v1").unwrap(), "http://h:1");
        assert_eq!(
            normalize_base_url("http://h:1/vllm/v1/chat/completions/").unwrap(),
            "http://h:1/vllm"
        );
        assert_eq!(normalize_base_url("https://h/").unwrap(), "https://h");
        assert!(normalize_base_url("h:1").is_err());
        assert!(normalize_base_url("http:///v1").is_err());
    }

    #[test]
    fn slugs_like_first() {
        assert_eq!(
            slugify("sophia-vllm-meta-llama/Meta-Llama-3.1-8B"),
            "sophia-vllm-meta-llama-meta-llama-3-1-8b"
        );
    }

    #[test]
    fn shipped_fixtures_load_with_the_demo_target() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let c = Catalog::load(&dir).unwrap();
        assert!(!c.targets.is_empty());
        assert!(!c.models.is_empty());
        let demo = c.target("local-demo").unwrap();
        assert_eq!(demo.transport, Transport::Demo);
        assert_eq!(demo.model, "demo");
    }

    #[test]
    fn the_demo_framework_is_built_in_and_names_no_server() {
        let eps =
            vec![json!({"pk":1,"fields":{"cluster":"local","framework":"demo","model":"demo"}})];
        let c = Catalog::from_values(&eps, &[], &[]).unwrap();
        let t = &c.targets[0];
        assert_eq!(t.transport, Transport::Demo);
        assert_eq!(t.slug, "local-demo-demo");
        assert_eq!(t.base_url, DEMO_BASE_URL);
        for (field, value) in [
            ("base_url", json!("http://127.0.0.1:8000")),
            ("api_port", json!(8000)),
            ("transport", json!("http")),
        ] {
            let mut e = json!({"pk":1,"fields":{"cluster":"c","framework":"demo","model":"m"}});
            e["fields"][field] = value;
            let err = Catalog::from_values(&[e], &[], &[]).unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.message.contains("built into the gateway"), "{err}");
        }
    }
}
