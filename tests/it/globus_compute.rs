//! The Globus Compute transport against a fake Globus Auth + Compute web service on
//! 127.0.0.1:0 with the documented routes (HPC-WIRE.md §1): client-credentials token,
//! endpoint status, v3 submit, v2 task polling. The fake plays FIRST's remote function:
//! it decodes the JSONData task payload and answers with a JSON string result.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use inference_gateway::config::{nz, HttpUrl, Millis, Seconds};
use serde_json::{json, Value};

const EP_A: &str = "11111111-1111-4111-8111-111111111111";
const EP_B: &str = "22222222-2222-4222-8222-222222222222";
const FUNC: &str = "33333333-3333-4333-8333-333333333333";
/// FIRST's qstat function and the login-node endpoint it runs on.
const QSTAT_EP: &str = "55555555-5555-4555-8555-555555555555";
const QSTAT_FUNC: &str = "66666666-6666-4666-8666-666666666666";
const CLIENT_ID: &str = "gateway-client";
const CLIENT_SECRET: &str = "gateway-secret-do-not-log";

#[derive(Default)]
struct FakeState {
    /// endpoint id -> (status, managers)
    endpoints: HashMap<String, (String, u64)>,
    tokens_issued: usize,
    submits: Vec<Value>,
    /// task id -> (polls so far, final doc)
    tasks: HashMap<String, (usize, Value)>,
    polls: usize,
    /// Where the fake function sends its callbacks (the gateway under test).
    gateway_url: Option<String>,
    /// Statuses the gateway answered the function's callbacks with, in order.
    callback_statuses: Vec<(String, u16)>,
}

struct FakeCompute {
    url: String,
    state: Arc<Mutex<FakeState>>,
    handle: actix_web::dev::ServerHandle,
}

/// `unpack_buffers`: "{len}\n{buffer}" repeated, len in characters.
fn unpack(mut s: &str) -> Vec<String> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (len, rest) = s.split_once('\n').unwrap();
        let len: usize = len.parse().unwrap();
        let end = rest.char_indices().nth(len).map_or(rest.len(), |(i, _)| i);
        out.push(rest[..end].to_string());
        s = &rest[end..];
    }
    out
}

/// What FIRST's function would do with `model_params`: a JSON string result, or a failure
/// traceback carrying the model server's status.
fn run_function(params: &Value) -> Value {
    let model = params["model"].as_str().unwrap_or("");
    let fail = |code: u16, text: &str| {
        json!({"status": "failed", "completion_t": "1773080793.43", "exception": format!(
            "+++\nTraceback (most recent call last):\n  File \"function.py\", line 40\nException: Unexpected error of type Exception: API request failed with status code: {code}\nResponse text: {text}\nResponse headers: {{}}\nResponse time: 0.01\n---")})
    };
    match model {
        "fail-400" => fail(
            400,
            r#"{"error":{"message":"max_tokens is too large","type":"BadRequestError","param":null,"code":400}}"#,
        ),
        "fail-500" => fail(500, "Internal Server Error"),
        "hang" => json!({"status": "running"}),
        // Endpoints before 3.6.0 ignore result_serializers and answer with dill (made by
        // tests/data/globus-compute/make_results.py with the SDK's DillDataBase64).
        "old-endpoint-str" => old_endpoint("result-dill-str.txt"),
        "old-endpoint-dict" => old_endpoint("result-dill5-dict.txt"),
        "old-endpoint-datetime" => old_endpoint("result-dill-datetime.txt"),
        // Status strings in another case (the SDK lower-cases them).
        "status-caps" => json!({"status": "SUCCESS", "completion_t": "1773080793.43",
            "result": format!("11\n{}", serde_json::to_string(&answer_text()).unwrap())}),
        _ => {
            let answer = json!({"id": "chatcmpl-gc", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!(
                    "via {} on port {}", params["openai_endpoint"], params["api_port"])},
                    "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
                "response_time": 0.1, "throughput_tokens_per_second": 80.0});
            let as_string = serde_json::to_string(&answer).unwrap();
            json!({"status": "success", "completion_t": "1773080793.43",
                "result": format!("11\n{}", serde_json::to_string(&as_string).unwrap())})
        }
    }
}

const ANSWER: &str = include_str!("../data/globus-compute/answer.json");

fn answer_text() -> String {
    ANSWER.trim_end().to_string()
}

fn old_endpoint(fixture: &str) -> Value {
    let result = std::fs::read_to_string(format!(
        "{}/tests/data/globus-compute/{fixture}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    json!({"status": "success", "completion_t": "1773080793.43", "result": result,
        "details": {"os": "Linux-5.14.21-150400.24.18-default-x86_64-with-glibc2.31",
            "python_version": "3.11.7", "dill_version": "0.3.6", "globus_compute_sdk_version": "2.19.0"}})
}

fn bearer_ok(req: &HttpRequest) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some("Bearer compute-token-1")
}

