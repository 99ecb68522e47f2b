//! The request log through a database outage, on the real binary under continuous load:
//! while the database is away rows wait in the spill file; once it is back the table
//! catches up while traffic goes on (the spill file is drained, not left until the next
//! start); and a SIGTERM leaves every row in the table, once, and the spill file empty.
//! SQLite: a second connection holds `BEGIN EXCLUSIVE`. PostgreSQL: a private server
//! (`initdb`, `pg_ctl stop -m immediate`, started again); skipped with a notice when the
//! PostgreSQL binaries are missing.
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::binary::{spawn_gateway, Binary};
use crate::common::private_pg::PrivatePg;
use crate::common::*;
use inference_gateway::actors::log_writer::Spill;
use inference_gateway::store::{self, DatabaseUrl, LogRow, UsageFilter};

/// Requests answered (any status) by the load, and whether it should go on.
struct Load {
    answered: Arc<AtomicU64>,
    run: Arc<AtomicBool>,
    tasks: Vec<actix_rt::task::JoinHandle<()>>,
}

/// `clients` loops each sending a chat request with a unique `x-request-id`, then
/// pausing `pause`; bounded by `max` in time.
fn start_load(url: &str, clients: usize, pause: Duration, max: Duration) -> Load {
    let answered = Arc::new(AtomicU64::new(0));
    let run = Arc::new(AtomicBool::new(true));
    let until = Instant::now() + max;
    let tasks = (0..clients)
        .map(|c| {
            let (answered, run, url) = (answered.clone(), run.clone(), url.to_string());
            actix_rt::spawn(async move {
                let client = awc::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .finish();
                let mut i = 0u64;
                while run.load(Ordering::Relaxed) && Instant::now() < until {
                    let mut res = client
                        .post(format!("{url}/v1/chat/completions"))
                        .insert_header(("x-request-id", format!("load-{c}-{i}")))
                        .send_json(&chat("llama"))
                        .await
                        .expect("the gateway answers during the outage");
                    let _ = res.body().await;
                    answered.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    actix_rt::time::sleep(pause).await;
                }
            })
        })
        .collect();
    Load {
        answered,
        run,
        tasks,
    }
}

impl Load {
    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    async fn stop(self) -> u64 {
        self.run.store(false, Ordering::Relaxed);
        let answered = self.answered;
        for t in self.tasks {
            t.await.unwrap();
        }
        answered.load(Ordering::Relaxed)
    }
}

/// The gateway's log lines about the request log.
fn tail(s: &str) -> String {
    s.lines()
        .filter(|l| l.contains("request log"))
        .take(20)
        .collect::<Vec<_>>()
        .join("\n")
}

async fn all_rows(db: &DatabaseUrl) -> Vec<LogRow> {
    let store = store::open(db, 1, Duration::from_secs(10)).unwrap();
    store
        .list_log(UsageFilter::default(), 1_000_000)
        .await
        .unwrap()
}

