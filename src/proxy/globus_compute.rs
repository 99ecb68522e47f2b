//! The Globus Compute transport: one attempt on a target that is a registered function on
//! a Globus Compute endpoint (FIRST's deployment model), over the web service's REST API.
//!
//! 1. A token by the client-credentials grant for the Compute scope (cached until a minute
//!    before it expires).
//! 2. The endpoint's status (cached): it must be `online`; with no managers and a submit
//!    within `start_window_secs`, it is still starting (503 `model_starting`).
//! 3. `POST /v3/endpoints/{endpoint}/submit` with one task whose arguments are JSONData
//!    (`11\n`) `[{"model_params": {...the OpenAI body, openai_endpoint, api_port}}]`, and
//!    `result_serializers: [JSONData]` so the result is JSON: no Python on this side.
//! 4. `GET /v2/tasks/{task}` with doubling pauses until `success` or `failed`, or 504.
//!
//! FIRST's function returns a JSON *string* holding the OpenAI answer, so the result is
//! `11\n"{\"id\": ...}"`: the inner string is the body sent to the client. Endpoints
//! before globus-compute 3.6.0 ignore `result_serializers` and answer with dill
//! (`00\n`): plain values are decoded (`pickled`), anything else refused. Task status
//! strings are compared case-insensitively, as the SDK does. A failed task's
//! traceback carries `status code: NNN`: a 4xx is the client's fault and passes through, a
//! 5xx (or none) is the target's and fails over.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use bytes::Bytes;
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Sleep;
use uuid::Uuid;

use crate::config::{ClusterSettings, GlobusCompute, HttpUrl, Streaming};
use crate::error::envelope;
use crate::fixtures::GlobusComputeTarget;
use crate::proxy::forward::{AttemptError, Call, Committed};
use crate::proxy::pickled::{self, Plain};
use crate::routing::target::Target;
use crate::streaming::{new_token, Registration, StreamEvent, StreamHub};
use crate::streaming_redis::RedisStreams;

/// The serializer FIRST's gateway never asked for and we always do.
pub const JSON_SERIALIZER: &str = "globus_compute_sdk.serialize.concretes.JSONData";
/// Largest web-service answer read.
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Refresh a token this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
struct EndpointSeen {
    checked: Instant,
    /// `Some(managers)` when online, `None` when offline or the check failed.
    online: Option<u64>,
}

/// A confidential client's credentials, or the variables that should have held them.
#[derive(Clone)]
enum Credentials {
    /// (client id, secret). Secret: never logged.
    Set(String, String),
    Missing {
        id_env: String,
        secret_env: String,
    },
}

/// What all workers share: settings, credentials, the token and endpoint status caches.
pub struct GlobusShared {
    settings: GlobusCompute,
    /// The `[globus_compute]` client, and per-cluster overrides.
    credentials: Credentials,
    cluster_credentials: HashMap<String, Credentials>,
    /// Tokens by client id, with the instant they are refreshed.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    endpoints: Mutex<HashMap<String, EndpointSeen>>,
    /// Last submit per endpoint (an endpoint with no managers is starting after one).
    submitted: Mutex<HashMap<String, Instant>>,
    retry_after: Duration,
    streaming: Streaming,
    /// Where callbacks are handed to client streams.
    hub: Arc<StreamHub>,
    /// Cross-replica callbacks (with `redis.url`), and the log for its failures.
    redis: Option<(Arc<RedisStreams>, slog::Logger)>,
}

impl std::fmt::Debug for GlobusShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobusShared")
            .field("compute_base", &self.settings.compute_base)
            .field("credentials", &"***")
            .finish()
    }
}

impl GlobusShared {
    /// Reads the client ids and secrets from the environment variables the settings name
    /// (`[globus_compute]`, and `[clusters.<name>]` overrides).
    pub fn new(
        settings: &GlobusCompute,
        clusters: &BTreeMap<String, ClusterSettings>,
        streaming: &Streaming,
        hub: Arc<StreamHub>,
        retry_after: Duration,
    ) -> Self {
        let read = |id_env: &str, secret_env: &str| {
            let var = |name: &str| {
                (!name.is_empty())
                    .then(|| std::env::var(name).ok())
                    .flatten()
                    .filter(|v| !v.trim().is_empty())
            };
            match (var(id_env), var(secret_env)) {
                (Some(id), Some(secret)) => Credentials::Set(id, secret),
                _ => Credentials::Missing {
                    id_env: id_env.to_string(),
                    secret_env: secret_env.to_string(),
                },
            }
        };
        let cluster_credentials = clusters
            .iter()
            .filter(|(_, c)| !c.globus_client_id_env.is_empty())
            .map(|(name, c)| {
                (
                    name.clone(),
                    read(&c.globus_client_id_env, &c.globus_client_secret_env),
                )
            })
            .collect();
        GlobusShared {
            settings: settings.clone(),
            credentials: read(&settings.client_id_env, &settings.client_secret_env),
            cluster_credentials,
            tokens: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            submitted: Mutex::new(HashMap::new()),
            retry_after,
            streaming: streaming.clone(),
            hub,
            redis: None,
        }
    }