async fn token(
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<Arc<Mutex<FakeState>>>,
) -> HttpResponse {
    use base64_like::encode;
    let expected = format!("Basic {}", encode(&format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(expected.as_str())
        || form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("scope").map(String::as_str)
            != Some("https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all")
    {
        return HttpResponse::Unauthorized().json(json!({"error": "invalid_client"}));
    }
    state.lock().unwrap().tokens_issued += 1;
    HttpResponse::Ok().json(json!({"access_token": "compute-token-1",
        "scope": "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all",
        "expires_in": 172800, "token_type": "Bearer", "resource_server": "funcx_service",
        "other_tokens": []}))
}

async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<Arc<Mutex<FakeState>>>,
) -> HttpResponse {
    if !bearer_ok(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    let s = state.lock().unwrap();
    let (status, managers) = s
        .endpoints
        .get(path.as_str())
        .cloned()
        .unwrap_or(("offline".into(), 0));
    HttpResponse::Ok().json(json!({"status": status, "details": {"total_workers": 1,
        "idle_workers": 0, "pending_tasks": 0, "outstanding_tasks": 0, "managers": managers}}))
}

async fn submit(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Value>,
    state: web::Data<Arc<Mutex<FakeState>>>,
) -> HttpResponse {
    if !bearer_ok(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    let state = state.get_ref().clone();
    let mut s = state.lock().unwrap();
    s.submits.push(body.0.clone());
    if let Some(payloads) = body["tasks"][QSTAT_FUNC].as_array() {
        // FIRST's qstat function: no arguments, returns json.dumps(jobs, indent=4).
        assert_eq!(
            path.as_str(),
            QSTAT_EP,
            "qstat runs on the cluster's qstat endpoint"
        );
        assert_eq!(
            unpack(payloads[0].as_str().unwrap()),
            vec!["11\n[]".to_string(), "11\n{}".to_string()]
        );
        let text = std::fs::read_to_string(format!(
            "{}/tests/data/globus-compute/qstat-result.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let id = format!("task-{}", s.tasks.len() + 1);
        let result = format!("11\n{}", serde_json::to_string(&text).unwrap());
        s.tasks.insert(
            id.clone(),
            (
                0,
                json!({"status": "success", "completion_t": "1773080793.43", "result": result}),
            ),
        );
        return HttpResponse::Ok().json(
            json!({"request_id": "5158de19-10b5-4deb-9d87-a86c1dec3461",
            "task_group_id": "44444444-4444-4444-8444-444444444445", "endpoint_id": path.as_str(),
            "tasks": {QSTAT_FUNC: [id]}}),
        );
    }
    let payloads = body["tasks"][FUNC].as_array().cloned().unwrap_or_default();
    let mut ids = Vec::new();
    for p in payloads {
        let buffers = unpack(p.as_str().unwrap());
        let args: Value = serde_json::from_str(buffers[0].strip_prefix("11\n").unwrap()).unwrap();
        let params = args[0]["model_params"].clone();
        let id = format!("task-{}", s.tasks.len() + 1);
        if params["stream"] == true {
            s.tasks
                .insert(id.clone(), (0, json!({"status": "running"})));
            if params["model"] != "stream-manual" {
                let gateway = s.gateway_url.clone().unwrap();
                actix_rt::spawn(stream_function(
                    Arc::clone(&state),
                    id.clone(),
                    gateway,
                    params,
                ));
            }
        } else {
            s.tasks.insert(id.clone(), (0, run_function(&params)));
        }
        ids.push(id);
    }
    HttpResponse::Ok().json(json!({"request_id": "5158de19-10b5-4deb-9d87-a86c1dec3460",
        "task_group_id": "44444444-4444-4444-8444-444444444444", "endpoint_id": path.as_str(),
        "tasks": {FUNC: ids}}))
}

async fn task(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<Arc<Mutex<FakeState>>>,
) -> HttpResponse {
    if !bearer_ok(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    let mut s = state.lock().unwrap();
    s.polls += 1;
    let Some((polls, done)) = s.tasks.get_mut(path.as_str()) else {
        return HttpResponse::NotFound().finish();
    };
    *polls += 1;
    // The first poll sees the task waiting for the endpoint, as real ones do.
    let mut doc = if *polls == 1 {
        json!({"status": "waiting-for-ep"})
    } else {
        done.clone()
    };
    doc["task_id"] = json!(path.as_str());
    HttpResponse::Ok().json(doc)
}

pub const STREAM_SECRET: &str = "stream-secret-for-tests";

/// POSTs one callback as FIRST's function does; returns the gateway's status.
async fn post_callback(gateway: &str, kind: &str, secret: &str, token: &str, body: &Value) -> u16 {
    awc::Client::new()
        .post(format!("{gateway}/resource_server/api/streaming/{kind}/"))
        .insert_header(("X-Internal-Secret", secret))
        .insert_header(("X-Stream-Task-Token", token))
        .send_json(body)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// FIRST's streaming function, faked: batches of `data: ` lines, then done (or error),
/// then the task's own result.
async fn stream_function(
    state: Arc<Mutex<FakeState>>,
    task: String,
    gateway: String,
    params: Value,
) {
    let id = params["stream_task_id"].as_str().unwrap().to_string();
    let token = params["stream_task_token"].as_str().unwrap().to_string();
    let model = params["model"].as_str().unwrap().to_string();
    let mut statuses = Vec::new();
    // A forged token first: refused.
    statuses.push((
        "forged".to_string(),
        post_callback(
            &gateway,
            "data",
            STREAM_SECRET,
            "forged-token",
            &json!({"task_id": id, "type": "data", "data": "data: {\"forged\":true}"}),
        )
        .await,
    ));
    let chunk = |n: usize| {
        format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{n}\"}}}}]}}")
    };
    let result = if model == "stream-error" {
        statuses.push((
            "data".into(),
            post_callback(
                &gateway,
                "data",
                STREAM_SECRET,
                &token,
                &json!({"task_id": id, "type": "data", "data": chunk(0)}),
            )
            .await,
        ));
        statuses.push(("error".into(), post_callback(&gateway, "error", STREAM_SECRET, &token,
            &json!({"task_id": id, "type": "error", "error": "API request failed with status code: 400\nResponse text: {\"error\":{\"message\":\"context too long\"}}\nResponse headers: {}"})).await));
        "error"
    } else if model == "stream-dies" {
        "dies"
    } else {
        for batch in [vec![0, 1], vec![2]] {
            let data = batch
                .iter()
                .map(|n| chunk(*n))
                .collect::<Vec<_>>()
                .join("\n");
            statuses.push((
                "data".into(),
                post_callback(
                    &gateway,
                    "data",
                    STREAM_SECRET,
                    &token,
                    &json!({"task_id": id, "type": "data", "data": data}),
                )
                .await,
            ));
        }
        statuses.push((
            "done".into(),
            post_callback(
                &gateway,
                "done",
                STREAM_SECRET,
                &token,
                &json!({"task_id": id, "type": "done"}),
            )
            .await,
        ));
        "completed"
    };
    let doc = if result == "dies" {
        json!({"status": "failed", "exception": "WorkerLost: Task failure due to loss of worker 0"})
    } else {
        let inner = json!({"streaming": true, "task_id": id, "status": result}).to_string();
        json!({"status": "success", "result": format!("11\n{}", serde_json::to_string(&inner).unwrap())})
    };
    let mut s = state.lock().unwrap();
    s.callback_statuses.extend(statuses);
    s.tasks.insert(task, (1, doc));
}

/// Base64 for the Basic header check (standard alphabet, with padding).
mod base64_like {
    pub fn encode(s: &str) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = (chunk[0] as u32) << 16
                | (*chunk.get(1).unwrap_or(&0) as u32) << 8
                | *chunk.get(2).unwrap_or(&0) as u32;
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
}

impl FakeCompute {
    async fn start(endpoints: &[(&str, &str, u64)]) -> FakeCompute {
        let mut state = FakeState::default();
        for (id, status, managers) in endpoints {
            state
                .endpoints
                .insert(id.to_string(), (status.to_string(), *managers));
        }
        let state = Arc::new(Mutex::new(state));
        let data = web::Data::new(Arc::clone(&state));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v2/oauth2/token", web::post().to(token))
                .route("/v2/endpoints/{id}/status", web::get().to(status))
                .route("/v3/endpoints/{id}/submit", web::post().to(submit))
                .route("/v2/tasks/{id}", web::get().to(task))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        FakeCompute {
            url: format!("http://{addr}"),
            state,
            handle,
        }
    }
}

fn gc_target(slug: &str, model: &str, endpoint: &str, port: u16) -> Value {
    json!({"model": "resource_server.endpoint", "pk": 1, "fields": {
        "endpoint_slug": slug, "cluster": "sophia", "framework": "vllm", "model": model,
        "api_port": port, "endpoint_uuid": endpoint, "function_uuid": FUNC,
        "transport": "globus-compute"}})
}

/// A gateway whose Globus Compute settings point at `fake`; the credentials sit in
/// environment variables named for this test.
fn gateway(fake: &FakeCompute, endpoints: &[Value], test: &str) -> TestApp {
    let id_var = format!("IGW_TEST_GC_ID_{test}");
    let secret_var = format!("IGW_TEST_GC_SECRET_{test}");
    std::env::set_var(&id_var, CLIENT_ID);
    std::env::set_var(&secret_var, CLIENT_SECRET);
    let url: HttpUrl = fake.url.parse().unwrap();
    TestApp::builder().endpoints(endpoints).settings(move |s| {
        let gc = &mut s.globus_compute;
        gc.auth_base = url.clone();
        gc.compute_base = url;
        gc.client_id_env = id_var;
        gc.client_secret_env = secret_var;
        gc.poll_initial_ms = Millis::new(nz(5));
        gc.poll_max_ms = Millis::new(nz(20));
    })
}

#[actix_rt::test]
async fn submit_poll_and_json_result_end_to_end() {
    let fake = FakeCompute::start(&[(EP_A, "online", 1)]).await;
    let gw = gateway(&fake, &[gc_target("sophia-gc", "llama", EP_A, 8001)], "ok")
        .start()
        .await;
    for _ in 0..2 {
        let (status, headers, body) = gw.post("/v1/chat/completions", &chat("llama")).await;
        assert_eq!(status, 200, "{body}");
        assert!(headers.get("x-request-id").is_some());
        assert_eq!(body["id"], "chatcmpl-gc");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "via \"chat/completions\" on port 8001"
        );
        assert_eq!(
            body["response_time"], 0.1,
            "FIRST's extra fields pass through"
        );
    }
    let s = std::mem::take(&mut *fake.state.lock().unwrap());
    assert_eq!(s.tokens_issued, 1, "the token is cached");
    assert_eq!(s.submits.len(), 2);
    let submit = &s.submits[0];
    assert_eq!(submit["create_queue"], false);
    assert_eq!(
        submit["result_serializers"],
        json!(["globus_compute_sdk.serialize.concretes.JSONData"])
    );
    let buffers = unpack(submit["tasks"][FUNC][0].as_str().unwrap());
    assert_eq!(buffers.len(), 2);
    assert_eq!(buffers[1], "11\n{}");
    let args: Value = serde_json::from_str(buffers[0].strip_prefix("11\n").unwrap()).unwrap();
    assert_eq!(
        args,
        json!([{"model_params": {"model": "llama",
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "openai_endpoint": "chat/completions", "api_port": 8001}}])
    );
    assert!(s.polls >= 4, "each task was polled until done");
    gw.stop().await;
    fake.handle.stop(false).await;
}

#[actix_rt::test]
async fn task_failures_map_to_openai_errors_and_fail_over() {
    let fake = FakeCompute::start(&[(EP_A, "online", 1), (EP_B, "online", 1)]).await;
    let backup = MockUpstream::start(Behavior::default()).await.unwrap();
    let gw = gateway(
        &fake,
        &[gc_target("gc-400", "fail-400", EP_A, 8000)],
        "fail",
    )
    .start()
    .await;
    // The model server said 400: the client's fault, its envelope passes through.
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("fail-400")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error":{"message":"max_tokens is too large","type":"BadRequestError","param":null,"code":400}})
    );
    gw.stop().await;

    // A 500 inside the task fails over to the next target.
    let endpoints = [
        gc_target("gc-500", "fail-500", EP_A, 8000),
        json!({"model": "resource_server.endpoint", "pk": 9, "fields": {
            "endpoint_slug": "http-backup", "cluster": "local", "framework": "vllm",
            "model": "fail-500", "base_url": backup.url()}}),
    ];
    let gw = gateway(&fake, &endpoints, "failover").start().await;
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("fail-500")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(backup.request_count(), 1);
    let gc = gw.target_state("gc-500").await;
    assert_eq!(gc["failures"], 1, "{gc}");
    gw.stop().await;

    // Only the failing task: 502, nothing internal in the body.
    let gw = gateway(
        &fake,
        &[gc_target("gc-500", "fail-500", EP_A, 8000)],
        "only500",
    )
    .start()
    .await;
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("fail-500")).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], "upstream_error");
    assert!(!body.to_string().contains("Traceback"));
    gw.stop().await;
    fake.handle.stop(false).await;
}

/// Endpoints before globus-compute 3.6.0 answer with dill whatever the submit asked: plain
/// values are decoded, anything else is refused naming the endpoint and the serializer.
#[actix_rt::test]
async fn old_endpoints_answer_with_dill_and_plain_values_decode() {
    let fake = FakeCompute::start(&[(EP_A, "online", 1)]).await;
    let endpoints = [
        gc_target("gc-str", "old-endpoint-str", EP_A, 8000),
        gc_target("gc-dict", "old-endpoint-dict", EP_A, 8000),
        gc_target("gc-dt", "old-endpoint-datetime", EP_A, 8000),
        gc_target("gc-caps", "status-caps", EP_A, 8000),
    ];
    let gw = gateway(&fake, &endpoints, "dill")
        .settings(|s| s.globus_compute.task_timeout_secs = Seconds::new(nz(3)))
        .start()
        .await;
    let expected: Value = serde_json::from_str(ANSWER).unwrap();
    for model in ["old-endpoint-str", "old-endpoint-dict", "status-caps"] {
        let (status, _, body) = gw.post("/v1/chat/completions", &chat(model)).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body, expected, "{model}");
    }
    let (status, _, body) = gw
        .post("/v1/chat/completions", &chat("old-endpoint-datetime"))
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.to_string().contains("dill"), "{body}");
    let mut state = gw.target_state("gc-dt").await;
    for _ in 0..100 {
        if !state["last_error"].is_null() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
        state = gw.target_state("gc-dt").await;
    }
    let error = state["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(EP_A) && error.contains("DillDataBase64 (00)"),
        "the refusal names the endpoint and its serializer: {state}"
    );
    gw.stop().await;
    fake.handle.stop(false).await;
}

