//! The HTTP server of `/metrics` and the JSON status API.

use std::sync::Arc;

use metrics::gauge;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::prometheus::prometheus;
use crate::Telemetry;

/// Serves `GET /metrics` (Prometheus text), `GET /api/v1/sessions`,
/// `GET /api/v1/sessions/ended`, `GET /api/v1/connections` and `GET /api/v1/events` (JSON) on `listener` until
/// `shutdown`. The figures are refreshed by [`Telemetry::run_ticks`], which the hop runs
/// whether or not anything is served.
pub async fn serve(telemetry: Arc<Telemetry>, listener: TcpListener, shutdown: CancellationToken) {
    use axum::routing::get;
    let handle = prometheus();
    let role = telemetry.role.as_str();
    gauge!("rtmpq_sessions_open", "role" => role).increment(0.0);
    gauge!("rtmpq_connections_open", "role" => role).increment(0.0);
    let sessions = telemetry.clone();
    let ended = telemetry.clone();
    let connections = telemetry.clone();
    let events = telemetry.clone();
    let app = axum::Router::new()
        // Rendering walks every series: off the runtime's worker threads.
        .route(
            "/metrics",
            get(move || async move {
                tokio::task::spawn_blocking(move || handle.render())
                    .await
                    .unwrap_or_default()
            }),
        )
        .route(
            "/api/v1/sessions",
            get(move || async move { axum::Json(sessions.sessions()) }),
        )
        .route(
            "/api/v1/sessions/ended",
            get(move || async move { axum::Json(ended.ended_sessions()) }),
        )
        .route(
            "/api/v1/connections",
            get(move || async move { axum::Json(connections.connections()) }),
        )
        .route(
            "/api/v1/events",
            get(move || async move { axum::Json(events.events()) }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(reason = %e, "metrics server stopped");
    }
}
