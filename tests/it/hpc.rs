//! HPC integration: scheduler probes over fake `qstat`/`pbsnodes`/`squeue` scripts printing
//! the documented PBS and Slurm shapes, scheduler-aware ranking and failover, `/jobs`,
//! `/status`, maintenance and cold start.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const PBS_JSON: &str = include_str!("../data/qstat-f-F-json.json");
const PBS_TEXT: &str = include_str!("../data/qstat-xf.txt");
const PBSNODES: &str = include_str!("../data/pbsnodes-a-F-json.json");
const SQUEUE_2311: &str = include_str!("../data/squeue-23.11.json");
const SQUEUE_2302: &str = include_str!("../data/squeue-23.02.json");
const PBS_NO_JOBS: &str =
    r#"{"timestamp":1717430400,"pbs_version":"2022.1.5.20240130","pbs_server":"sophia-pbs-01"}"#;

/// A directory of fake scheduler commands. Each prints the file `<name>.out` next to it,
/// so a test changes what the "scheduler" says by rewriting that file.
struct FakeScheduler {
    dir: tempfile::TempDir,
}

impl FakeScheduler {
    fn new() -> Self {
        FakeScheduler {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command `name` printing `output` (changeable with `set`).
    fn command(&self, name: &str, output: &str) -> String {
        self.set(name, output);
        let out = self.path(&format!("{name}.out"));
        self.script(name, &format!("cat '{}'", out.display()))
    }

    fn set(&self, name: &str, output: &str) {
        let out = self.path(&format!("{name}.out"));
        let tmp = self.path(&format!("{name}.tmp"));
        std::fs::write(&tmp, output).unwrap();
        std::fs::rename(&tmp, &out).unwrap();
    }

    fn script(&self, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }
}

fn endpoint(slug: &str, cluster: &str, model: &str, url: &str, extra: Value) -> Value {
    let mut fields = json!({"endpoint_slug": slug, "cluster": cluster, "framework": "vllm",
        "model": model, "base_url": url});
    if let (Value::Object(f), Value::Object(e)) = (&mut fields, extra) {
        f.extend(e);
    }
    json!({"model": "resource_server.endpoint", "pk": 1, "fields": fields})
}

/// A gateway over raw `endpoints.json` entries and a config file (the clusters' tables).
fn app(endpoints: &[Value], toml: &str) -> TestApp {
    TestApp::builder().endpoints(endpoints).toml(toml)
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

async fn served_by(gw: &TestGateway, path: &str, model: &str) -> (u16, Value) {
    let (status, _, body) = gw.post(path, &chat(model)).await;
    (status, body)
}

#[actix_rt::test]
async fn pbs_running_outranks_queued_and_jobs_has_firsts_shape() {
    let queued = MockUpstream::start(Behavior::default()).await.unwrap();
    let running = MockUpstream::start(Behavior::default()).await.unwrap();
    let fake = FakeScheduler::new();
    let qstat = fake.command("qstat", PBS_JSON);
    let pbsnodes = fake.command("pbsnodes", PBSNODES);
    // File order puts the queued target first: FIRST would have taken it.
    let endpoints = [
        endpoint(
            "sophia-70b",
            "sophia",
            "llama",
            &queued.url(),
            json!({"scheduler_job": "sophia-llama70b"}),
        ),
        endpoint(
            "sophia-8b",
            "sophia",
            "llama",
            &running.url(),
            json!({"scheduler_job": "sophia-llama8b"}),
        ),
    ];
    let toml = format!(
        "[clusters.sophia]\nscheduler = \"pbs\"\ncommand = [{}]\nnodes_command = {}\n",
        toml_str(&qstat),
        toml_str(&pbsnodes)
    );
    let gw = app(&endpoints, &toml).start().await;
    let status = wait_scheduler(&gw, "sophia", "ok").await;
    assert_eq!(status["status"], "up");
    assert_eq!(status["free_nodes"], 2);

    for _ in 0..3 {
        let (status, _) = served_by(&gw, "/v1/chat/completions", "llama").await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        running.request_count(),
        3,
        "the running target takes the requests"
    );
    assert_eq!(queued.request_count(), 0);

    let (status, jobs) = gw.get("/resource_server/sophia/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(
        jobs["running"],
        json!([{"Models": "llama", "Framework": "vllm", "Cluster": "sophia",
            "Model Status": "running", "Job ID": "123456.sophia-pbs-01", "Job State": "R",
            "Host Name": "sophia-gpu-07/0*64",
            "Job Comments": "Job run at Mon Jun 03 at 09:00 on (sophia-gpu-07:ncpus=64:ngpus=8)",
            "Nodes Reserved": "1", "Walltime": "03:12:44"}])
    );
    assert_eq!(jobs["queued"][0]["Job ID"], "123470.sophia-pbs-01");
    assert_eq!(jobs["queued"][0]["Model Status"], "queued");
    assert_eq!(jobs["queued"][0]["Host Name"], "N/A");
    assert_eq!(
        jobs["queued"][0]["Estimated Start Time"],
        "Mon Jun  3 11:00:00 2024"
    );
    assert_eq!(jobs["stopped"], json!([]));
    assert_eq!(jobs["others"], json!([]));
    assert_eq!(jobs["private_batch_running"], json!([]));
    assert_eq!(jobs["cluster_status"]["cluster"], "sophia");
    assert_eq!(jobs["cluster_status"]["free_nodes"], 2);

    // The scheduler changes its mind: the 8b job ends, the 70b job runs.
    fake.set(
        "qstat",
        &PBS_JSON.replace("\"R\"", "\"X\"").replace("\"Q\"", "\"R\""),
    );
    gw.gateway
        .do_send(inference_gateway::actors::gateway::ProbeAll);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, jobs) = gw.get("/sophia/jobs").await;
        if jobs["running"][0]["Job ID"] == "123470.sophia-pbs-01" {
            assert_eq!(jobs["others"][0]["Job ID"], "123456.sophia-pbs-01");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "probe never saw the change: {jobs}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = served_by(&gw, "/v1/chat/completions", "llama").await;
    assert_eq!(status, 200);
    assert_eq!(queued.request_count(), 1, "now the other target runs");

    let (status, body) = gw.get("/resource_server/nowhere/jobs").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    gw.stop().await;
}

#[actix_rt::test]
async fn a_failing_running_target_fails_over_to_the_queued_one() {
    let queued = MockUpstream::start(Behavior::default()).await.unwrap();
    let fake = FakeScheduler::new();
    let qstat = fake.command("qstat", PBS_JSON);
    let endpoints = [
        endpoint(
            "sophia-8b",
            "sophia",
            "llama",
            &dead_url(),
            json!({"scheduler_job": "sophia-llama8b"}),
        ),
        endpoint(
            "sophia-70b",
            "sophia",
            "llama",
            &queued.url(),
            json!({"scheduler_job": "sophia-llama70b"}),
        ),
    ];
    let toml = format!(
        "[clusters.sophia]\nscheduler = \"pbs\"\ncommand = {}\nnodes_command = \"\"\n",
        toml_str(&qstat)
    );
    let gw = app(&endpoints, &toml).start().await;
    wait_scheduler(&gw, "sophia", "ok").await;
    let (status, body) = served_by(&gw, "/v1/chat/completions", "llama").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(queued.request_count(), 1);
    let dead = gw.target_state("sophia-8b").await;
    assert_eq!(
        dead["requests"], 1,
        "the running target was tried first: {dead}"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn slurm_both_json_forms_and_pbs_text() {
    for (kind, output) in [
        ("slurm", SQUEUE_2311),
        ("slurm", SQUEUE_2302),
        ("pbs-text", PBS_TEXT),
    ] {
        let up = MockUpstream::start(Behavior::default()).await.unwrap();
        let fake = FakeScheduler::new();
        let cmd = fake.command("sched", output);
        let (running_job, other_job) = if kind == "slurm" {
            ("vllm-llama8b", "vllm-mistral")
        } else {
            ("sophia-llama8b", "sophia-llama70b")
        };
        let endpoints = [
            endpoint(
                "a",
                "c",
                "m8b",
                &up.url(),
                json!({"scheduler_job": running_job}),
            ),
            endpoint(
                "b",
                "c",
                "m2",
                &up.url(),
                json!({"scheduler_job": other_job}),
            ),
            endpoint("z", "c", "idle", &up.url(), json!({})),
        ];
        let nodes = if kind == "slurm" {
            String::new()
        } else {
            fake.command("pbsnodes", PBSNODES)
        };
        let toml = format!(
            "[clusters.c]\nscheduler = \"{kind}\"\ncommand = {}\nnodes_command = {}\n",
            toml_str(&cmd),
            toml_str(&nodes)
        );
        let gw = app(&endpoints, &toml).start().await;
        let status = wait_scheduler(&gw, "c", "ok").await;
        let (_, jobs) = gw.get("/c/jobs").await;
        let running = jobs["running"].as_array().unwrap();
        assert_eq!(running[0]["Models"], "m8b", "{kind}: {jobs}");
        assert_eq!(running[0]["Model Status"], "running");
        if kind == "slurm" {
            assert_eq!(running[0]["Job ID"], "481516");
            assert_eq!(running[0]["Host Name"], "gpu-node014");
            assert_eq!(running[1]["Models"], "m2");
            assert_eq!(running[1]["Model Status"], "starting");
            assert_eq!(
                jobs["queued"],
                json!([]),
                "the pending job serves no target"
            );
            assert_eq!(status["free_nodes"], -1);
        } else {
            assert_eq!(running[0]["Job ID"], "123456.sophia-pbs-01");
            assert_eq!(jobs["queued"][0]["Models"], "m2");
            assert_eq!(status["free_nodes"], 2);
        }
        assert_eq!(
            jobs["stopped"],
            json!([{"Models": "idle", "Framework": "vllm", "Cluster": "c"}])
        );
        gw.stop().await;
    }
}

#[actix_rt::test]
async fn failing_or_hanging_probes_mark_state_unknown_and_requests_still_route() {
    let up = MockUpstream::start(Behavior::default()).await.unwrap();
    let fake = FakeScheduler::new();
    let failing = fake.script(
        "qstat-broken",
        "echo 'qstat: cannot connect to server' >&2; exit 2",
    );
    let hanging = fake.script("qstat-hung", "sleep 30");
    for cmd in [failing, hanging] {
        let endpoints = [endpoint("a", "c", "m", &up.url(), json!({}))];
        let toml = format!(
            "[clusters.c]\nscheduler = \"pbs\"\ncommand = {}\nnodes_command = \"\"\ntimeout_secs = 1\n",
            toml_str(&cmd)
        );
        let gw = app(&endpoints, &toml).start().await;
        let started = Instant::now();
        let (status, _) = served_by(&gw, "/v1/chat/completions", "m").await;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "a slow probe must not hold requests up"
        );
        wait_scheduler(&gw, "c", "unknown").await;
        let (status, jobs) = gw.get("/c/jobs").await;
        assert_eq!(status, 200);
        assert_eq!(jobs["cluster_status"]["scheduler"], "unknown");
        assert_eq!(jobs["running"], json!([]));
        let (status, _) = served_by(&gw, "/v1/chat/completions", "m").await;
        assert_eq!(
            status, 200,
            "unknown scheduler state routes on health alone"
        );
        gw.stop().await;
    }
}

#[actix_rt::test]
async fn http_status_source_in_firsts_shape() {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let doc = json!({"running": [{"Models": "m", "Framework": "vllm", "Cluster": "metis",
        "Model Status": "running", "Job ID": "live-1"}], "queued": [], "stopped": [],
        "others": [], "cluster_status": {"free_nodes": 0}});
    let body = doc.to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        let body = body.clone();
        App::new().route(
            "/status",
            web::get().to(move || {
                let body = body.clone();
                async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);

    let up = MockUpstream::start(Behavior::default()).await.unwrap();
    let endpoints = [
        endpoint("m-live", "metis", "m", &up.url(), json!({})),
        endpoint("m-other", "metis", "other", &up.url(), json!({})),
    ];
    let toml = format!("[clusters.metis]\nscheduler = \"http\"\nurl = \"http://{addr}/status\"\n");
    let gw = app(&endpoints, &toml).start().await;
    let status = wait_scheduler(&gw, "metis", "ok").await;
    assert_eq!(status["free_nodes"], 0);
    let (_, jobs) = gw.get("/metis/jobs").await;
    assert_eq!(jobs["running"][0]["Job ID"], "live-1");
    assert_eq!(
        jobs["stopped"],
        json!([{"Models": "other", "Framework": "vllm", "Cluster": "metis"}])
    );
    gw.stop().await;
    handle.stop(false).await;
}

const ADMIN_KEY: &str = "test-admin-key-0123456789";

async fn put_maintenance(gw: &TestGateway, cluster: &str, body: Value) -> (u16, Value) {
    let mut res = gw
        .client()
        .put(gw.at(&format!("/admin/clusters/{cluster}/maintenance")))
        .bearer_auth(ADMIN_KEY)
        .send_json(&body)
        .await
        .unwrap();
    let bytes = res.body().await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[actix_rt::test]
async fn maintenance_from_config_and_admin_leaves_other_clusters_alone() {
    let sophia = MockUpstream::start(Behavior::default()).await.unwrap();
    let polaris = MockUpstream::start(Behavior::default()).await.unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("admin.key");
    std::fs::write(&key_file, format!("{ADMIN_KEY}\n")).unwrap();
    let endpoints = [
        endpoint("s-llama", "sophia", "llama", &sophia.url(), json!({})),
        endpoint("p-llama", "polaris", "llama", &polaris.url(), json!({})),
        endpoint(
            "s-only",
            "sophia",
            "only-on-sophia",
            &sophia.url(),
            json!({}),
        ),
    ];
    let toml = "[clusters.sophia]\nmaintenance = true\nmaintenance_notice = \"PBS upgrade until 14:00 UTC\"\n";
    let gw = app(&endpoints, toml)
        .settings(move |s| s.auth.admin_key_file = key_file)
        .start()
        .await;

    let (status, body) = served_by(&gw, "/sophia/vllm/v1/chat/completions", "llama").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"error": {"message": "Cluster `sophia` is under maintenance: PBS upgrade until 14:00 UTC",
            "type": "server_error", "param": null, "code": "cluster_maintenance"}})
    );
    let (status, body) = served_by(&gw, "/v1/chat/completions", "only-on-sophia").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (503, json!("cluster_maintenance"))
    );
    for _ in 0..3 {
        let (status, _) = served_by(&gw, "/v1/chat/completions", "llama").await;
        assert_eq!(status, 200, "polaris serves the federated model");
    }
    assert_eq!(sophia.request_count(), 0);
    assert_eq!(polaris.request_count(), 3);
    let (status, _) = served_by(&gw, "/polaris/vllm/v1/chat/completions", "llama").await;
    assert_eq!(status, 200);

    let (_, models) = gw.get("/v1/models").await;
    let status_of = |id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["status"].clone())
    };
    assert_eq!(status_of("only-on-sophia"), Some(json!("maintenance")));
    assert_eq!(status_of("llama"), Some(json!("running")));
    let (_, v) = gw.get("/resource_server/status").await;
    assert_eq!(v["clusters"]["sophia"]["status"], "maintenance");
    assert_eq!(
        v["clusters"]["sophia"]["notice"],
        "PBS upgrade until 14:00 UTC"
    );
    assert_eq!(v["clusters"]["polaris"]["status"], "up");
    assert_eq!(v["clusters"]["sophia"]["scheduler"], "none");
    let (_, jobs) = gw.get("/sophia/jobs").await;
    assert_eq!(jobs["stopped"].as_array().unwrap().len(), 2);
    assert_eq!(jobs["cluster_status"]["status"], "maintenance");

    // The admin API ends it, and starts one on polaris.
    let (status, v) = put_maintenance(&gw, "sophia", json!({"enabled": false})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"]["status"], "up");
    let (status, _) = served_by(&gw, "/sophia/vllm/v1/chat/completions", "llama").await;
    assert_eq!(status, 200);
    let (status, _) = put_maintenance(
        &gw,
        "polaris",
        json!({"enabled": true, "notice": "GPU swap"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = served_by(&gw, "/polaris/vllm/v1/chat/completions", "llama").await;
    assert_eq!(status, 503);
    assert_eq!(
        body["error"]["message"],
        "Cluster `polaris` is under maintenance: GPU swap"
    );
    let before = polaris.request_count();
    for _ in 0..3 {
        let (status, _) = served_by(&gw, "/v1/chat/completions", "llama").await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        polaris.request_count(),
        before,
        "no request reaches a cluster in maintenance"
    );

    // Errors in the envelope: unknown cluster, bad body, no key.
    let (status, v) = put_maintenance(&gw, "nowhere", json!({"enabled": true})).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let (status, v) = put_maintenance(&gw, "sophia", json!({"on": true})).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let res = gw
        .client()
        .put(gw.at("/admin/clusters/sophia/maintenance"))
        .send_json(&json!({"enabled": true}))
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    gw.stop().await;
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn cold_start_runs_the_start_command_once_and_waits_for_the_job() {
    let up = MockUpstream::start(Behavior::default()).await.unwrap();
    let fake = FakeScheduler::new();
    let qstat = fake.command("qstat", PBS_NO_JOBS);
    // "qsub": records the call, then the job shows up as running (as a real scheduler
    // would show it some time later).
    fake.set("running", PBS_JSON);
    let log = fake.path("starts.log");
    let start = format!(
        "echo started >> '{}'; sleep 0.3; cp '{}' '{}'",
        log.display(),
        fake.path("running.out").display(),
        fake.path("qstat.out").display()
    );
    let endpoints = [endpoint(
        "sophia-8b",
        "sophia",
        "llama",
        &up.url(),
        json!({"scheduler_job": "sophia-llama8b", "start_command": start}),
    )];
    let toml = format!(
        "[clusters.sophia]\nscheduler = \"pbs\"\ncommand = {}\nnodes_command = \"\"\n\
         [cold_start]\nwait_secs = 10\nprobe_interval_ms = 50\n",
        toml_str(&qstat)
    );
    let gw = app(&endpoints, &toml).start().await;
    wait_scheduler(&gw, "sophia", "ok").await;
    let (_, jobs) = gw.get("/sophia/jobs").await;
    assert_eq!(jobs["stopped"][0]["Models"], "llama");
    let (_, models) = gw.get("/v1/models").await;
    assert_eq!(models["data"][0]["status"], "offline", "stopped: no job");

    let started = Instant::now();
    let requests = (0..3).map(|_| served_by(&gw, "/v1/chat/completions", "llama"));
    let results = futures_util::future::join_all(requests).await;
    for (status, body) in results {
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "they waited for the job"
    );
    assert_eq!(lines(&log), 1, "three cold requests, one start");
    assert_eq!(up.request_count(), 3);
    gw.stop().await;
}

#[actix_rt::test]
async fn cold_start_that_does_not_come_up_in_time_is_503_with_retry_after() {
    let up = MockUpstream::start(Behavior::default()).await.unwrap();
    let fake = FakeScheduler::new();
    let qstat = fake.command("qstat", PBS_NO_JOBS);
    let log = fake.path("starts.log");
    let start = format!("echo started >> '{}'", log.display());
    let endpoints = [endpoint(
        "sophia-8b",
        "sophia",
        "llama",
        &up.url(),
        json!({"scheduler_job": "sophia-llama8b", "start_command": start}),
    )];
    let toml = format!(
        "[clusters.sophia]\nscheduler = \"pbs\"\ncommand = {}\nnodes_command = \"\"\n\
         [cold_start]\nwait_secs = 1\nretry_after_secs = 42\nprobe_interval_ms = 50\n",
        toml_str(&qstat)
    );
    let gw = app(&endpoints, &toml).start().await;
    wait_scheduler(&gw, "sophia", "ok").await;
    let (status, headers, body) = gw.post("/v1/chat/completions", &chat("llama")).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "42");
    assert_eq!(
        body,
        json!({"error": {"message": "The model `llama` is starting (its job is submitted); retry in about 42 seconds.",
            "type": "server_error", "param": null, "code": "model_starting"}})
    );
    // The job is now queued: the next request says so, and nothing is started again.
    fake.set("qstat", &PBS_JSON.replace("\"R\"", "\"Q\""));
    gw.gateway
        .do_send(inference_gateway::actors::gateway::ProbeAll);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, jobs) = gw.get("/sophia/jobs").await;
        if jobs["queued"].as_array().is_some_and(|q| q.len() == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "{jobs}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, models) = gw.get("/v1/models").await;
    assert_eq!(models["data"][0]["status"], "queued");
    let (status, _, body) = gw.post("/v1/chat/completions", &chat("llama")).await;
    assert_eq!(status, 503);
    assert_eq!(
        body["error"]["message"],
        "The model `llama` is starting (its job is queued); retry in about 42 seconds."
    );
    assert_eq!(lines(&log), 1, "debounced");
    assert_eq!(up.request_count(), 0);
    gw.stop().await;
}

#[actix_rt::test]
async fn a_crashed_probe_is_rebuilt_and_probes_again() {
    let up = MockUpstream::start(Behavior::default()).await.unwrap();
    let fake = FakeScheduler::new();
    let qstat = fake.command("qstat", PBS_JSON);
    let endpoints = [endpoint(
        "sophia-8b",
        "sophia",
        "llama",
        &up.url(),
        json!({"scheduler_job": "sophia-llama8b"}),
    )];
    let toml = format!(
        "[clusters.sophia]\nscheduler = \"pbs\"\ncommand = {}\nnodes_command = \"\"\n",
        toml_str(&qstat)
    );
    let gw = app(&endpoints, &toml).start().await;
    wait_scheduler(&gw, "sophia", "ok").await;
    assert!(gw
        .gateway
        .send(inference_gateway::actors::gateway::CrashProbe(
            "sophia".into()
        ))
        .await
        .unwrap());
    // The rebuilt probe probes at once (the interval is 30 s, so only a new actor
    // sees this change soon).
    fake.set("qstat", PBS_NO_JOBS);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, jobs) = gw.get("/sophia/jobs").await;
        if jobs["stopped"].as_array().is_some_and(|s| s.len() == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the probe was not rebuilt: {jobs}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = served_by(&gw, "/v1/chat/completions", "llama").await;
    assert_eq!(status, 200);
    gw.stop().await;
}

#[actix_rt::test]
async fn cold_start_is_debounced_across_replicas_through_redis() {
    let Ok(url) = std::env::var("REDIS_TEST_URL") else {
        eprintln!("SKIPPED cold_start_is_debounced_across_replicas_through_redis: REDIS_TEST_URL is not set; this Redis test did not run");
        return;
    };
    let probe = inference_gateway::streaming_redis::RedisStreams::new(&url, "igw-probe:").unwrap();
    if actix_rt::time::timeout(Duration::from_secs(3), probe.ping())
        .await
        .map_or(true, |r| r.is_err())
    {
        eprintln!("SKIPPED cold_start_is_debounced_across_replicas_through_redis: Redis at REDIS_TEST_URL does not answer; this Redis test did not run");
        return;
    }
    let up = MockUpstream::start(Behavior::default()).await.unwrap();
    let fake = FakeScheduler::new();
    let qstat = fake.command("qstat", PBS_NO_JOBS);
    let log = fake.path("starts.log");
    let start = format!("echo started >> '{}'", log.display());
    let endpoints = [endpoint(
        "sophia-8b",
        "sophia",
        "llama",
        &up.url(),
        json!({"scheduler_job": "sophia-llama8b", "start_command": start}),
    )];
    let toml = format!(
        "[clusters.sophia]\nscheduler = \"pbs\"\ncommand = {}\nnodes_command = \"\"\n\
         [cold_start]\nwait_secs = 1\nprobe_interval_ms = 50\n",
        toml_str(&qstat)
    );
    let prefix = format!("igw-test-{}:", uuid::Uuid::new_v4().simple());
    let replica = || {
        let (url, prefix) = (url.clone(), prefix.clone());
        app(&endpoints, &toml).settings(move |s| {
            s.redis.url = url;
            s.redis.key_prefix = prefix;
        })
    };
    let a = replica().start().await;
    let b = replica().start().await;
    wait_scheduler(&a, "sophia", "ok").await;
    wait_scheduler(&b, "sophia", "ok").await;
    for gw in [&a, &b] {
        let (status, _, body) = gw.post("/v1/chat/completions", &chat("llama")).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "model_starting");
    }
    assert_eq!(lines(&log), 1, "two replicas, one start");
    a.stop().await;
    b.stop().await;
}

const POLARIS: &str = include_str!("../data/qstat-f-F-json-polaris.txt");
const SQUEUE_2405: &str = include_str!("../data/squeue-24.05.json");

/// Real Polaris `qstat -f -F json` is not JSON (`Invalid \escape`, `005`): the jobs that
/// can be read still count, the one that cannot is skipped and counted, and a `B` array
/// parent is not running. A multi-user endpoint's job (`uep.<uuid>.<hash>`) serves the
/// target of that endpoint.
#[actix_rt::test]
async fn polaris_output_with_unreadable_jobs_still_maps_the_others() {
    let up = MockUpstream::start(Behavior::default()).await.unwrap();
    let fake = FakeScheduler::new();
    let cmd = fake.command("qstat", POLARIS);
    let endpoints = [
        endpoint("polaris-llama8b", "polaris", "m8b", &up.url(), json!({})),
        endpoint("polaris-llama70b", "polaris", "m70b", &up.url(), json!({})),
        endpoint(
            "polaris-mep",
            "polaris",
            "mep",
            &up.url(),
            json!({"endpoint_uuid": "6a0d3c8e-9f0b-4b7e-a1c2-0d9e8f7a6b5c",
                   "function_uuid": "33333333-3333-4333-8333-333333333333",
                   "transport": "globus-compute", "api_port": 8000}),
        ),
    ];
    let toml = format!(
        "[clusters.polaris]\nscheduler = \"pbs\"\ncommand = {}\nnodes_command = \"\"\n",
        toml_str(&cmd)
    );
    let gw = app(&endpoints, &toml).start().await;
    wait_scheduler(&gw, "polaris", "ok").await;
    let (_, jobs) = gw.get("/polaris/jobs").await;
    assert_eq!(jobs["running"][0]["Models"], "m8b", "{jobs}");
    assert_eq!(jobs["running"].as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(jobs["queued"][0]["Models"], "mep", "{jobs}");
    assert_eq!(jobs["others"][0]["Job State"], "B", "{jobs}");
    assert_eq!(
        jobs["stopped"],
        json!([{"Models": "m70b", "Framework": "vllm", "Cluster": "polaris"}])
    );
    let mut res = gw.client().get(gw.at("/metrics")).send().await.unwrap();
    let metrics = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(
        metrics.contains("gateway_scheduler_unreadable_jobs{cluster=\"polaris\"} 1"),
        "{metrics}"
    );
    gw.stop().await;
}

/// Globus Compute endpoint jobs on Slurm are recognised by `command` (or `comment`), and
/// 23.02's one-word `CONFIGURING` is a starting job, in the 23.02, 23.11 and 24.05 shapes.
#[actix_rt::test]
async fn slurm_endpoint_jobs_match_by_command_and_comment() {
    for output in [SQUEUE_2302, SQUEUE_2311, SQUEUE_2405] {
        let up = MockUpstream::start(Behavior::default()).await.unwrap();
        let fake = FakeScheduler::new();
        let cmd = fake.command("squeue", output);
        let endpoints = [
            endpoint("polaris-qwen", "s", "qwen", &up.url(), json!({})),
            endpoint("polaris-gemma", "s", "gemma", &up.url(), json!({})),
            endpoint(
                "mistral",
                "s",
                "mistral",
                &up.url(),
                json!({"scheduler_job": "vllm-mistral"}),
            ),
        ];
        let toml = format!(
            "[clusters.s]\nscheduler = \"slurm\"\ncommand = {}\n",
            toml_str(&cmd)
        );
        let gw = app(&endpoints, &toml).start().await;
        wait_scheduler(&gw, "s", "ok").await;
        let (_, jobs) = gw.get("/s/jobs").await;
        let running: Vec<(&str, &str)> = jobs["running"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["Models"].as_str().unwrap(),
                    j["Model Status"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            running,
            vec![
                ("mistral", "starting"),
                ("qwen", "running"),
                ("gemma", "running")
            ],
            "{jobs}"
        );
        assert_eq!(jobs["stopped"], json!([]), "{jobs}");
        gw.stop().await;
    }
}

/// FIRST's `/{cluster}/jobs` needs a bearer token: the HTTP source sends the one held in
/// the environment variable the cluster names (`token_env`).
#[actix_rt::test]
async fn http_status_source_sends_a_bearer_token_from_the_environment() {
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    const TOKEN: &str = "first-jobs-token-value";
    std::env::set_var("IGW_TEST_JOBS_TOKEN", TOKEN);
    let doc = json!({"running": [{"Models": "m", "Framework": "vllm", "Cluster": "sophia",
        "Model Status": "running", "Job ID": "123456.sophia-pbs-01", "Job State": "R",
        "Host Name": "sophia-gpu-07/0*64", "Job Comments": "", "Nodes Reserved": "1"}],
        "queued": [], "stopped": [], "others": [], "private_batch_running": [],
        "private_batch_queued": [], "cluster_status": {"free_nodes": 3}});
    let body = doc.to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        let body = body.clone();
        App::new().route(
            "/resource_server/sophia/jobs",
            web::get().to(move |req: HttpRequest| {
                let body = body.clone();
                async move {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok());
                    if auth != Some(&format!("Bearer {TOKEN}")) {
                        return HttpResponse::Unauthorized()
                            .json(json!({"detail": "Unauthorized"}));
                    }
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);

    let up = MockUpstream::start(Behavior::default()).await.unwrap();
    let endpoints = [endpoint("s-m", "sophia", "m", &up.url(), json!({}))];
    let toml = format!(
        "[clusters.sophia]\nscheduler = \"http\"\nurl = \"http://{addr}/resource_server/sophia/jobs\"\n\
         token_env = \"IGW_TEST_JOBS_TOKEN\"\n"
    );
    let gw = app(&endpoints, &toml).start().await;
    let status = wait_scheduler(&gw, "sophia", "ok").await;
    assert_eq!(status["free_nodes"], 3);
    let (_, jobs) = gw.get("/sophia/jobs").await;
    assert_eq!(
        jobs["running"][0]["Job ID"], "123456.sophia-pbs-01",
        "{jobs}"
    );
    assert!(!gw.logs().contains(TOKEN), "the token is never logged");
    gw.stop().await;
    handle.stop(false).await;
}