#[actix_rt::test]
async fn offline_endpoints_fail_over_and_slow_tasks_are_504() {
    let fake = FakeCompute::start(&[(EP_A, "offline", 0), (EP_B, "online", 1)]).await;
    let endpoints = [
        gc_target("gc-offline", "llama", EP_A, 8000),
        gc_target("gc-online", "llama", EP_B, 8000),
    ];
    let gw = gateway(&fake, &endpoints, "offline").start().await;
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("llama")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        fake.state.lock().unwrap().submits.len(),
        1,
        "nothing sent to the offline one"
    );
    gw.stop().await;

    let gw = gateway(&fake, &[gc_target("gc-hang", "hang", EP_B, 8000)], "hang")
        .settings(|s| s.globus_compute.task_timeout_secs = Seconds::new(nz(1)))
        .start()
        .await;
    let started = Instant::now();
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("hang")).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    gw.stop().await;
    fake.handle.stop(false).await;
}

#[actix_rt::test]
async fn an_endpoint_without_managers_after_a_submit_is_starting() {
    let fake = FakeCompute::start(&[(EP_A, "online", 0)]).await;
    let gw = gateway(&fake, &[gc_target("gc-cold", "llama", EP_A, 8000)], "cold")
        .settings(|s| s.cold_start.retry_after_secs = Seconds::new(nz(17)))
        .start()
        .await;
    // No managers and nothing submitted yet: submitting is what starts the workers.
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("llama")).await;
    assert_eq!(status, 200, "{body}");
    // Still no managers right after a submit: the endpoint is starting.
    let (status, headers, body) = gw.post("/v1/chat/completions", &chat("llama")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers.get("retry-after").unwrap(), "17");
    assert_eq!(body["error"]["code"], "model_starting");
    let s = std::mem::take(&mut *fake.state.lock().unwrap());
    assert_eq!(s.submits.len(), 1);
    assert_eq!(s.tokens_issued, 1);
    gw.stop().await;
    fake.handle.stop(false).await;
}

