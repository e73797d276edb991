//! The Tokio runtime both binaries run on, sized by `--worker-threads`.

use std::num::NonZeroUsize;

/// The runtime's size: flattened into both binaries' command lines.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct RuntimeArgs {
    /// Tokio worker threads. Default: one per CPU the process may use (cgroup quotas count).
    /// On a machine shared with Redis and other replicas, fewer workers mean fewer wake-ups
    /// and context switches per request.
    #[arg(long, env = "OPENCLAW_WORKER_THREADS", global = true)]
    pub worker_threads: Option<NonZeroUsize>,
}

impl RuntimeArgs {
    /// A multi-threaded runtime with every driver enabled.
    pub fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        if let Some(workers) = self.worker_threads {
            builder.worker_threads(workers.get());
        }
        builder.build()
    }
}
