//! Reading a cluster's scheduler: pure parsers for what `qstat -f -F json`, FIRST's text
//! `qstat -xf`, `pbsnodes -a -F json`, `squeue --json` (Slurm 23.02 and 23.11+ forms) and an
//! HTTP status URL (FIRST's `/jobs` shape) print, into [`Job`]s and a free-node count. No
//! I/O here: `actors::scheduler` runs the commands and calls these.

use serde_json::{Map, Value};

/// What a job means for the targets it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    /// Running and serving (PBS `R`, Slurm `RUNNING`).
    Running,
    /// Allocated but still coming up (Slurm `RUNNING` with `CONFIGURING`/`POWER_UP_NODE`,
    /// FIRST's `starting`).
    Starting,
    /// Waiting in the queue (PBS `Q`/`W`, Slurm `PENDING`).
    Queued,
    /// Held, exiting, finished, failed...: serves nothing.
    Other,
}

impl JobPhase {
    pub fn name(self) -> &'static str {
        match self {
            JobPhase::Running => "running",
            JobPhase::Starting => "starting",
            JobPhase::Queued => "queued",
            JobPhase::Other => "other",
        }
    }
}

/// One scheduler job, with the fields FIRST's `/jobs` shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Job {
    pub id: String,
    /// PBS `Job_Name`, Slurm `name`: what targets are matched on.
    pub name: String,
    /// The scheduler's own state (`R`, `Q`, `RUNNING`, `PENDING,REQUEUED`...).
    pub state: String,
    pub phase: Option<JobPhase>,
    pub host: Option<String>,
    pub comment: Option<String>,
    pub nodes: Option<String>,
    pub walltime: Option<String>,
    pub estimated_start: Option<String>,
    /// PBS `Submit_arguments` (its last word is the submit script path, which names the
    /// Globus Compute endpoint directory for Parsl jobs).
    pub submit_args: Option<String>,
    /// Slurm `command` (the batch script path, as PBS's last `Submit_arguments` word).
    pub command: Option<String>,
    /// Slurm `comment` (`--comment`, set by the submitter; PBS's `comment` is the
    /// scheduler's own note and is never matched).
    pub user_comment: Option<String>,
    /// Models and framework as an HTTP source (FIRST's shape) names them.
    pub models: Option<String>,
    pub framework: Option<String>,
}

impl Job {
    pub fn phase(&self) -> JobPhase {
        self.phase.unwrap_or(JobPhase::Other)
    }

    /// Does this job serve `target`? See [`Job::serves`]; a Globus Compute target's
    /// endpoint UUID also matches a multi-user endpoint's directory.
    pub fn serves_target(&self, target: &crate::fixtures::TargetSpec) -> bool {
        let endpoint = match &target.transport {
            crate::fixtures::Transport::GlobusCompute(g) => Some(g.endpoint_uuid.as_str()),
            crate::fixtures::Transport::Http | crate::fixtures::Transport::Demo => None,
        };
        self.serves(target.job_key(), &target.model, &target.framework, endpoint)
    }

    /// Does this job serve a target? A job from an HTTP source names its models (and
    /// framework); a PBS or Slurm job serves the target whose job key (`scheduler_job`,
    /// default the slug) is its name or its Slurm comment, or a directory of its submit
    /// script (PBS: the last word of `Submit_arguments`; Slurm: `command`), as Parsl writes
    /// them for a Globus Compute endpoint: `.../.globus_compute/<key>/submit_scripts/...`,
    /// or for a multi-user endpoint's user endpoint `.../.globus_compute/uep.<endpoint
    /// uuid>.<hash>/...`.
    pub fn serves(
        &self,
        key: &str,
        model: &str,
        framework: &str,
        endpoint_uuid: Option<&str>,
    ) -> bool {
        if let Some(models) = &self.models {
            return models.split(',').any(|m| m.trim() == model)
                && self.framework.as_deref().is_none_or(|f| f == framework);
        }
        if self.name == key || self.user_comment.as_deref().map(str::trim) == Some(key) {
            return true;
        }
        let Some(script) = self.script() else {
            return false;
        };
        script.contains(&format!("/{key}/"))
            || endpoint_uuid
                .filter(|u| !u.is_empty())
                .is_some_and(|u| script.contains(&format!("/uep.{u}.")))
    }

