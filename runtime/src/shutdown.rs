//! One shutdown signal per process: SIGTERM or Ctrl-C trips it; servers hold
//! futures that resolve when it trips, and readiness turns false at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    draining: Arc<AtomicBool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Self {
            tx: Arc::new(tx),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts draining: readiness turns false and every `wait` resolves.
    pub fn trigger(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.tx.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once [`Shutdown::trigger`] has been called.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Runs `server` to completion, but once draining has begun gives it at
    /// most `bound` to finish what is in flight.
    pub async fn drain_within<F>(&self, server: F, bound: std::time::Duration) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = anyhow::Result<()>>,
    {
        let deadline = {
            let stop = self.wait();
            async move {
                stop.await;
                tokio::time::sleep(bound).await;
            }
        };
        tokio::select! {
            outcome = server => outcome,
            () = deadline => {
                tracing::warn!(?bound, "drain bound reached; exiting with work still in flight");
                Ok(())
            }
        }
    }

    /// Trips on SIGTERM or Ctrl-C.
    pub fn on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            terminate_signal().await;
            tracing::info!("shutdown signal received: draining (readiness is now false)");
            this.trigger();
        });
    }
}

async fn terminate_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
