//! The Prometheus endpoint: one registry for the whole agent, served by axum at `/metrics`.

use std::net::TcpListener;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Registers `berth_build_info{version} 1`.
pub fn register_build_info(registry: &mut Registry) {
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    registry.register(
        "berth_build_info",
        "berthd build information; always 1",
        info,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CgroupLabels {
    driver: &'static str,
    hierarchy: &'static str,
}

/// Registers `berth_cgroup_info{driver,hierarchy} 1`: the configured cgroup driver (which must
/// match kubelet's) and the host's layout (`v1`, `hybrid` or `v2`).
pub fn register_cgroup_info(registry: &mut Registry, driver: berth_runtime::CgroupDriver) {
    let info = Family::<CgroupLabels, Gauge>::default();
    info.get_or_create(&CgroupLabels {
        driver: driver.as_str(),
        hierarchy: berth_runtime::cgroups::layout(&berth_runtime::cgroups::hierarchies()),
    })
    .set(1);
    registry.register(
        "berth_cgroup_info",
        "the cgroup driver berthd runs with and the host's cgroup layout; always 1",
        info,
    );
}

/// Serves `/metrics` on an already bound listener until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { encode(&registry) }
        }),
    );
    axum::serve(listener, app).await
}

fn encode(registry: &Registry) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (StatusCode::OK, [(CONTENT_TYPE, OPENMETRICS)], body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics failed: {e}\n"),
        ),
    }
}

/// `berth_config_reloads_total{outcome}`: SIGHUPs, by whether the file could be read and applied.
pub type ReloadCounter = Family<berth_common::metrics::OutcomeLabel, Counter>;

pub fn register_reloads(registry: &mut Registry) -> ReloadCounter {
    let reloads = ReloadCounter::default();
    registry.register(
        "berth_config_reloads",
        "SIGHUP reloads of the log level and registry host files, by outcome (success, error)",
        reloads.clone(),
    );
    reloads
}
