//! `berth_streaming_*`: sessions by verb and transport, how long they lasted, bytes relayed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// `exec`, `attach` or `portforward`.
    pub verb: &'static str,
    /// `spdy` or `websocket`.
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub verb: &'static str,
    /// `in` (client to process or port), `out` (back to the client).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// Why an HTTP request got no session: `unknown_token`, `protocol`, `method`, `streams_timeout`.
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct StreamingMetrics {
    pub sessions: Family<SessionLabels, Counter>,
    pub active: Family<SessionLabels, Gauge>,
    pub duration: Family<SessionLabels, Histogram>,
    pub bytes: Family<BytesLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
}

impl StreamingMetrics {
    pub fn register(registry: &mut Registry) -> StreamingMetrics {
        let m = StreamingMetrics {
            sessions: Family::default(),
            active: Family::default(),
            duration: Family::new_with_constructor(|| {
                // 10 ms to ~3 h: an exec of `true` through an interactive shell left open.
                Histogram::new(exponential_buckets(0.01, 3.0, 14))
            }),
            bytes: Family::default(),
            rejected: Family::default(),
        };
        registry.register(
            "berth_streaming_sessions",
            "Streaming sessions (exec, attach, port-forward) started, by verb and transport",
            m.sessions.clone(),
        );
        registry.register(
            "berth_streaming_active_sessions",
            "Streaming sessions open now",
            m.active.clone(),
        );
        registry.register(
            "berth_streaming_session_duration_seconds",
            "How long streaming sessions lasted",
            m.duration.clone(),
        );
        registry.register(
            "berth_streaming_bytes",
            "Bytes relayed by streaming sessions",
            m.bytes.clone(),
        );
        registry.register(
            "berth_streaming_rejected_requests",
            "Streaming HTTP requests answered without a session, by reason",
            m.rejected.clone(),
        );
        m
    }

    /// The bytes counter of one verb and direction (a handle, not a lock guard).
    pub fn bytes(&self, verb: &'static str, direction: &'static str) -> Counter {
        self.bytes
            .get_or_create(&BytesLabels { verb, direction })
            .clone()
    }

    pub fn unregistered() -> StreamingMetrics {
        Self::register(&mut Registry::default())
    }
}