/// A gateway streaming through the fake, with the fake's function calling back to it.
async fn streaming_gateway(fake: &FakeCompute, model: &str, test: &str) -> TestGateway {
    let gw = streaming_app(fake, model, test).start().await;
    fake.state.lock().unwrap().gateway_url = Some(gw.url.clone());
    gw
}

/// [`gateway`] with streaming through Globus Compute on (the secret in an environment
/// variable named for this test).
fn streaming_app(fake: &FakeCompute, model: &str, test: &str) -> TestApp {
    std::env::set_var(format!("IGW_TEST_STREAM_SECRET_{test}"), STREAM_SECRET);
    let secret_env = format!("IGW_TEST_STREAM_SECRET_{test}");
    gateway(fake, &[gc_target("gc-stream", model, EP_A, 8002)], test).settings(move |s| {
        s.streaming.callback_base_url = Some("https://gateway.example.org:8443".parse().unwrap());
        s.streaming.secret_env = secret_env;
        s.streaming.done_grace_ms = Millis::new(200);
    })
}

/// The fake function's callback statuses, once it recorded `n` of them (it does so after
/// its last callback, which may be after the client read the end of the stream).
async fn callback_statuses(fake: &FakeCompute, n: usize) -> Vec<(String, u16)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        {
            let mut s = fake.state.lock().unwrap();
            if s.callback_statuses.len() >= n {
                return std::mem::take(&mut s.callback_statuses);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the fake function never finished"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `REDIS_TEST_URL` when it is set and Redis answers; else says why the test did not run.
async fn redis_for_tests(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("REDIS_TEST_URL") else {
        eprintln!("SKIPPED {test}: REDIS_TEST_URL is not set; this Redis test did not run");
        return None;
    };
    let probe = inference_gateway::streaming_redis::RedisStreams::new(&url, "igw-probe:").ok()?;
    match actix_rt::time::timeout(Duration::from_secs(3), probe.ping()).await {
        Ok(Ok(())) => Some(url),
        other => {
            eprintln!("SKIPPED {test}: Redis at REDIS_TEST_URL does not answer ({other:?}); this Redis test did not run");
            None
        }
    }
}

/// Two replicas sharing Redis under a prefix unique to this test.
async fn two_replicas(
    fake: &FakeCompute,
    model: &str,
    test: &str,
    url: &str,
) -> (TestGateway, TestGateway) {
    let prefix = format!("igw-test-{}:", uuid::Uuid::new_v4().simple());
    let replica = |name: String| {
        let (url, prefix) = (url.to_string(), prefix.clone());
        streaming_app(fake, model, &name).settings(move |s| {
            s.redis.url = url;
            s.redis.key_prefix = prefix;
        })
    };
    let a = replica(format!("{test}_a")).start().await;
    let b = replica(format!("{test}_b")).start().await;
    // Let both subscribers connect.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    (a, b)
}

async fn stream_chat(gw: &TestGateway, model: &str) -> (u16, String, Vec<String>) {
    let mut body = chat(model);
    body["stream"] = json!(true);
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .send_json(&body)
        .await
        .unwrap();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = res.body().limit(1 << 20).await.unwrap();
    (res.status().as_u16(), content_type, sse_data(&bytes))
}

#[actix_rt::test]
async fn streaming_round_trip_through_the_callback_routes() {
    let fake = FakeCompute::start(&[(EP_A, "online", 1)]).await;
    let gw = streaming_gateway(&fake, "llama", "stream_ok").await;
    let (status, content_type, events) = stream_chat(&gw, "llama").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/event-stream");
    assert_eq!(events.len(), 4, "{events:?}");
    for (i, e) in events[..3].iter().enumerate() {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["choices"][0]["delta"]["content"], format!("tok{i}"));
    }
    assert_eq!(events[3], "[DONE]");
    // The function got the callback address and its credentials in model_params.
    let statuses = callback_statuses(&fake, 4).await;
    let s = std::mem::take(&mut *fake.state.lock().unwrap());
    let buffers = unpack(s.submits[0]["tasks"][FUNC][0].as_str().unwrap());
    let args: Value = serde_json::from_str(buffers[0].strip_prefix("11\n").unwrap()).unwrap();
    let p = &args[0]["model_params"];
    assert_eq!(p["stream"], true);
    assert_eq!(p["streaming_server_host"], "gateway.example.org");
    assert_eq!(p["streaming_server_port"], 8443);
    assert_eq!(p["streaming_server_protocol"], "https");
    assert!(uuid::Uuid::parse_str(p["stream_task_id"].as_str().unwrap()).is_ok());
    assert_eq!(p["stream_task_token"].as_str().unwrap().len(), 64);
    assert_eq!(
        statuses,
        vec![
            ("forged".to_string(), 403),
            ("data".to_string(), 200),
            ("data".to_string(), 200),
            ("done".to_string(), 200)
        ]
    );
    gw.stop().await;
    fake.handle.stop(false).await;
}

#[actix_rt::test]
async fn streaming_errors_end_the_stream_in_band() {
    let fake = FakeCompute::start(&[(EP_A, "online", 1)]).await;
    let gw = streaming_gateway(&fake, "stream-error", "stream_err").await;
    let (status, _, events) = stream_chat(&gw, "stream-error").await;
    assert_eq!(status, 200);
    assert_eq!(events.len(), 3, "{events:?}");
    let err: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(err["error"]["message"], "context too long");
    assert_eq!(events[2], "[DONE]");
    gw.stop().await;

    // The function dies without calling back: the task's failure ends the stream.
    let gw = streaming_gateway(&fake, "stream-dies", "stream_dies").await;
    let (status, _, events) = stream_chat(&gw, "stream-dies").await;
    assert_eq!(status, 200);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted", "{events:?}");
    assert_eq!(gw.target_state("gc-stream").await["failures"], 1);
    gw.stop().await;
    fake.handle.stop(false).await;
}

#[actix_rt::test]
async fn callback_routes_check_size_secret_token_and_ids() {
    let fake = FakeCompute::start(&[(EP_A, "online", 1)]).await;
    let gw = streaming_gateway(&fake, "llama", "cb_checks").await;
    let id = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(&str, &str, &str, Value, u16, &str)> = vec![
        (
            "data",
            "wrong-secret",
            "t",
            json!({"task_id": id, "data": "data: x"}),
            401,
            "invalid_api_key",
        ),
        (
            "data",
            STREAM_SECRET,
            "",
            json!({"task_id": id, "data": "data: x"}),
            401,
            "invalid_api_key",
        ),
        (
            "data",
            STREAM_SECRET,
            "t",
            json!({"data": "data: x"}),
            400,
            "invalid_request",
        ),
        (
            "data",
            STREAM_SECRET,
            "t",
            json!({"task_id": "not-a-uuid", "data": "x"}),
            403,
            "forbidden",
        ),
        (
            "data",
            STREAM_SECRET,
            "t",
            json!({"task_id": id}),
            400,
            "invalid_request",
        ),
        (
            "error",
            STREAM_SECRET,
            "t",
            json!({"task_id": id}),
            400,
            "invalid_request",
        ),
        (
            "done",
            STREAM_SECRET,
            "t",
            json!({"task_id": id}),
            403,
            "forbidden",
        ),
        (
            "done",
            STREAM_SECRET,
            "t",
            json!({"task_id": id, "pad": "x".repeat(20_000)}),
            413,
            "payload_too_large",
        ),
    ];
    for (kind, secret, token, body, status, code) in cases {
        let mut req = gw
            .client()
            .post(gw.at(&format!("/resource_server/api/streaming/{kind}/")))
            .insert_header(("X-Internal-Secret", secret));
        if !token.is_empty() {
            req = req.insert_header(("X-Stream-Task-Token", token));
        }
        let mut res = req.send_json(&body).await.unwrap();
        let v: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
        assert_eq!(res.status().as_u16(), status, "{kind} {body}: {v}");
        assert_eq!(v["error"]["code"], code, "{kind}: {v}");
    }
    let mut res = gw
        .client()
        .post(gw.at("/resource_server/api/streaming/data"))
        .insert_header(("X-Internal-Secret", STREAM_SECRET))
        .insert_header(("X-Stream-Task-Token", "t"))
        .insert_header(("content-type", "application/json"))
        .send_body("{not json")
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "invalid_json");
    gw.stop().await;
    fake.handle.stop(false).await;
}

