//! `llamagen serve`: the model loaded once behind an HTTP API, with continuous batching (see `scheduler`).
//!
//! Threads: the scheduler owns the model on its own OS thread (the CPU backend's worker team runs under it); the
//! HTTP side is a small tokio runtime whose handlers only parse, queue and wait.
pub mod api;
pub mod metrics;
pub mod scheduler;

use crate::model::gpt_continuous::ContinuousGpt;
use crate::model::vq::VqRunner;
use crate::{Error, Result};
use std::net::SocketAddr;
use std::sync::Arc;

pub use api::{Defaults, ModelInfo, MAX_N};

pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Images waiting for admission before requests are refused with 503.
    pub max_queue: usize,
    /// Largest request body in bytes (413 above it).
    pub body_limit: usize,
    /// HTTP worker threads (parsing and base64 only; the model has its own thread).
    pub http_threads: usize,
    /// Finished images per VQ decode (see `scheduler::Scheduler`).
    pub vq_batch: usize,
}

/// Serves until SIGTERM or Ctrl-C, then stops admitting, answers every accepted request and returns.
/// `on_listen` gets the bound address (the port may have been 0).
pub fn serve(
    gpt: ContinuousGpt,
    vq: VqRunner,
    model: ModelInfo,
    opts: ServeOptions,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<()> {
    let queue = scheduler::Queue::new(opts.max_queue);
    let metrics = Arc::new(metrics::Metrics::default());
    let sched = scheduler::Scheduler::new(gpt, vq, opts.vq_batch, Arc::clone(&queue), Arc::clone(&metrics));
    let worker = std::thread::Builder::new()
        .name("llamagen-scheduler".into())
        .spawn(move || sched.run())
        .map_err(|e| Error::Invalid(format!("cannot start the scheduler thread: {e}")))?;
    let state = api::AppState {
        queue: Arc::clone(&queue),
        metrics,
        model: Arc::new(model),
        body_limit: opts.body_limit,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.http_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the HTTP runtime: {e}")))?;
    let q = Arc::clone(&queue);
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|e| Error::Invalid(format!("cannot listen on {}: {e}", opts.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Invalid(format!("listening socket: {e}")))?;
        on_listen(addr);
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                tracing::info!("shutting down: no new requests; finishing the accepted ones");
                q.close();
            })
            .await
            .map_err(|e| Error::Invalid(format!("HTTP server: {e}")))
    });
    queue.close();
    worker
        .join()
        .map_err(|_| Error::Invalid("the scheduler thread panicked".into()))?;
    served
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