    /// The submit script path: Slurm's `command`, else PBS's last `Submit_arguments` word.
    pub fn script(&self) -> Option<&str> {
        self.command
            .as_deref()
            .and_then(|c| c.split_whitespace().next())
            .or_else(|| {
                self.submit_args
                    .as_deref()
                    .and_then(|a| a.split_whitespace().last())
            })
    }
}

/// A cluster's state as one probe read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub jobs: Vec<Job>,
    /// Free nodes, when the source tells.
    pub free_nodes: Option<i64>,
    /// Jobs in the output that could not be read (skipped; the others still count).
    pub skipped: usize,
}

impl Observation {
    pub fn of(jobs: Vec<Job>) -> Observation {
        Observation {
            jobs,
            ..Observation::default()
        }
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// PBS job states: `R` runs; `Q` and `W` wait; `B` is an array parent (its subjobs are
/// listed on their own), and the rest (H, E, F, S, X...) serve nothing.
fn pbs_phase(state: &str) -> JobPhase {
    match state {
        "R" => JobPhase::Running,
        "Q" | "W" => JobPhase::Queued,
        _ => JobPhase::Other,
    }
}

/// `qstat -f -F json`: `{"timestamp","pbs_version","pbs_server"[,"Jobs":{id:{...}}]}`.
/// `Jobs` is absent when there are no jobs; empty output (the default probe found no
/// jobs to show) is no jobs. Several documents may follow each other (`xargs` may run
/// `qstat` more than once). Real output is not always JSON (backslashes printed
/// unescaped, numbers with leading zeros): see [`crate::pbs_json`]; a job that cannot be
/// read even so is skipped and counted.
pub fn parse_pbs_json(output: &str) -> Result<Observation, String> {
    if output.trim().is_empty() {
        return Ok(Observation::default());
    }
    let docs = crate::pbs_json::documents(output)?;
    let mut observation = Observation::default();
    for doc in docs {
        observation.skipped += doc.skipped;
        observation
            .jobs
            .extend(doc.jobs.iter().map(|(id, j)| pbs_json_job(id, j)));
    }
    Ok(observation)
}

fn pbs_json_job(id: &str, j: &Value) -> Job {
    let get = |k: &str| text(j.get(k));
    let nested = |o: &str, k: &str| text(j.get(o).and_then(|o| o.get(k)));
    let state = get("job_state").unwrap_or_default();
    Job {
        id: id.to_string(),
        name: get("Job_Name").unwrap_or_default(),
        phase: Some(pbs_phase(&state)),
        state,
        host: get("exec_host"),
        comment: get("comment"),
        nodes: nested("Resource_List", "nodect"),
        walltime: nested("resources_used", "walltime"),
        estimated_start: nested("estimated", "start_time"),
        submit_args: get("Submit_arguments"),
        ..Job::default()
    }
}

/// Text `qstat -f`/`-xf` (what FIRST's qstat function parses): `Job Id: <id>` lines, then
/// indented `name = value` lines with dotted resource names; tab-indented lines continue
/// the previous value.
pub fn parse_pbs_text(output: &str) -> Result<Vec<Job>, String> {
    let mut blocks: Vec<(String, Map<String, Value>)> = Vec::new();
    let mut last_key: Option<String> = None;
    for line in output.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("Job Id:") {
            blocks.push((rest.trim().to_string(), Map::new()));
            last_key = None;
            continue;
        }
        let Some((_, attrs)) = blocks.last_mut() else {
            if line.trim().is_empty() {
                continue;
            }
            return Err("text before the first `Job Id:` line".into());
        };
        if line.starts_with('\t') {
            if let Some(Value::String(s)) = last_key.as_ref().and_then(|k| attrs.get_mut(k)) {
                s.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let key = k.trim();
            if !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            {
                attrs.insert(key.to_string(), Value::String(v.trim().to_string()));
                last_key = Some(key.to_string());
            }
        }
    }
    Ok(blocks
        .into_iter()
        .map(|(id, a)| {
            let get = |k: &str| text(a.get(k));
            let state = get("job_state").unwrap_or_default();
            Job {
                id,
                name: get("Job_Name").unwrap_or_default(),
                phase: Some(pbs_phase(&state)),
                state,
                host: get("exec_host"),
                comment: get("comment"),
                nodes: get("Resource_List.nodect"),
                walltime: get("resources_used.walltime"),
                estimated_start: get("estimated.start_time"),
                submit_args: get("Submit_arguments"),
                ..Job::default()
            }
        })
        .collect())
}

/// `pbsnodes -a -F json`: counts nodes whose `state` is `free` and whose
/// `resources_available.broken` is not true (FIRST's rule).
pub fn parse_pbsnodes_json(output: &str) -> Result<i64, String> {
    let v: Value = serde_json::from_str(output).map_err(|e| format!("not JSON: {e}"))?;
    let nodes = v
        .get("nodes")
        .and_then(Value::as_object)
        .ok_or("no `nodes` object: not pbsnodes -F json output")?;
    Ok(nodes
        .values()
        .filter(|n| n.get("state").and_then(Value::as_str) == Some("free"))
        .filter(|n| {
            let broken = n.pointer("/resources_available/broken");
            !matches!(broken, Some(Value::Bool(true)))
                && !broken
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.eq_ignore_ascii_case("true"))
        })
        .count() as i64)
}

/// A Slurm number: plain (23.02) or `{set, infinite, number}` (23.11+); `None` when unset
/// or infinite.
fn slurm_number(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::Object(o) => {
            let set = o.get("set").and_then(Value::as_bool).unwrap_or(true);
            let infinite = o.get("infinite").and_then(Value::as_bool).unwrap_or(false);
            if !set || infinite {
                None
            } else {
                o.get("number").and_then(Value::as_i64)
            }
        }
        _ => None,
    }
}

