//! The real `inference-gateway` binary as a child process on a free 127.0.0.1 port, with
//! its stdout (the JSON log) captured: for what only a process shows (signals, `kill -9`,
//! systemd's notify protocol, a restart on the same data directory).

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Binary {
    pub child: Child,
    pub url: String,
    pub port: u16,
    stdout: Arc<Mutex<Vec<u8>>>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The gateway binary's path, for a caller that wraps it (`sh -c ... exec`).
pub fn gateway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_inference-gateway")
}

/// Starts `cmd` (the binary or a wrapper of it, its arguments set) with fixtures from
/// `dir`, its own database under `dir/data` (never the work tree's ./data), one worker, no
/// active health checks, info logs, and no systemd variables from the test's own
/// environment; then `env`, which may override any of these.
pub fn spawn_binary(mut cmd: Command, dir: &Path, env: &[(&str, String)]) -> Binary {
    let port = free_port();
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env("GATEWAY__FIXTURES__DIR", dir)
        .env("GATEWAY__STORAGE__DATA_DIR", dir.join("data"))
        .env("GATEWAY__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("GATEWAY__SERVER__WORKERS", "1")
        .env("GATEWAY__HEALTH__PATH", "")
        .env("GATEWAY__LOGGING__LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let mut pipe = child.stdout.take().unwrap();
    let sink = Arc::clone(&stdout);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    Binary {
        child,
        url: format!("http://127.0.0.1:{port}"),
        port,
        stdout,
    }
}

/// `inference-gateway serve`, as [`spawn_binary`] sets it up.
pub fn spawn_gateway(dir: &Path, env: &[(&str, String)]) -> Binary {
    let mut cmd = Command::new(gateway_bin());
    cmd.arg("serve");
    spawn_binary(cmd, dir, env)
}

impl Binary {
    /// Waits (20 s at most) for `/health` to answer 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = awc::Client::default();
        loop {
            if let Ok(res) = client.get(format!("{}/health", self.url)).send().await {
                if res.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway never became ready: {}",
                self.stdout_text()
            );
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends the signal `name` (`TERM`, `HUP`, `KILL`...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// `kill -9`, and reaps the process.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gateway did not exit within {within:?}");
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Its stdout's JSON log lines so far (other lines skipped).
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.stdout_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