    /// Announces streams in Redis so callbacks may land on any replica.
    pub fn with_redis(mut self, redis: Arc<RedisStreams>, log: slog::Logger) -> Self {
        self.redis = Some((redis, log));
        self
    }

    fn url(&self, base: &HttpUrl, path: &str) -> String {
        format!("{}{}", base.as_str().trim_end_matches('/'), path)
    }

    /// A token for the cluster's client (cached), and that client's id.
    async fn token(
        &self,
        client: &awc::Client,
        cluster: &str,
    ) -> Result<(String, String), AttemptError> {
        let credentials = self
            .cluster_credentials
            .get(cluster)
            .unwrap_or(&self.credentials);
        let (id, secret) = match credentials {
            Credentials::Set(id, secret) => (id, secret),
            Credentials::Missing { id_env, secret_env } => {
                return Err(AttemptError::Connect(format!(
                    "Globus Compute credentials are not set ({id_env} / {secret_env})"
                )))
            }
        };
        if let Some((token, until)) = self
            .tokens
            .lock()
            .ok()
            .and_then(|g| g.get(id.as_str()).cloned())
        {
            if Instant::now() < until {
                return Ok((token, id.clone()));
            }
        }
        let url = self.url(&self.settings.auth_base, "/v2/oauth2/token");
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", self.settings.scope.as_str()),
        ];
        let mut res = client
            .post(url)
            .basic_auth(id, secret)
            .timeout(Duration::from_secs(30))
            .send_form(&form)
            .await
            .map_err(|e| AttemptError::Connect(format!("globus auth: {e}")))?;
        let body = res.body().limit(BODY_LIMIT).await.unwrap_or_default();
        if !res.status().is_success() {
            return Err(AttemptError::Connect(format!(
                "globus auth answered HTTP {}",
                res.status().as_u16()
            )));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| AttemptError::Connect("globus auth answered non-JSON".into()))?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| AttemptError::Connect("globus auth answered no access_token".into()))?
            .to_string();
        let expires =
            Duration::from_secs(v.get("expires_in").and_then(Value::as_u64).unwrap_or(600));
        let until = Instant::now() + expires.saturating_sub(TOKEN_MARGIN);
        if let Ok(mut g) = self.tokens.lock() {
            g.insert(id.clone(), (token.clone(), until));
        }
        Ok((token, id.clone()))
    }

    fn forget_token(&self, client_id: &str) {
        if let Ok(mut g) = self.tokens.lock() {
            g.remove(client_id);
        }
    }

    /// Managers of an online endpoint, `None` when it is not online.
    async fn endpoint_status(
        &self,
        client: &awc::Client,
        token: &str,
        client_id: &str,
        endpoint: &str,
    ) -> Option<u64> {
        let ttl = self.settings.status_cache_secs.duration();
        if let Some(seen) = self
            .endpoints
            .lock()
            .ok()
            .and_then(|g| g.get(endpoint).copied())
        {
            let ttl = if seen.online.is_some() { ttl } else { ttl / 6 };
            if seen.checked.elapsed() < ttl {
                return seen.online;
            }
        }
        let url = self.url(
            &self.settings.compute_base,
            &format!("/v2/endpoints/{endpoint}/status"),
        );
        let online = match client
            .get(url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
        {
            Ok(mut res) if res.status().is_success() => {
                let v: Value = res
                    .body()
                    .limit(BODY_LIMIT)
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(Value::Null);
                (v.get("status").and_then(Value::as_str) == Some("online")).then(|| {
                    let managers = v.pointer("/details/managers");
                    managers
                        .and_then(Value::as_u64)
                        .or_else(|| {
                            managers
                                .and_then(Value::as_str)
                                .and_then(|s| s.parse().ok())
                        })
                        .unwrap_or(0)
                })
            }
            Ok(res) => {
                if res.status() == StatusCode::UNAUTHORIZED {
                    self.forget_token(client_id);
                }
                None
            }
            Err(_) => None,
        };
        if let Ok(mut g) = self.endpoints.lock() {
            g.insert(
                endpoint.to_string(),
                EndpointSeen {
                    checked: Instant::now(),
                    online,
                },
            );
        }
        online
    }

    fn recently_submitted(&self, endpoint: &str) -> bool {
        let window = self.settings.start_window_secs.duration();
        self.submitted
            .lock()
            .ok()
            .and_then(|g| g.get(endpoint).copied())
            .is_some_and(|at| at.elapsed() < window)
    }

    fn mark_submitted(&self, endpoint: &str) {
        if let Ok(mut g) = self.submitted.lock() {
            g.insert(endpoint.to_string(), Instant::now());
        }
    }
}