#[actix_rt::test]
async fn streaming_callbacks_reach_the_client_across_replicas_through_redis() {
    let Some(url) =
        redis_for_tests("streaming_callbacks_reach_the_client_across_replicas_through_redis").await
    else {
        return;
    };
    let fake = FakeCompute::start(&[(EP_A, "online", 1)]).await;
    let (a, b) = two_replicas(&fake, "llama", "redis_rt", &url).await;
    // The client is on replica A; the function calls back to replica B.
    fake.state.lock().unwrap().gateway_url = Some(b.url.clone());
    let (status, _, events) = stream_chat(&a, "llama").await;
    assert_eq!(status, 200);
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[3], "[DONE]");
    let statuses = callback_statuses(&fake, 4).await;
    assert_eq!(
        statuses[0],
        ("forged".to_string(), 403),
        "the token is checked on B too"
    );
    assert!(statuses[1..].iter().all(|(_, s)| *s == 200), "{statuses:?}");
    a.stop().await;
    b.stop().await;
    fake.handle.stop(false).await;
}

/// Callback latency: from just before a data callback is POSTed to the moment its chunk
/// is read by the client, on one replica and across two replicas through Redis.
/// Run: `cargo test --release --test globus_compute -- --ignored --nocapture callback_latency`
#[actix_rt::test]
#[ignore]
async fn callback_latency() {
    let iterations: usize = std::env::var("IGW_LATENCY_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let fake = FakeCompute::start(&[(EP_A, "online", 1)]).await;
    let one = streaming_app(&fake, "stream-manual", "lat_one")
        .start()
        .await;
    let mut report = vec![("one replica", measure(&fake, &one, &one, iterations).await)];
    one.stop().await;
    if let Some(url) = redis_for_tests("callback_latency (two replicas)").await {
        let (a, b) = two_replicas(&fake, "stream-manual", "lat_two", &url).await;
        report.push((
            "two replicas via redis",
            measure(&fake, &a, &b, iterations).await,
        ));
        a.stop().await;
        b.stop().await;
    }
    for (name, mut samples) in report {
        samples.sort();
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        eprintln!(
            "callback latency, {name}: n={} p50={:?} p90={:?} p99={:?} max={:?}",
            samples.len(),
            pct(0.50),
            pct(0.90),
            pct(0.99),
            samples[samples.len() - 1]
        );
    }
    fake.handle.stop(false).await;
}

async fn measure(
    fake: &FakeCompute,
    client_side: &TestGateway,
    callback_side: &TestGateway,
    n: usize,
) -> Vec<Duration> {
    use futures_util::StreamExt;
    let mut body = chat("stream-manual");
    body["stream"] = json!(true);
    let before = fake.state.lock().unwrap().submits.len();
    let mut res = client_side
        .client()
        .post(client_side.at("/v1/chat/completions"))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (id, token) = {
        let s = fake.state.lock().unwrap();
        assert_eq!(s.submits.len(), before + 1);
        let buffers = unpack(s.submits[before]["tasks"][FUNC][0].as_str().unwrap());
        let args: Value = serde_json::from_str(buffers[0].strip_prefix("11\n").unwrap()).unwrap();
        let p = &args[0]["model_params"];
        (
            p["stream_task_id"].as_str().unwrap().to_string(),
            p["stream_task_token"].as_str().unwrap().to_string(),
        )
    };
    let poster = awc::Client::new();
    let url = format!("{}/resource_server/api/streaming/data/", callback_side.url);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let line = format!("data: {{\"i\":{i}}}");
        let started = Instant::now();
        let post = poster
            .post(url.as_str())
            .insert_header(("X-Internal-Secret", STREAM_SECRET))
            .insert_header(("X-Stream-Task-Token", token.as_str()))
            .send_json(&json!({"task_id": id, "type": "data", "data": line}));
        let (posted, chunk) = futures_util::future::join(post, res.next()).await;
        let elapsed = started.elapsed();
        assert_eq!(posted.unwrap().status(), 200);
        let chunk = chunk.unwrap().unwrap();
        assert_eq!(&chunk[..], format!("{line}\n\n").as_bytes());
        if i >= 50 {
            samples.push(elapsed); // the first 50 warm the connections
        }
    }
    samples
}

