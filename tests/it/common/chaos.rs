//! A loopback TCP chaos proxy: accepts on 127.0.0.1:0 and forwards to a real server (the
//! test PostgreSQL). `sever` cuts every open connection and closes new ones at once;
//! `restore` forwards again. Runs on its own thread and runtime, so it works whatever the
//! test's runtime does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct ChaosProxy {
    pub addr: SocketAddr,
    broken: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    refused: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChaosProxy {
    pub fn start(upstream: SocketAddr) -> ChaosProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let broken = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let refused = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (b, c, r) = (broken.clone(), conns.clone(), refused.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((mut client, _)) = listener.accept().await else {
                            continue;
                        };
                        if b.load(Ordering::SeqCst) {
                            r.fetch_add(1, Ordering::SeqCst);
                            drop(client);
                            continue;
                        }
                        let task = tokio::spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(upstream).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                        let mut conns = c.lock().unwrap();
                        conns.retain(|h| !h.is_finished());
                        conns.push(task.abort_handle());
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        ChaosProxy {
            addr,
            broken,
            conns,
            refused,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Cuts every forwarded connection and turns new ones away.
    pub fn sever(&self) {
        self.broken.store(true, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    pub fn restore(&self) {
        self.broken.store(false, Ordering::SeqCst);
    }

    /// Connections turned away while severed.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.sever();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