/// `pack_buffers`: each buffer as `"{len}\n{buffer}"`, where len counts characters.
pub fn pack_buffers(buffers: &[String]) -> String {
    buffers
        .iter()
        .map(|b| format!("{}\n{b}", b.chars().count()))
        .collect()
}

/// The task payload for FIRST's function: args `({"model_params": ...},)`, no kwargs,
/// both serialized as JSONData.
pub fn task_payload(model_params: &Value) -> String {
    let args = json!([{ "model_params": model_params }]);
    pack_buffers(&[format!("11\n{args}"), "11\n{}".to_string()])
}

/// `model_params`: the OpenAI body with `openai_endpoint` and `api_port` added.
pub fn model_params(body: &[u8], upstream_path: &str, api_port: u16) -> Result<Value, String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let obj = v.as_object_mut().ok_or("the body is not a JSON object")?;
    let endpoint = upstream_path
        .trim_start_matches("/v1/")
        .trim_start_matches('/');
    obj.insert("openai_endpoint".into(), json!(endpoint));
    obj.insert("api_port".into(), json!(api_port));
    Ok(v)
}

/// What a task's `result` holds: JSONData (`11\n`), or a dill pickle of a plain value
/// (`00\n`/`01\n`, from endpoints before 3.6.0). Errors name the serializer.
pub fn decode_result(result: &str) -> Result<Bytes, String> {
    let header = result.get(..2).unwrap_or(result);
    let body = result
        .get(3..)
        .filter(|_| result.as_bytes().get(2) == Some(&b'\n'));
    let v = match (header, body) {
        ("11", Some(json_text)) => {
            serde_json::from_str(json_text).map_err(|e| format!("result is not JSON: {e}"))?
        }
        ("00" | "01", Some(b64)) => match pickled::decode(b64).map_err(|e| {
            format!(
                "result serialized with {} ({header}) holds {e}; only plain values (str, \
                 bytes, dict, list, numbers, None) are read: upgrade the endpoint to \
                 globus-compute-endpoint 3.6.0 or later so it honours result_serializers",
                pickled::serializer_name(header)
            )
        })? {
            Plain::Text(text) => Value::String(text),
            Plain::Json(v) => v,
        },
        _ => {
            return Err(format!(
                "result serialized with {} ({header:?}), not JSONData (11) or dill (00)",
                pickled::serializer_name(header)
            ))
        }
    };
    match v {
        // FIRST's function returns a JSON string holding the answer.
        Value::String(inner) => {
            serde_json::from_str::<Value>(&inner)
                .map_err(|e| format!("the function's string is not JSON: {e}"))?;
            Ok(Bytes::from(inner))
        }
        other => Ok(Bytes::from(other.to_string())),
    }
}

/// A task document's status, lower-cased (the SDK compares `status.lower()`).
fn task_status(doc: &Value) -> Option<String> {
    doc.get("status")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
}

