//! Assembles the router and serves it on a listener until shutdown.

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{Router, extract::FromRef, middleware, serve::ListenerExt as _};
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

/// The whole REST API as one router. Needs a Tokio runtime (the core channel's balancer).
pub(crate) fn router(config: &EdgeConfig) -> anyhow::Result<Router> {
    let (api, mut document) = routes::api().split_for_parts();
    openapi::document_common_headers(&mut document);
    let state = AppState {
        core: CoreClient::new(config)?,
        body_limit: BodyLimit(config.max_body_bytes),
        openapi: OpenApiJson(Arc::from(document.to_json()?)),
        draining: Draining(config.draining.clone()),
    };
    let draining = state.draining.clone();
    Ok(api
        .merge(crate::dashboard::router())
        .route_layer(middleware::from_fn(crate::observe::remember_route))
        // Must come after the routes: it applies to the method routers that exist.
        .method_not_allowed_fallback(fallback::method_not_allowed)
        .fallback(fallback::not_found)
        .layer(middleware::from_fn_with_state(
            draining,
            headers::refuse_while_draining,
        ))
        .layer(middleware::from_fn(headers::stamp))
        .with_state(state))
}

/// Serves the REST API on an already-bound listener until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    config: EdgeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(&config)?;
    // Small JSON answers: don't let Nagle hold them back.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::trace!(%error, "could not set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