/// Slurm's job state as a phase. 23.02 (data_parser v0.0.39) prints one word, where a
/// flag replaces the base state (`CONFIGURING` is a running job whose nodes still boot,
/// `COMPLETING` one that ends); 23.11+ prints the base state and its flags as a list.
fn slurm_phase(flags: &[String]) -> JobPhase {
    let has = |f: &str| flags.iter().any(|x| x.eq_ignore_ascii_case(f));
    if has("COMPLETING") || has("STAGE_OUT") || has("SIGNALING") {
        JobPhase::Other
    } else if has("CONFIGURING") || has("POWER_UP_NODE") {
        JobPhase::Starting
    } else if has("PENDING") || has("REQUEUED") {
        JobPhase::Queued
    } else if has("RUNNING") || has("RESIZING") {
        JobPhase::Running
    } else {
        JobPhase::Other
    }
}

/// An epoch time as FIRST shows an estimated start (a readable local time), with the
/// epoch beside it.
pub fn readable_time(epoch: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_opt(epoch, 0).single() {
        Some(t) => format!("{} ({epoch})", t.format("%a %b %e %H:%M:%S %Y %Z")),
        None => epoch.to_string(),
    }
}

/// `squeue --json`: `job_state` is a string (23.02, data_parser v0.0.39) or an array of
/// flags (23.11+); times and counts are numbers or `{set, infinite, number}`. Array jobs:
/// a running task shows as `<array_job_id>_<task>`, the pending rest as one record
/// `<array_job_id>_[<array_task_string>]`.
pub fn parse_squeue_json(output: &str) -> Result<Vec<Job>, String> {
    let v: Value = serde_json::from_str(output).map_err(|e| format!("not JSON: {e}"))?;
    let jobs = v
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or("no `jobs` list: not squeue --json output")?;
    jobs.iter()
        .map(|j| {
            let flags: Vec<String> = match j.get("job_state") {
                Some(Value::String(s)) => s.split(',').map(|f| f.trim().to_string()).collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|f| f.as_str().map(String::from))
                    .collect(),
                _ => return Err("a job has no job_state".to_string()),
            };
            let phase = slurm_phase(&flags);
            let id = match j.get("job_id") {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => return Err("a job has no job_id".to_string()),
            };
            let array_job = slurm_number(j.get("array_job_id")).filter(|n| *n > 0);
            let array_tasks = text(j.get("array_task_string")).filter(|s| !s.is_empty());
            let id = match (array_job, slurm_number(j.get("array_task_id")), array_tasks) {
                (Some(parent), _, Some(tasks)) => format!("{parent}_[{tasks}]"),
                (Some(parent), Some(task), None) => format!("{parent}_{task}"),
                _ => id,
            };
            let nodes = text(j.get("nodes")).filter(|s| !s.is_empty());
            Ok(Job {
                id,
                name: text(j.get("name")).unwrap_or_default(),
                state: flags.join(","),
                phase: Some(phase),
                host: nodes.clone(),
                comment: text(j.get("state_reason")).filter(|r| r != "None"),
                nodes: slurm_number(j.get("node_count")).map(|n| n.to_string()),
                walltime: None,
                estimated_start: if phase == JobPhase::Queued {
                    slurm_number(j.get("start_time"))
                        .filter(|t| *t > 0)
                        .map(readable_time)
                } else {
                    None
                },
                command: text(j.get("command")).filter(|s| !s.is_empty()),
                user_comment: text(j.get("comment")).filter(|s| !s.is_empty()),
                ..Job::default()
            })
        })
        .collect()
}