#[actix_rt::test]
async fn a_cluster_may_use_its_own_globus_client() {
    let fake = FakeCompute::start(&[(EP_A, "online", 1)]).await;
    // A client the fake Globus Auth does not know.
    std::env::set_var("IGW_TEST_GC_POLARIS_ID", "polaris-client");
    std::env::set_var("IGW_TEST_GC_POLARIS_SECRET", "not-the-secret");
    let mut polaris = gc_target("polaris-gc", "on-polaris", EP_A, 8000);
    polaris["fields"]["cluster"] = json!("polaris");
    let endpoints = [gc_target("sophia-gc", "on-sophia", EP_A, 8000), polaris];
    let gw = gateway(&fake, &endpoints, "cluster_creds")
        .env(&[
            (
                "GATEWAY__CLUSTERS__POLARIS__GLOBUS_CLIENT_ID_ENV",
                "IGW_TEST_GC_POLARIS_ID",
            ),
            (
                "GATEWAY__CLUSTERS__POLARIS__GLOBUS_CLIENT_SECRET_ENV",
                "IGW_TEST_GC_POLARIS_SECRET",
            ),
        ])
        .start()
        .await;
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("on-sophia")).await;
    assert_eq!(status, 200, "the default client: {body}");
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("on-polaris")).await;
    assert_eq!(
        status, 502,
        "polaris uses its own (here unknown) client: {body}"
    );
    assert!(!body.to_string().contains("not-the-secret"));
    let s = std::mem::take(&mut *fake.state.lock().unwrap());
    assert_eq!(s.submits.len(), 1);
    assert_eq!(s.tokens_issued, 1);
    gw.stop().await;
    fake.handle.stop(false).await;
}

