//! A private PostgreSQL server for fault tests: `initdb` into a temp directory owned by the
//! `postgres` user, `pg_ctl start` on a free loopback port, `pg_ctl stop -m immediate` for
//! an outage, started again on the same port and data. Never the shared server. Without
//! the PostgreSQL binaries (or the `postgres` user) `start` says loudly that the test did
//! not run and returns None.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivatePg {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
}

/// The directory holding `initdb` and `pg_ctl`: on PATH, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn pg_bin_dir() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").exists() && d.join("pg_ctl").exists() {
                return Some(d);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivatePg {
    /// Creates and starts a server, or None (with a NOT RUN notice naming `test`).
    pub fn start(test: &str) -> Option<PrivatePg> {
        let Some(bin) = pg_bin_dir() else {
            eprintln!("NOT RUN on a private PostgreSQL: {test}: initdb/pg_ctl not found");
            return None;
        };
        let has_user = Command::new("id")
            .arg("postgres")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_user {
            eprintln!("NOT RUN on a private PostgreSQL: {test}: no `postgres` user");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // The postgres user must reach the directory and own the data under it.
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let status = Command::new("chmod")
            .args(["755", &dir.path().display().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = Command::new("chown")
            .args(["-R", "postgres", &data.display().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = as_postgres(&bin.join("initdb"))
            .args(["-D", &data.display().to_string()])
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PrivatePg {
            bin,
            dir,
            port: free_port(),
            running: false,
        };
        pg.start_again();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn start_again(&mut self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data().display()
        );
        let out = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D", &self.data().display().to_string()])
            .args(["-o", &opts, "-l"])
            .arg(self.data().join("server.log"))
            .args(["-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.data().join("server.log")).unwrap_or_default()
        );
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the private PostgreSQL never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `pg_ctl stop -m immediate`: the outage.
    pub fn stop_immediate(&mut self) {
        let out = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D", &self.data().display().to_string()])
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    // The test runs from a directory the postgres user may not read.
    cmd.current_dir("/");
    cmd
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        if self.running {
            let _ = as_postgres(&self.bin.join("pg_ctl"))
                .args(["-D", &self.data().display().to_string()])
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}
