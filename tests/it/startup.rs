//! The real binary when it cannot start: a port already in use is one clear error line
//! naming the address and exit code 1, not a cascade of panics from a half-built system.
use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::binary::gateway_bin;

#[test]
fn a_port_in_use_is_one_error_line_naming_the_address_and_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("endpoints.json"), "[]").unwrap();
    let mut child = Command::new(gateway_bin())
        .arg("serve")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env("GATEWAY__FIXTURES__DIR", dir.path())
        .env("GATEWAY__STORAGE__DATA_DIR", dir.path().join("data"))
        .env("GATEWAY__SERVER__BIND", &addr)
        .env("GATEWAY__SERVER__WORKERS", "1")
        .env("GATEWAY__HEALTH__PATH", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway kept running on a port in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    drop(taken);

    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panics on stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line, got: {stderr}");
    assert!(
        lines[0].contains(&addr) && lines[0].contains("in use"),
        "the line names the address and the cause: {}",
        lines[0]
    );
    // The JSON log says the same, once.
    let crit: Vec<&str> = stdout.lines().filter(|l| l.contains("CRIT")).collect();
    assert_eq!(crit.len(), 1, "stdout: {stdout}");
    assert!(crit[0].contains(&addr), "{}", crit[0]);
}
