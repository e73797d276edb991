//! Assembles the router and serves it on a listener until shutdown.

use std::{future::Future, sync::Arc};

use axum::{Router, extract::FromRef, middleware};
use tokio::net::TcpListener;

use crate::{
    EdgeConfig,
    core_client::CoreClient,
    extract::BodyLimit,
    headers,
    openapi::{self, OpenApiJson},
    routes::{self, fallback},
};

/// What handlers share: the core channel, the body limit, the OpenAPI document.
#[derive(Debug, Clone, FromRef)]
pub(crate) struct AppState {
    core: CoreClient,
    body_limit: BodyLimit,
    openapi: OpenApiJson,
    draining: Draining,
}

/// Whether this edge is draining (shutting down).
#[derive(Debug, Clone)]
pub(crate) struct Draining(pub(crate) std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Draining {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The whole REST API as one router. Needs a Tokio runtime (the core connections' tasks).
pub(crate) fn router(config: &EdgeConfig) -> anyhow::Result<Router> {
    let (api, mut document) = routes::api().split_for_parts();
    openapi::document_common_headers(&mut document);
    let state = AppState {
        core: CoreClient::new(config)?,
        body_limit: BodyLimit(config.max_body_bytes),
        openapi: OpenApiJson(Arc::from(document.to_json()?)),
        draining: Draining(config.draining.clone()),
    };
    let gate = headers::Gate {
        max_header_bytes: config.max_header_bytes,
        draining: state.draining.clone(),
        forwarding: Arc::new(config.forwarding.clone()),
    };
    Ok(api
        .merge(crate::dashboard::router())
        .route_layer(middleware::from_fn(crate::observe::remember_route))
        // Must come after the routes: it applies to the method routers that exist.
        .method_not_allowed_fallback(fallback::method_not_allowed)
        .fallback(fallback::not_found)
        // The JSON routes read their bodies themselves (`extract::JsonBody`, the envelope's 413);
        // this holds axum's own extractors, the dashboard's forms, to the same limit.
        .layer(axum::extract::DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(gate, headers::stamp))
        .with_state(state))
}

/// Serves the REST API on an already-bound listener until `shutdown` resolves, then lets the
/// requests in flight finish. With `config.tls` the listener speaks HTTPS.
pub async fn serve(
    listener: TcpListener,
    config: EdgeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(&config)?;
    let connections = connection::Connections::new(&config)?;
    connections.serve(listener, app, shutdown).await;
    Ok(())
}

mod connection;

#[cfg(test)]
mod tests;
