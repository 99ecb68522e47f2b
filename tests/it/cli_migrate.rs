//! `inference-gateway migrate` against the real binary: applies the migrations once, is a
//! no-op after, and refuses a bare path to a database that does not exist.
use std::process::Command;

fn gateway(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_inference-gateway"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEWAY__") || k == "STATE_DIRECTORY" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn migrate_applies_once_then_is_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_dir = data.display().to_string();
    let envs = [("GATEWAY__STORAGE__DATA_DIR", data_dir.as_str())];
    let (code, out, err) = gateway(&["migrate"], &envs);
    assert_eq!(code, 0, "{out}{err}");
    let db = data.join("gateway.db");
    assert!(out.contains(&format!("sqlite://{}", db.display())), "{out}");
    assert!(
        out.contains(
            "applied 20261123000001, 20261123000002, 20261123000003, 20261123000004, \
             20261123000005"
        ),
        "{out}"
    );
    assert!(db.is_file());
    let (code, out, _) = gateway(&["migrate"], &envs);
    assert_eq!(code, 0);
    assert!(out.contains("up to date"), "{out}");
}

#[test]
fn a_bare_path_that_does_not_exist_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gatway.db");
    let missing = missing.display().to_string();
    let (code, _, err) = gateway(
        &["migrate"],
        &[("GATEWAY__DATABASE__URL", missing.as_str())],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("database.url"), "{err}");
    assert!(!std::path::Path::new(&missing).exists());
}

#[test]
fn a_postgres_password_is_never_printed() {
    // Nothing listens on port 1: the connection fails, and the error must not echo the URL's
    // password.
    let (code, out, err) = gateway(
        &["migrate"],
        &[(
            "GATEWAY__DATABASE__URL",
            "postgres://igw:sup3rsecret@127.0.0.1:1/igw",
        )],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("database.url (postgres://igw:***@127.0.0.1:1/igw)"),
        "{err}"
    );
    assert!(
        !err.contains("sup3rsecret") && !out.contains("sup3rsecret"),
        "{err}"
    );
}