/// Outage → catch up under load → SIGTERM → every row once, spill file empty.
/// `outage` starts the outage and returns once it is over (it runs on its own thread).
async fn outage_under_load(
    name: &str,
    db: DatabaseUrl,
    db_config_url: String,
    outage: impl FnOnce() + Send + 'static,
) {
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_fixtures(dir.path(), &[target("a", "llama", mock.url())], &[]);
    let spill_dir = dir.path().join("data").join("log-spill");
    let env = [
        ("GATEWAY__LOGGING__LEVEL", "warning".to_string()),
        ("GATEWAY__DATABASE__URL", db_config_url),
        ("GATEWAY__DATABASE__TIMEOUT_SECS", "1".to_string()),
        ("GATEWAY__LOGGING__FLUSH_INTERVAL_MS", "100".to_string()),
        ("GATEWAY__LOGGING__RETRY_INTERVAL_SECS", "1".to_string()),
        ("GATEWAY__LOGGING__BATCH_SIZE", "50".to_string()),
    ];
    let mut gw: Binary = spawn_gateway(dir.path(), &env);
    gw.wait_ready().await;
    // About 150 requests a second, for at most 40 s.
    let load = start_load(
        &gw.url,
        4,
        Duration::from_millis(25),
        Duration::from_secs(40),
    );
    actix_rt::time::sleep(Duration::from_millis(800)).await;
    let before = load.answered();
    let outage = std::thread::spawn(outage);
    while !outage.is_finished() {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    outage.join().unwrap();
    let at_end = load.answered();
    let spill = Spill::new(spill_dir.clone());
    assert!(
        gw.stdout_text()
            .contains("request log: database write failed; spilling to file"),
        "{name}: the outage made the writer spill"
    );
    assert!(
        at_end > before + 100,
        "{name}: the load went on during the outage ({before} → {at_end})"
    );

    // Traffic goes on; the table must catch up with it and the spill file be drained.
    let back = Instant::now();
    let mut history: Vec<(Instant, u64)> = Vec::new();
    let caught_up = loop {
        let now = Instant::now();
        history.push((now, load.answered()));
        // Everything answered a second ago must be stored by now.
        let due = history
            .iter()
            .rev()
            .find(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
            .map_or(0, |(_, n)| *n);
        let pending = spill.pending().unwrap();
        let stored = all_rows(&db).await.len() as u64;
        if pending == 0 && due > at_end && stored >= due {
            break now.duration_since(back);
        }
        assert!(
            now.duration_since(back) < Duration::from_secs(20),
            "{name}: 20 s after the outage the table has {stored} rows, {due} were answered \
             a second before, {pending} rows still in the spill file; log: {}",
            tail(&gw.stdout_text())
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("{name}: caught up {caught_up:?} after the outage");
    let answered = load.stop().await;

    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)).await, Some(0));
    assert_eq!(spill.pending().unwrap(), 0, "{name}: spill file empty");
    let rows = all_rows(&db).await;
    let ids: HashSet<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "{name}: no row twice");
    assert_eq!(
        rows.len() as u64,
        answered,
        "{name}: one row per answered request after SIGTERM"
    );
}

#[actix_rt::test]
async fn sqlite_locked_for_seconds_catches_up_under_load_and_sigterm_keeps_every_row() {
    let db = crate::common::db::TestDb::sqlite();
    let crate::common::db::TestDb::Sqlite { path, .. } = &db else {
        unreachable!()
    };
    store::migrate::run(&db.url()).unwrap();
    let locked: &Path = path;
    let locked = locked.to_path_buf();
    outage_under_load("sqlite", db.url(), db.config_url(), move || {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut c =
            diesel::sqlite::SqliteConnection::establish(&locked.display().to_string()).unwrap();
        c.batch_execute("PRAGMA busy_timeout = 10000; BEGIN EXCLUSIVE")
            .unwrap();
        std::thread::sleep(Duration::from_secs(7));
        c.batch_execute("COMMIT").unwrap();
    })
    .await;
}

#[actix_rt::test]
async fn postgres_stopped_and_started_catches_up_under_load_and_sigterm_keeps_every_row() {
    let test = "postgres_stopped_and_started_catches_up_under_load_and_sigterm_keeps_every_row";
    let Some(mut pg) = PrivatePg::start(test) else {
        return;
    };
    let url = pg.url();
    let db = DatabaseUrl::Postgres(url.clone());
    store::migrate::run(&db).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<PrivatePg>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<PrivatePg>();
    tx.send(pg).unwrap();
    outage_under_load("postgres", db, url, move || {
        let mut pg = rx.recv().unwrap();
        pg.stop_immediate();
        std::thread::sleep(Duration::from_secs(4));
        pg.start_again();
        back_tx.send(pg).unwrap();
    })
    .await;
    pg = back_rx.recv().unwrap();
    drop(pg);
}