/// The HTTP status FIRST's function reported in its exception (`status code: NNN`), and
/// the model server's own answer (`Response text: ...`).
pub fn failure_status(exception: &str) -> (Option<u16>, Option<String>) {
    let status = exception.find("status code: ").and_then(|i| {
        let digits: String = exception[i + 13..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits
            .parse::<u16>()
            .ok()
            .filter(|s| (100..600).contains(s))
    });
    let text = exception.find("Response text: ").map(|i| {
        let rest = &exception[i + 15..];
        let end = rest.find("\nResponse headers:").unwrap_or(rest.len());
        rest[..end].trim().to_string()
    });
    (status, text)
}

/// One attempt on a Globus Compute target.
pub(crate) async fn send(
    client: &awc::Client,
    shared: &GlobusShared,
    target: &Target,
    g: &GlobusComputeTarget,
    call: &Call,
    body: Bytes,
) -> Result<Committed, AttemptError> {
    let started = Instant::now();
    let deadline = started
        + target
            .spec
            .request_timeout
            .unwrap_or(shared.settings.task_timeout_secs.duration());
    let mut params = model_params(&body, call.upstream_path, g.api_port)
        .map_err(|e| AttemptError::Died(format!("cannot build model_params: {e}")))?;
    let callback = if call.stream {
        let (protocol, host, port) = shared
            .streaming
            .callback_base_url
            .as_ref()
            .and_then(|base| callback_parts(base.as_str()))
            .ok_or_else(|| {
                AttemptError::Connect(
                    "streaming through Globus Compute is off (streaming.callback_base_url)".into(),
                )
            })?;
        let id = Uuid::new_v4();
        let stream_token = new_token();
        if let Some(obj) = params.as_object_mut() {
            obj.insert("streaming_server_host".into(), json!(host));
            obj.insert("streaming_server_port".into(), json!(port));
            obj.insert("streaming_server_protocol".into(), json!(protocol));
            obj.insert("stream_task_id".into(), json!(id.to_string()));
            obj.insert("stream_task_token".into(), json!(stream_token));
        }
        // Registered before the submit: the first chunk may come back at once.
        let registered = shared.hub.register(id, &stream_token);
        if let Some((redis, log)) = &shared.redis {
            if let Err(e) = redis.announce(&id, &stream_token).await {
                // Callbacks reaching this replica still work; others will be refused.
                slog::warn!(log, "could not announce a stream in redis"; "error" => e);
            }
        }
        Some(registered)
    } else {
        None
    };
    let (token, client_id) = shared.token(client, &target.spec.cluster).await?;

    let Some(managers) = shared
        .endpoint_status(client, &token, &client_id, &g.endpoint_uuid)
        .await
    else {
        return Err(AttemptError::Connect(format!(
            "Globus Compute endpoint {} is not online",
            g.endpoint_uuid
        )));
    };
    if managers == 0 && shared.recently_submitted(&g.endpoint_uuid) {
        return Err(AttemptError::Starting(shared.retry_after));
    }

    let task_id = submit_task(
        client,
        shared,
        (&token, &client_id),
        &g.endpoint_uuid,
        &g.function_uuid,
        task_payload(&params),
    )
    .await?;
    shared.mark_submitted(&g.endpoint_uuid);
    let poll = TaskPoll::new(client, shared, &task_id, token, deadline);
    if let Some((registration, rx)) = callback {
        let task: TaskFuture = Box::pin(async move { poll.wait().await });
        return Ok(Committed::Callback(CallbackSource {
            rx,
            registration,
            task: Some(task),
            grace: None,
            grace_len: shared.streaming.done_grace_ms.duration(),
            pending: VecDeque::new(),
            ended: false,
        }));
    }
    let doc = poll.wait().await?;
    match task_status(&doc).as_deref() {
        Some("success") => {
            let result = doc.get("result").and_then(Value::as_str).ok_or_else(|| {
                AttemptError::Status5xx(502, "task succeeded without a result".into())
            })?;
            let body = decode_result(result).map_err(|e| {
                AttemptError::Status5xx(
                    502,
                    format!("Globus Compute endpoint {}: {e}", g.endpoint_uuid),
                )
            })?;
            Ok(Committed::Body(StatusCode::OK, body))
        }
        _ => {
            let text = failure_text(&doc);
            let (status, response_text) = failure_status(text);
            match status {
                Some(s) if (400..500).contains(&s) && s != 429 => {
                    let status = StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST);
                    let mut headers = HeaderMap::new();
                    headers.insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    Ok(Committed::ClientError(
                        status,
                        headers,
                        Bytes::from(response_text.unwrap_or_default()),
                    ))
                }
                Some(429) => Err(AttemptError::RateLimited(
                    None,
                    Bytes::from(response_text.unwrap_or_default()),
                )),
                other => Err(AttemptError::Status5xx(
                    other.unwrap_or(502),
                    format!("task {task_id} failed: {}", last_line(text)),
                )),
            }
        }
    }
}

