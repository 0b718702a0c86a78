//! GetContainerEvents: the agent's event bus (`berth_podsandbox::events`) as a server stream.
//! Each event carries the pod as it was when it happened: the sandbox status (kubelet's evented
//! PLEG drops an event without one) and the status of every container of the pod. A subscriber
//! that falls a whole queue behind gets its stream ended with `ResourceExhausted` and must
//! subscribe again (kubelet relists meanwhile).

use std::pin::Pin;
use std::task::{Context, Poll};

use berth_podsandbox::{EventKind, PodEvent, Pods, Subscription};
use k8s_cri::v1 as cri;
use tokio_stream::Stream;
use tonic::Status;

use super::container_convert::cri_container_status;
use super::sandbox_convert::cri_status;

pub(super) fn get_container_events(pods: &Pods, _request: cri::GetEventsRequest) -> EventStream {
    EventStream {
        subscription: Some(pods.events.subscribe()),
    }
}

/// The CRI message for one event.
pub(super) fn cri_event(e: &PodEvent) -> cri::ContainerEventResponse {
    cri::ContainerEventResponse {
        container_id: e.id.clone(),
        container_event_type: match e.kind {
            EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
            EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
            EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
            EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
        } as i32,
        created_at: e.at,
        pod_sandbox_status: e.sandbox.as_ref().map(cri_status),
        containers_statuses: e.containers.iter().map(cri_container_status).collect(),
    }
}

/// One subscriber's stream; dropping it (the client went away) unsubscribes.
pub struct EventStream {
    subscription: Option<Subscription>,
}

impl Stream for EventStream {
    type Item = Result<cri::ContainerEventResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(subscription) = self.subscription.as_mut() else {
            return Poll::Ready(None);
        };
        match subscription.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(cri_event(&event)))),
            Poll::Ready(None) => {
                let dropped = subscription.was_dropped();
                self.subscription = None;
                Poll::Ready(dropped.then(|| {
                    Err(Status::resource_exhausted(
                        "berth: this event subscriber fell too far behind and was dropped; \
                         subscribe again",
                    ))
                }))
            }
        }
    }
}