#[actix_rt::test]
async fn firsts_qstat_function_on_the_clusters_endpoint_gives_scheduler_state() {
    let fake = FakeCompute::start(&[(EP_A, "online", 1), (EP_B, "online", 1)]).await;
    let endpoints = [
        gc_target(
            "sophia-llama8",
            "meta-llama/Meta-Llama-3.1-8B-Instruct",
            EP_A,
            8000,
        ),
        gc_target(
            "sophia-llama70",
            "meta-llama/Llama-3.3-70B-Instruct",
            EP_B,
            8000,
        ),
    ];
    // As in FIRST's clusters fixture: the function's ids live in the cluster's config.
    let clusters = [
        json!({"model": "resource_server.cluster", "pk": 1, "fields": {
        "cluster_name": "sophia", "cluster_adapter": "resource_server_async.clusters.globus_compute.GlobusComputeCluster",
        "frameworks": ["vllm"], "openai_endpoints": ["chat/completions"],
        "config": {"qstat_endpoint_uuid": QSTAT_EP, "qstat_function_uuid": QSTAT_FUNC}}}),
    ];
    let gw = gateway(&fake, &endpoints, "qstat")
        .clusters(&clusters)
        .toml("[clusters.sophia]\nscheduler = \"globus-compute\"\n")
        .start()
        .await;
    let sophia = wait_scheduler(&gw, "sophia", "ok").await;
    assert_eq!(sophia["free_nodes"], 3);
    let (status, jobs) = gw.get("/sophia/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(
        jobs["running"][0]["Job ID"], "123456.sophia-pbs-01",
        "{jobs}"
    );
    assert_eq!(
        jobs["running"][0]["Models"],
        "meta-llama/Meta-Llama-3.1-8B-Instruct"
    );
    assert_eq!(jobs["queued"][0]["Job ID"], "123470.sophia-pbs-01");
    assert_eq!(
        jobs["queued"][0]["Estimated Start Time"],
        "Mon Apr 01 11:00:00 2024 (Chicago time)"
    );
    let (_, models) = gw.get("/v1/models").await;
    let status_of = |id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["status"].clone())
    };
    assert_eq!(
        status_of("meta-llama/Meta-Llama-3.1-8B-Instruct"),
        Some(json!("running")),
        "{models}"
    );
    assert_eq!(
        status_of("meta-llama/Llama-3.3-70B-Instruct"),
        Some(json!("queued")),
        "{models}"
    );
    assert!(!gw.logs().contains(CLIENT_SECRET));
    gw.stop().await;
    fake.handle.stop(false).await;
}

#[actix_rt::test]
async fn a_globus_compute_scheduler_without_its_function_says_which_keys_are_missing() {
    let fake = FakeCompute::start(&[(EP_A, "online", 1)]).await;
    let gw = gateway(
        &fake,
        &[gc_target("sophia-llama8", "m", EP_A, 8000)],
        "qstat_missing",
    )
    .env(&[("GATEWAY__CLUSTERS__SOPHIA__SCHEDULER", "globus-compute")])
    .start()
    .await;
    wait_scheduler(&gw, "sophia", "unknown").await;
    let logs = gw.logs();
    assert!(
        logs.contains("needs qstat_endpoint_uuid and qstat_function_uuid"),
        "{logs}"
    );
    // The model still routes on health alone.
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("m")).await;
    assert_eq!(status, 200, "{body}");
    gw.stop().await;
    fake.handle.stop(false).await;
}