fn failure_text(doc: &Value) -> &str {
    doc.get("exception")
        .or_else(|| doc.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or("task failed")
}

/// The last meaningful line of a traceback (for the log).
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("---"))
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// `(protocol, host, port)` of the callback base URL, as FIRST's function takes them.
pub fn callback_parts(base: &str) -> Option<(String, String, u16)> {
    let (protocol, rest) = base.trim().split_once("://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, if protocol == "https" { 443 } else { 80 }),
    };
    (!host.is_empty() && matches!(protocol, "http" | "https"))
        .then(|| (protocol.to_string(), host.to_string(), port))
}

/// Polls one task until it is `success` or `failed` (its document), or the deadline.
/// Submits one task (`payload`, packed buffers) of `function` to `endpoint`, asking for a
/// JSON result; returns its task id. `auth` is the token and the client id it belongs to.
async fn submit_task(
    client: &awc::Client,
    shared: &GlobusShared,
    auth: (&str, &str),
    endpoint: &str,
    function: &str,
    payload: String,
) -> Result<String, AttemptError> {
    let (token, client_id) = auth;
    let submit = json!({
        "create_queue": false,
        "tasks": { function: [payload] },
        "result_serializers": [JSON_SERIALIZER],
    });
    let url = shared.url(
        &shared.settings.compute_base,
        &format!("/v3/endpoints/{endpoint}/submit"),
    );
    let mut res = client
        .post(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(60))
        .send_json(&submit)
        .await
        .map_err(|e| AttemptError::Connect(format!("compute submit: {e}")))?;
    let answer = res.body().limit(BODY_LIMIT).await.unwrap_or_default();
    if !res.status().is_success() {
        if res.status() == StatusCode::UNAUTHORIZED || res.status() == StatusCode::FORBIDDEN {
            shared.forget_token(client_id);
        }
        return Err(AttemptError::Status5xx(
            502,
            format!("compute submit answered HTTP {}", res.status().as_u16()),
        ));
    }
    let answer: Value = serde_json::from_slice(&answer)
        .map_err(|_| AttemptError::Status5xx(502, "compute submit answered non-JSON".into()))?;
    answer
        .pointer(&format!("/tasks/{function}/0"))
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| AttemptError::Status5xx(502, "compute submit answered no task id".into()))
}

/// Runs a registered function that takes no arguments (FIRST's qstat function) on
/// `endpoint` with the cluster's credentials, and returns the JSON text it returned (a
/// returned string is unwrapped: FIRST's function returns `json.dumps(...)`). Errors are
/// one line for the log and `/status`.
pub async fn run_no_arg_function(
    client: &awc::Client,
    shared: &GlobusShared,
    cluster: &str,
    endpoint: &str,
    function: &str,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let describe = |e: AttemptError| match e {
        AttemptError::Timeout => format!("no result within {} s", timeout.as_secs()),
        AttemptError::Connect(m)
        | AttemptError::Broken(m)
        | AttemptError::Died(m)
        | AttemptError::Status5xx(_, m)
        | AttemptError::OutOfFds(m) => m,
        AttemptError::RateLimited(..) => "rate limited by the web service".into(),
        AttemptError::Starting(_) => "endpoint starting".into(),
    };
    let (token, client_id) = shared.token(client, cluster).await.map_err(describe)?;
    let no_args = pack_buffers(&["11\n[]".to_string(), "11\n{}".to_string()]);
    let task_id = submit_task(
        client,
        shared,
        (&token, &client_id),
        endpoint,
        function,
        no_args,
    )
    .await
    .map_err(describe)?;
    let doc = TaskPoll::new(client, shared, &task_id, token, deadline)
        .wait()
        .await
        .map_err(describe)?;
    if task_status(&doc).as_deref() != Some("success") {
        return Err(format!(
            "task {task_id} failed: {}",
            last_line(failure_text(&doc))
        ));
    }
    let result = doc
        .get("result")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("task {task_id} succeeded without a result"))?;
    let text = decode_result(result)?;
    String::from_utf8(text.to_vec()).map_err(|_| "the result is not UTF-8".to_string())
}

struct TaskPoll {
    client: awc::Client,
    url: String,
    token: String,
    initial: Duration,
    max: Duration,
    deadline: Instant,
}

