//! Container and sandbox lifecycle events, for GetContainerEvents (kubelet's evented PLEG).
//!
//! Each transition is published once, at the point where it happens: a container's CREATED,
//! STARTED and DELETED by its lifecycle step, its STOPPED by [`Containers::fold_exit`] (the one
//! place an exit reaches a record, told at once by the pod's monitor); a sandbox's CREATED and
//! STARTED when it is ready, STOPPED when it leaves Ready, DELETED just before its record goes.
//! An event carries a snapshot of its pod taken then: the sandbox record and every container
//! record of the pod, so even a sandbox's DELETED event has the status kubelet keys it by.
//!
//! Every subscriber has its own bounded queue. Publishing never waits: a subscriber whose queue
//! is full is dropped (its stream ends with an error and it must subscribe again), so a slow
//! reader never holds up the others or the RPCs. Until the first subscriber after start-up,
//! events are kept (as many as a queue holds) and handed to it: the exits a restarted agent
//! finds, which happened while it was down, reach kubelet once it subscribes again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::container::{ContainerRecord, Containers};
use crate::sandbox::record::SandboxRecord;
use crate::sandbox::Sandboxes;

/// What happened, in the CRI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// One event: a container's, or the sandbox's own (then `id` is the sandbox id).
#[derive(Debug, Clone)]
pub struct PodEvent {
    pub id: String,
    pub kind: EventKind,
    /// When it was published, Unix nanoseconds.
    pub at: i64,
    /// The pod as it was then; `None` only if the sandbox was already gone.
    pub sandbox: Option<SandboxRecord>,
    /// Every container of the pod then.
    pub containers: Vec<ContainerRecord>,
}

/// Events kept per subscriber before it is dropped.
pub const DEFAULT_QUEUE: usize = 1024;

/// Event metric families.
#[derive(Debug, Clone, Default)]
pub struct EventMetrics {
    subscribers: Gauge,
    dropped: Counter,
    published: Counter,
}

impl EventMetrics {
    pub fn register(registry: &mut Registry) -> EventMetrics {
        let m = EventMetrics::default();
        registry.register(
            "berth_events_subscribers",
            "GetContainerEvents streams open now",
            m.subscribers.clone(),
        );
        registry.register(
            "berth_events_dropped_subscribers",
            "GetContainerEvents streams ended because their reader fell a whole queue behind",
            m.dropped.clone(),
        );
        registry.register(
            "berth_events_published",
            "Container and sandbox lifecycle events published",
            m.published.clone(),
        );
        m
    }
}

struct Subscriber {
    id: u64,
    queue: mpsc::Sender<Arc<PodEvent>>,
    dropped: Arc<AtomicBool>,
}

struct Bus {
    next_id: u64,
    subscribers: Vec<Subscriber>,
    /// Events published since start-up while nobody had subscribed yet; `None` once somebody has.
    backlog: Option<VecDeque<Arc<PodEvent>>>,
}

/// The agent's event bus.
pub struct Events {
    queue: usize,
    bus: Mutex<Bus>,
    metrics: EventMetrics,
    sandboxes: OnceLock<Weak<Sandboxes>>,
    containers: OnceLock<Weak<Containers>>,
}

impl Events {
    /// A bus whose subscribers may fall `queue` events behind before they are dropped.
    pub fn new(queue: usize, metrics: EventMetrics) -> Arc<Events> {
        Arc::new(Events {
            queue: queue.max(1),
            bus: Mutex::new(Bus {
                next_id: 0,
                subscribers: Vec::new(),
                backlog: Some(VecDeque::new()),
            }),
            metrics,
            sandboxes: OnceLock::new(),
            containers: OnceLock::new(),
        })
    }