/// An HTTP status source answering FIRST's `/jobs` shape: buckets `running`, `queued`,
/// `stopped`, `others`, `private_batch_*` of `{Models, Framework, Cluster, "Model Status",
/// "Job ID", ...}`, and `cluster_status.free_nodes`.
pub fn parse_first_jobs(output: &str) -> Result<Observation, String> {
    let v: Value = serde_json::from_str(output).map_err(|e| format!("not JSON: {e}"))?;
    // FIRST's qstat function returns a JSON string holding JSON.
    let v = match v {
        Value::String(inner) => {
            serde_json::from_str(&inner).map_err(|e| format!("inner string is not JSON: {e}"))?
        }
        other => other,
    };
    let top = v.as_object().ok_or("not a JSON object")?;
    if !["running", "queued", "stopped", "others"]
        .iter()
        .any(|k| top.contains_key(*k))
    {
        return Err("none of running/queued/stopped/others: not a /jobs document".into());
    }
    let mut jobs = Vec::new();
    for (bucket, default) in [
        ("running", JobPhase::Running),
        ("queued", JobPhase::Queued),
        ("others", JobPhase::Other),
    ] {
        let Some(list) = top.get(bucket).and_then(Value::as_array) else {
            continue;
        };
        for j in list {
            let get = |k: &str| text(j.get(k));
            let phase = match get("Model Status").as_deref() {
                Some("running") => JobPhase::Running,
                Some("starting") | Some("disconnected") => JobPhase::Starting,
                Some("queued") => JobPhase::Queued,
                Some(_) => JobPhase::Other,
                None => default,
            };
            jobs.push(Job {
                id: get("Job ID").unwrap_or_default(),
                name: get("Job Name").unwrap_or_default(),
                state: get("Job State").unwrap_or_else(|| phase.name().to_string()),
                phase: Some(phase),
                host: get("Host Name").filter(|h| h != "N/A"),
                comment: get("Job Comments"),
                nodes: get("Nodes Reserved"),
                walltime: get("Walltime"),
                estimated_start: get("Estimated Start Time"),
                models: get("Models"),
                framework: get("Framework"),
                ..Job::default()
            });
        }
    }
    let free_nodes = top
        .get("cluster_status")
        .and_then(|s| s.get("free_nodes"))
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0);
    Ok(Observation {
        jobs,
        free_nodes,
        skipped: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PBS_JSON: &str = include_str!("../tests/data/qstat-f-F-json.json");
    const PBS_TEXT: &str = include_str!("../tests/data/qstat-xf.txt");
    const PBSNODES: &str = include_str!("../tests/data/pbsnodes-a-F-json.json");
    const SQUEUE_2311: &str = include_str!("../tests/data/squeue-23.11.json");
    const SQUEUE_2302: &str = include_str!("../tests/data/squeue-23.02.json");

    #[test]
    fn pbs_json_running_and_queued() {
        let jobs = parse_pbs_json(PBS_JSON).unwrap().jobs;
        assert_eq!(jobs.len(), 2);
        let r = &jobs[0];
        assert_eq!(r.id, "123456.sophia-pbs-01");
        assert_eq!(r.name, "parsl.GlobusComputeEngine.block-0.1717420000.12");
        assert!(r.serves("sophia-llama8b", "x", "vllm", None));
        assert!(!r.serves("sophia-llama70b", "x", "vllm", None));
        assert!(!r.serves("llama8b", "x", "vllm", None));
        assert_eq!(r.phase(), JobPhase::Running);
        assert_eq!(r.host.as_deref(), Some("sophia-gpu-07/0*64"));
        assert_eq!(r.nodes.as_deref(), Some("1"));
        assert_eq!(r.walltime.as_deref(), Some("03:12:44"));
        let q = &jobs[1];
        assert_eq!(q.phase(), JobPhase::Queued);
        assert_eq!(
            q.estimated_start.as_deref(),
            Some("Mon Jun  3 11:00:00 2024")
        );
        assert_eq!(
            q.comment.as_deref(),
            Some("Not Running: Insufficient amount of resource: ngpus")
        );
    }

    #[test]
    fn pbs_json_without_jobs_is_empty() {
        let out = r#"{"timestamp":1717430400,"pbs_version":"2022.1.5","pbs_server":"s"}"#;
        assert_eq!(parse_pbs_json(out).unwrap(), Observation::default());
        assert!(parse_pbs_json("{\"jobs\":[]}").is_err());
        assert!(parse_pbs_json("qstat: command not found").is_err());
    }

    #[test]
    fn pbs_text_with_continuations_and_dotted_keys() {
        let jobs = parse_pbs_text(PBS_TEXT).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].id, "123456.sophia-pbs-01");
        assert_eq!(
            jobs[0].name,
            "parsl.GlobusComputeEngine.block-0.1717420000.12"
        );
        assert!(jobs[0].serves("sophia-llama8b", "x", "vllm", None));
        assert!(jobs[1].serves("sophia-llama70b", "x", "vllm", None));
        assert_eq!(jobs[0].phase(), JobPhase::Running);
        assert_eq!(
            jobs[0].comment.as_deref(),
            Some("Job run at Mon Jun 03 at 09:00 on (sophia-gpu-07:ncpus=64:ngpus=8)")
        );
        assert_eq!(jobs[0].walltime.as_deref(), Some("03:12:44"));
        assert_eq!(jobs[1].phase(), JobPhase::Queued);
        assert_eq!(jobs[1].nodes.as_deref(), Some("1"));
        assert_eq!(
            jobs[1].estimated_start.as_deref(),
            Some("Mon Jun  3 11:00:00 2024")
        );
    }

    #[test]
    fn pbsnodes_counts_free_unbroken_nodes() {
        assert_eq!(parse_pbsnodes_json(PBSNODES).unwrap(), 2);
        assert!(parse_pbsnodes_json("{}").is_err());
    }

    const SQUEUE_2405: &str = include_str!("../tests/data/squeue-24.05.json");
    const POLARIS: &str = include_str!("../tests/data/qstat-f-F-json-polaris.txt");

    #[test]
    fn squeue_23_02_23_11_and_24_05_forms() {
        for out in [SQUEUE_2302, SQUEUE_2311, SQUEUE_2405] {
            let jobs = parse_squeue_json(out).unwrap();
            assert_eq!(jobs.len(), 9, "{out}");
            assert_eq!(jobs[0].id, "481516");
            assert_eq!(jobs[0].name, "vllm-llama8b");
            assert_eq!(jobs[0].phase(), JobPhase::Running);
            assert_eq!(jobs[0].host.as_deref(), Some("gpu-node014"));
            assert_eq!(jobs[0].nodes.as_deref(), Some("1"));
            assert_eq!(jobs[1].phase(), JobPhase::Queued);
            let start = jobs[1].estimated_start.as_deref().unwrap();
            assert!(start.ends_with(" (1717430400)"), "{start}");
            assert!(start.contains("2024"), "{start}");
            assert_eq!(jobs[1].comment.as_deref(), Some("Resources"));
            // 23.02 prints CONFIGURING alone, 23.11+ RUNNING and CONFIGURING.
            assert_eq!(jobs[2].phase(), JobPhase::Starting, "{}", jobs[2].state);
            // Endpoint jobs are matched by their script, their name or their comment.
            assert!(jobs[3].serves("polaris-qwen", "m", "vllm", None));
            assert!(!jobs[3].serves("polaris", "m", "vllm", None));
            let mep = "5f1c7e0a-2b64-4b0e-9d8e-3c41a2f0b7d1";
            assert!(jobs[4].serves("polaris-mep", "m", "vllm", Some(mep)));
            assert!(!jobs[4].serves("polaris-mep", "m", "vllm", None));
            assert_eq!(jobs[4].phase(), JobPhase::Queued);
            assert!(jobs[5].serves("polaris-gemma", "m", "vllm", None));
            assert!(jobs[0].serves("vllm-llama8b", "m", "vllm", None));
            // Array job: the running task, and the waiting rest as one record.
            assert_eq!(jobs[6].id, "481530_1");
            assert_eq!(jobs[6].phase(), JobPhase::Running);
            assert_eq!(jobs[7].id, "481530_[2-9]");
            assert_eq!(jobs[7].phase(), JobPhase::Queued);
            assert_eq!(jobs[7].estimated_start, None);
            // A finishing job serves nothing.
            assert_eq!(jobs[8].phase(), JobPhase::Other, "{}", jobs[8].state);
        }
    }

    #[test]
    fn slurm_23_02_single_word_states() {
        let phase = |s: &str| slurm_phase(&[s.to_string()]);
        assert_eq!(phase("CONFIGURING"), JobPhase::Starting);
        assert_eq!(phase("POWER_UP_NODE"), JobPhase::Starting);
        assert_eq!(phase("COMPLETING"), JobPhase::Other);
        assert_eq!(phase("REQUEUED"), JobPhase::Queued);
        assert_eq!(phase("RESIZING"), JobPhase::Running);
        assert_eq!(phase("NODE_FAIL"), JobPhase::Other);
    }

    #[test]
    fn polaris_output_with_bad_jobs_keeps_the_readable_ones() {
        assert!(serde_json::from_str::<Value>(POLARIS).is_err(), "not JSON");
        let o = parse_pbs_json(POLARIS).unwrap();
        assert_eq!(o.skipped, 1, "the job with `mem:16gb`");
        let ids: Vec<&str> = o.jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "2101234.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov",
                "2101240.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov",
                "2101241[].polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov",
                "2101260.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov",
            ]
        );
        assert_eq!(o.jobs[0].phase(), JobPhase::Running);
        assert!(o.jobs[0].serves("polaris-llama8b", "m", "vllm", None));
        assert_eq!(o.jobs[1].phase(), JobPhase::Queued);
        // `B`, an array parent, is not a running job.
        assert_eq!(o.jobs[2].phase(), JobPhase::Other);
        let mep = "6a0d3c8e-9f0b-4b7e-a1c2-0d9e8f7a6b5c";
        assert!(o.jobs[3].serves("polaris-mep", "m", "vllm", Some(mep)));
        assert!(!o.jobs[3].serves("polaris-mep", "m", "vllm", Some("another")));
        assert_eq!(parse_pbs_json("").unwrap(), Observation::default());
    }

    #[test]
    fn first_jobs_document_plain_or_as_a_json_string() {
        let doc = r#"{"running":[{"Models":"m1","Framework":"vllm","Cluster":"c","Model Status":"starting","Job ID":"1.s"}],
            "queued":[{"Models":"m2","Framework":"vllm","Cluster":"c","Model Status":"queued"}],
            "others":[],"cluster_status":{"free_nodes":3}}"#;
        let o = parse_first_jobs(doc).unwrap();
        assert_eq!(o.free_nodes, Some(3));
        assert_eq!(o.jobs[0].phase(), JobPhase::Starting);
        assert!(o.jobs[0].serves("any", "m1", "vllm", None));
        assert!(!o.jobs[0].serves("any", "m1", "sglang", None));
        assert!(!o.jobs[0].serves("m1", "m2", "vllm", None));
        assert_eq!(o.jobs[1].phase(), JobPhase::Queued);
        let quoted = serde_json::to_string(&Value::String(doc.to_string())).unwrap();
        assert_eq!(parse_first_jobs(&quoted).unwrap(), o);
        assert!(parse_first_jobs(r#"{"hello":1}"#).is_err());
    }
}