impl TaskPoll {
    fn new(
        client: &awc::Client,
        shared: &GlobusShared,
        task_id: &str,
        token: String,
        deadline: Instant,
    ) -> TaskPoll {
        TaskPoll {
            client: client.clone(),
            url: shared.url(
                &shared.settings.compute_base,
                &format!("/v2/tasks/{task_id}"),
            ),
            token,
            initial: shared.settings.poll_initial_ms.duration(),
            max: shared.settings.poll_max_ms.duration(),
            deadline,
        }
    }

    async fn wait(self) -> Result<Value, AttemptError> {
        let mut pause = self.initial;
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return Err(AttemptError::Timeout);
            }
            actix_rt::time::sleep(pause.min(self.deadline - now)).await;
            pause = (pause * 2).min(self.max);
            let doc: Option<Value> = match self
                .client
                .get(self.url.as_str())
                .bearer_auth(&self.token)
                .timeout(Duration::from_secs(30))
                .send()
                .await
            {
                Ok(mut res) if res.status().is_success() => res
                    .body()
                    .limit(BODY_LIMIT)
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok()),
                // A poll that fails is retried until the deadline: the task still runs.
                _ => None,
            };
            if let Some(doc) = doc {
                // received, waiting-for-ep, waiting-for-nodes, running... are pending.
                if matches!(task_status(&doc).as_deref(), Some("success" | "failed")) {
                    return Ok(doc);
                }
            }
        }
    }
}

type TaskFuture = Pin<Box<dyn Future<Output = Result<Value, AttemptError>>>>;

/// The upstream of a streamed answer through Globus Compute: SSE bytes built from the
/// callbacks as they arrive (no polling), watched by the task's own poll so a function that
/// dies without calling back ends the stream. Wrapped in the usual `Relay`, which meters
/// it, times it out when idle, and turns an `Err` into an in-band error event.
pub(crate) struct CallbackSource {
    rx: mpsc::Receiver<StreamEvent>,
    registration: Registration,
    task: Option<TaskFuture>,
    grace: Option<Pin<Box<Sleep>>>,
    grace_len: Duration,
    pending: VecDeque<Result<Bytes, PayloadError>>,
    ended: bool,
}

impl CallbackSource {
    pub fn stream_id(&self) -> Uuid {
        self.registration.id()
    }
}

const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// FIRST's batches of raw lines into SSE events: `data: ` lines only, `[DONE]` dropped.
pub fn sse_from_lines(lines: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(lines.len() + 16);
    for line in lines.split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        if line.starts_with(b"data: ") && line != b"data: [DONE]" {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\n\n");
        }
    }
    Bytes::from(out)
}

