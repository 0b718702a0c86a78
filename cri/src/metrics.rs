//! Per-RPC observation: a tower layer on the gRPC server that gives every CRI call a tracing span
//! and records `berth_cri_operations_total{operation,code}` and
//! `berth_cri_operation_duration_seconds{operation}`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use berth_common::metrics::operation_histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tower::{Layer, Service};
use tracing::Instrument;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationCode {
    operation: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: String,
}

/// The CRI server's metric families.
#[derive(Debug)]
pub struct CriMetrics {
    operations: Family<OperationCode, Counter>,
    durations: Family<Operation, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    idle: Notify,
}

impl CriMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            operations: Family::default(),
            durations: Family::new_with_constructor(operation_histogram),
            in_flight: Gauge::default(),
            idle: Notify::new(),
        };
        registry.register(
            "berth_cri_operations",
            "CRI RPCs handled, by operation and gRPC status code",
            metrics.operations.clone(),
        );
        registry.register(
            "berth_cri_operation_duration_seconds",
            "Time to handle a CRI RPC, by operation",
            metrics.durations.clone(),
        );
        registry.register(
            "berth_cri_requests_in_flight",
            "CRI RPCs being handled now",
            metrics.in_flight.clone(),
        );
        metrics
    }

    /// Waits until no RPC is being handled. Shutdown uses it to exit as soon as in-flight calls
    /// are done, without waiting for clients (kubelet) to close their idle connections.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.get() <= 0 {
                return;
            }
            notified.await;
        }
    }

    fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.inc();
        InFlightGuard(self.clone())
    }

    fn observe(&self, operation: &str, code: &'static str, seconds: f64) {
        self.operations
            .get_or_create(&OperationCode {
                operation: operation.to_string(),
                code,
            })
            .inc();
        self.durations
            .get_or_create(&Operation {
                operation: operation.to_string(),
            })
            .observe(seconds);
    }
}

/// Counts one RPC as in flight until dropped (also when the request future is cancelled).
struct InFlightGuard(Arc<CriMetrics>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.in_flight.dec() <= 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The RPC name from a gRPC path (`/runtime.v1.RuntimeService/Version` → `Version`). Anything
/// that is not a CRI path is `unknown`, so a scanner cannot blow up the label cardinality.
fn operation_name(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some((service, method))
            if (service == "/runtime.v1.RuntimeService"
                || service == "/runtime.v1.ImageService")
                && !method.is_empty()
                && method.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            method
        }
        _ => "unknown",
    }
}

/// gRPC code names as grpc-go prints them (the names kubelet's own metrics and logs use).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The status of a unary response: tonic puts an error's `grpc-status` in the headers
/// (trailers-only response); a success carries it in the trailers, so no header means OK.
fn response_code(headers: &http::HeaderMap) -> &'static str {
    match headers.get("grpc-status") {
        Some(v) => code_name(tonic::Code::from_bytes(v.as_bytes())),
        None => "OK",
    }
}

/// Tower layer adding a span and metrics to every RPC.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<CriMetrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<CriMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<CriMetrics>,
}

impl<S, B, RB> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let operation = operation_name(request.uri().path()).to_string();
        // Handlers fill pod_id / container_id in with `record_pod` / `record_container`.
        let span = tracing::info_span!(
            "cri",
            op = %operation,
            pod_id = tracing::field::Empty,
            container_id = tracing::field::Empty,
        );
        let start = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let metrics = self.metrics.clone();
        let guard = metrics.begin();
        Box::pin(
            async move {
                let _guard = guard;
                let result = future.await;
                let code = match &result {
                    Ok(response) => response_code(response.headers()),
                    Err(_) => "Unknown",
                };
                let elapsed = start.elapsed();
                metrics.observe(&operation, code, elapsed.as_secs_f64());
                if code == "OK" {
                    tracing::debug!(code, elapsed_ms = elapsed.as_secs_f64() * 1e3, "done");
                } else {
                    tracing::info!(code, elapsed_ms = elapsed.as_secs_f64() * 1e3, "failed");
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Records the pod sandbox id on the current RPC's span.
pub fn record_pod(id: &str) {
    tracing::Span::current().record("pod_id", id);
}

/// Records the container id on the current RPC's span.
pub fn record_container(id: &str) {
    tracing::Span::current().record("container_id", id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_name_takes_the_cri_method() {
        assert_eq!(
            operation_name("/runtime.v1.RuntimeService/Version"),
            "Version"
        );
        assert_eq!(
            operation_name("/runtime.v1.ImageService/PullImage"),
            "PullImage"
        );
    }

    #[test]
    fn operation_name_folds_foreign_paths_into_unknown() {
        assert_eq!(operation_name("/"), "unknown");
        assert_eq!(operation_name("/grpc.health.v1.Health/Check"), "unknown");
        assert_eq!(operation_name("/runtime.v1.RuntimeService/"), "unknown");
        assert_eq!(
            operation_name("/runtime.v1.RuntimeService/a%2Fb"),
            "unknown"
        );
    }

    #[test]
    fn response_code_reads_grpc_status_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(response_code(&headers), "OK");
        headers.insert("grpc-status", http::HeaderValue::from_static("12"));
        assert_eq!(response_code(&headers), "Unimplemented");
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(response_code(&headers), "NotFound");
    }

    #[test]
    fn observed_rpcs_appear_in_the_exposition() {
        let mut registry = Registry::default();
        let metrics = CriMetrics::register(&mut registry);
        metrics.observe("Version", "OK", 0.0004);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"berth_cri_operations_total{operation="Version",code="OK"} 1"#));
        assert!(
            text.contains(r#"berth_cri_operation_duration_seconds_count{operation="Version"} 1"#)
        );
    }
}