    /// Where the pod snapshots come from. Set once, by `Pods::new`.
    pub(crate) fn attach(&self, sandboxes: &Arc<Sandboxes>, containers: &Arc<Containers>) {
        let _ = self.sandboxes.set(Arc::downgrade(sandboxes));
        let _ = self.containers.set(Arc::downgrade(containers));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bus> {
        self.bus.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `kind` for `id` (a container of `sandbox_id`, or the sandbox itself) with a
    /// snapshot of the pod now. Must not be called with a record lock held: the snapshot takes
    /// them.
    pub(crate) fn publish(&self, kind: EventKind, id: &str, sandbox_id: &str) {
        let sandbox = self
            .sandboxes
            .get()
            .and_then(Weak::upgrade)
            .and_then(|s| s.get(sandbox_id));
        let containers = self
            .containers
            .get()
            .and_then(Weak::upgrade)
            .map(|c| c.in_sandbox_records(sandbox_id))
            .unwrap_or_default();
        self.send(PodEvent {
            id: id.to_string(),
            kind,
            at: berth_common::time::now_nanos(),
            sandbox,
            containers,
        });
    }

    fn send(&self, event: PodEvent) {
        let event = Arc::new(event);
        self.metrics.published.inc();
        let mut bus = self.lock();
        let queue = self.queue;
        if let Some(backlog) = &mut bus.backlog {
            if backlog.len() == queue {
                backlog.pop_front();
            }
            backlog.push_back(event.clone());
        }
        let before = bus.subscribers.len();
        bus.subscribers
            .retain(|s| match s.queue.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(subscriber = s.id, "event subscriber fell behind: dropped");
                    s.dropped.store(true, Ordering::Release);
                    false
                }
                // Its stream is gone and its guard is about to unsubscribe it.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        let dropped = before - bus.subscribers.len();
        if dropped > 0 {
            self.metrics.dropped.inc_by(dropped as u64);
            self.metrics.subscribers.set(bus.subscribers.len() as i64);
        }
    }

    /// A new subscription: every event from now on (the first subscriber since start-up also
    /// gets those kept until then).
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, rx) = mpsc::channel(self.queue);
        let dropped = Arc::new(AtomicBool::new(false));
        let mut bus = self.lock();
        for event in bus.backlog.take().unwrap_or_default() {
            let _ = tx.try_send(event);
        }
        let id = bus.next_id;
        bus.next_id += 1;
        bus.subscribers.push(Subscriber {
            id,
            queue: tx,
            dropped: dropped.clone(),
        });
        self.metrics.subscribers.set(bus.subscribers.len() as i64);
        Subscription {
            id,
            events: self.clone(),
            queue: rx,
            dropped,
        }
    }

    fn unsubscribe(&self, id: u64) {
        let mut bus = self.lock();
        bus.subscribers.retain(|s| s.id != id);
        self.metrics.subscribers.set(bus.subscribers.len() as i64);
    }
}

/// One subscriber's queue; unsubscribes when dropped (the client went away).
pub struct Subscription {
    id: u64,
    events: Arc<Events>,
    queue: mpsc::Receiver<Arc<PodEvent>>,
    dropped: Arc<AtomicBool>,
}

impl Subscription {
    /// The next event; `None` once the subscriber has been dropped for falling behind and its
    /// queue is drained.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<PodEvent>>> {
        self.queue.poll_recv(cx)
    }

    pub async fn next(&mut self) -> Option<Arc<PodEvent>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Whether the stream ended because this subscriber fell behind.
    pub fn was_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.events.unsubscribe(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> PodEvent {
        PodEvent {
            id: format!("c{n}"),
            kind: EventKind::Created,
            at: n as i64,
            sandbox: None,
            containers: Vec::new(),
        }
    }

    fn drain(sub: &mut Subscription) -> Vec<String> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        while let Poll::Ready(Some(e)) = sub.poll_next(&mut cx) {
            out.push(e.id.clone());
        }
        out
    }

    #[test]
    fn the_first_subscriber_gets_what_was_published_before_it_and_later_ones_do_not() {
        let events = Events::new(4, EventMetrics::default());
        for n in 0..6 {
            events.send(event(n));
        }
        let mut first = events.subscribe();
        // The backlog holds a queue's worth: the newest four.
        assert_eq!(drain(&mut first), ["c2", "c3", "c4", "c5"]);
        let mut second = events.subscribe();
        events.send(event(6));
        assert_eq!(drain(&mut first), ["c6"]);
        assert_eq!(drain(&mut second), ["c6"]);
    }

    #[test]
    fn a_subscriber_a_whole_queue_behind_is_dropped_and_the_others_go_on() {
        let metrics = EventMetrics::default();
        let events = Events::new(2, metrics.clone());
        let mut slow = events.subscribe();
        let mut quick = events.subscribe();
        assert_eq!(metrics.subscribers.get(), 2);
        for n in 0..3 {
            events.send(event(n));
            assert_eq!(drain(&mut quick), [format!("c{n}")]);
        }
        assert!(slow.was_dropped());
        // What it had queued is still read, then its stream ends.
        assert_eq!(drain(&mut slow), ["c0", "c1"]);
        let waker = std::task::Waker::noop();
        assert_eq!(
            slow.poll_next(&mut Context::from_waker(waker))
                .map(|e| e.is_some()),
            Poll::Ready(false)
        );
        assert!(!quick.was_dropped());
        assert_eq!(metrics.subscribers.get(), 1);
        assert_eq!(metrics.dropped.get(), 1);
        drop(quick);
        assert_eq!(metrics.subscribers.get(), 0);
    }
}