/// The end of a stream whose function reported an error: a 4xx from the model server is
/// the client's (an error event, then `[DONE]`); anything else breaks the stream.
fn error_ending(text: &str) -> Vec<Result<Bytes, PayloadError>> {
    let (status, response_text) = failure_status(text);
    match status {
        Some(s) if (400..500).contains(&s) => {
            let message = response_text
                .as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .and_then(|v| {
                    v.pointer("/error/message")
                        .or_else(|| v.get("message"))
                        .or_else(|| v.get("detail"))
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .unwrap_or_else(|| format!("The model server answered HTTP {s}."));
            let body = envelope(&message, "invalid_request_error", None, "upstream_error");
            vec![
                Ok(Bytes::from(format!("data: {body}\n\n"))),
                Ok(Bytes::from_static(DONE_EVENT)),
            ]
        }
        _ => vec![Err(PayloadError::Incomplete(None))],
    }
}

impl Stream for CallbackSource {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(StreamEvent::Data(lines))) => {
                    let out = sse_from_lines(&lines);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                    continue;
                }
                Poll::Ready(Some(StreamEvent::Done)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Ok(Bytes::from_static(DONE_EVENT))));
                }
                Poll::Ready(Some(StreamEvent::Error(text))) => {
                    this.ended = true;
                    this.pending.extend(error_ending(&text));
                    continue;
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    continue;
                }
                Poll::Pending => {}
            }
            if let Some(task) = this.task.as_mut() {
                if let Poll::Ready(outcome) = task.as_mut().poll(cx) {
                    this.task = None;
                    let failed = match &outcome {
                        Ok(doc) if task_status(doc).as_deref() == Some("success") => {
                            // FIRST's streaming function returns {"status":"completed"|"error",...}.
                            doc.get("result")
                                .and_then(Value::as_str)
                                .and_then(|r| decode_result(r).ok())
                                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                                .and_then(|v| {
                                    v.get("status").and_then(Value::as_str).map(String::from)
                                })
                                .is_some_and(|s| s == "error")
                                .then(|| "the function reported a streaming error".to_string())
                        }
                        Ok(doc) => Some(failure_text(doc).to_string()),
                        Err(_) => Some("task timed out".to_string()),
                    };
                    match failed {
                        // Callbacks may still be in flight: wait a little for `done`.
                        None => {
                            this.grace = Some(Box::pin(tokio::time::sleep(this.grace_len)));
                        }
                        Some(text) => {
                            this.ended = true;
                            this.pending.extend(error_ending(&text));
                        }
                    }
                    continue;
                }
            }
            if let Some(grace) = this.grace.as_mut() {
                if grace.as_mut().poll(cx).is_ready() {
                    this.grace = None;
                    this.ended = true;
                    return Poll::Ready(Some(Ok(Bytes::from_static(DONE_EVENT))));
                }
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_matches_the_sdk_packing() {
        // The example in HPC-WIRE.md §1.3, computed with json.dumps + pack_buffers.
        let params = json!({"openai_endpoint": "chat/completions", "model": "m",
            "messages": [{"role": "user", "content": "hi"}], "api_port": 8000});
        let args = format!("11\n{}", json!([{ "model_params": params }]));
        let packed = pack_buffers(&[args.clone(), "11\n{}".into()]);
        assert_eq!(
            packed,
            format!("{}\n{args}5\n11\n{{}}", args.chars().count())
        );
        assert_eq!(task_payload(&params), packed);
        // Characters, not bytes.
        assert_eq!(pack_buffers(&["11\n\"é\"".into()]), "6\n11\n\"é\"");
    }

    #[test]
    fn model_params_add_endpoint_and_port_and_keep_fields() {
        let v = model_params(
            br#"{"model":"m","stream":false,"x":1}"#,
            "/v1/chat/completions",
            8001,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"model":"m","stream":false,"x":1,"openai_endpoint":"chat/completions","api_port":8001})
        );
        assert!(model_params(b"[1]", "/v1/embeddings", 1).is_err());
    }

    #[test]
    fn results_decode_firsts_json_string_and_refuse_what_is_not_plain() {
        let inner = r#"{"id": "x", "choices": [], "response_time": 0.5}"#;
        let result = format!("11\n{}", serde_json::to_string(inner).unwrap());
        assert_eq!(decode_result(&result).unwrap(), Bytes::from(inner));
        assert_eq!(
            decode_result("11\n{\"a\":1}").unwrap(),
            Bytes::from("{\"a\":1}")
        );
        let err = decode_result("00\ngASVAAA=\n").unwrap_err();
        assert!(err.contains("DillDataBase64 (00)"), "{err}");
        let err = decode_result("04\nabc").unwrap_err();
        assert!(err.contains("DillCodeSource"), "{err}");
        assert!(decode_result("11\n\"not json\"").is_err());
    }

    #[test]
    fn callback_parts_like_firsts_function_wants_them() {
        assert_eq!(
            callback_parts("https://gw.example.org"),
            Some(("https".into(), "gw.example.org".into(), 443))
        );
        assert_eq!(
            callback_parts("http://127.0.0.1:8123/"),
            Some(("http".into(), "127.0.0.1".into(), 8123))
        );
        assert_eq!(callback_parts(""), None);
        assert_eq!(callback_parts("ftp://h"), None);
    }

    #[test]
    fn sse_lines_become_events_without_done() {
        assert_eq!(
            sse_from_lines(b"data: {\"a\":1}\n\ndata: {\"b\":2}\ndata: [DONE]\n: comment"),
            Bytes::from("data: {\"a\":1}\n\ndata: {\"b\":2}\n\n")
        );
    }

    #[test]
    fn failure_status_from_firsts_exception_text() {
        let exc = "Traceback (most recent call last):\n  ...\nException: Unexpected error of type Exception: API request failed with status code: 400\nResponse text: {\"error\":{\"message\":\"bad\"}}\nResponse headers: {}\nResponse time: 0.1";
        assert_eq!(
            failure_status(exc),
            (Some(400), Some("{\"error\":{\"message\":\"bad\"}}".into()))
        );
        assert_eq!(failure_status("WorkerLost: Task failure"), (None, None));
    }
}
