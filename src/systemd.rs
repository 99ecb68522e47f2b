//! The systemd notify protocol (`Type=notify`): READY=1 once the listener is bound,
//! WATCHDOG=1 at half of `WATCHDOG_USEC` from an interval on the actix system thread (so a
//! wedged system thread stops the pings and systemd restarts us), RELOADING=1/READY=1
//! around reloads and STOPPING=1 on shutdown. Every call is a no-op without
//! `NOTIFY_SOCKET` (not under systemd), and a failed send is logged, never fatal.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(log: &slog::Logger, states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        slog::warn!(log, "systemd notify failed"; "error" => e.to_string());
    }
}

pub fn ready(log: &slog::Logger) {
    send(log, &[NotifyState::Ready, NotifyState::Status("serving")]);
}

pub fn reloading(log: &slog::Logger) {
    send(
        log,
        &[NotifyState::Reloading, NotifyState::Status("reloading")],
    );
}

pub fn stopping(log: &slog::Logger) {
    send(
        log,
        &[NotifyState::Stopping, NotifyState::Status("stopping")],
    );
}

/// Half the watchdog period systemd asked for, if it asked (`WatchdogSec=`).
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

/// Pings the watchdog every half period from the current (actix system) thread.
pub fn spawn_watchdog(log: slog::Logger) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    slog::info!(log, "systemd watchdog on"; "interval_ms" => every.as_millis() as u64);
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(every);
        loop {
            tick.tick().await;
            send(&log, &[NotifyState::Watchdog]);
        }
    });
}
