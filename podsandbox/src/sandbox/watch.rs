//! A ready sandbox's monitor, watched: the monitor pins the pod's namespaces, so when it dies
//! the pod is gone, and the sandbox leaves Ready at once (STOPPED published, as containerd does
//! when a sandbox's task exits) instead of only reading NotReady when somebody next looks. The
//! watch is a pidfd, readable when the process exits; taken while the recorded process is
//! alive, it cannot follow a reused pid.

use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::record::{MonitorProcess, SandboxState};
use super::Sandboxes;
use crate::events::EventKind;

impl Sandboxes {
    /// Watches the monitor of the ready sandbox `id` until it exits, then takes the sandbox out
    /// of Ready. A monitor already gone is handled now.
    pub(crate) fn watch_monitor(self: &Arc<Self>, id: &str) {
        let Some(monitor) = self.lock().get(id).and_then(|r| r.monitor) else {
            return;
        };
        let watch = berth_runtime::pidfd_open(monitor.pid as i32)
            .ok()
            .filter(|_| monitor.alive())
            // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open (and the same)
            // for as long as it is registered, and is closed only after deregistration.
            .and_then(|fd| unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok());
        let Some(watch) = watch else {
            self.monitor_gone(id, monitor);
            return;
        };
        let sandboxes = Arc::downgrade(self);
        let id = id.to_string();
        tokio::spawn(async move {
            let _ = watch.readable().await;
            if let Some(sandboxes) = sandboxes.upgrade() {
                sandboxes.monitor_gone(&id, monitor);
            }
        });
    }

    /// The monitor `monitor` of sandbox `id` exited. If the sandbox was still Ready (not being
    /// stopped: StopPodSandbox takes it out of Ready first and publishes its own STOPPED), it is
    /// NotReady from now on.
    fn monitor_gone(&self, id: &str, monitor: MonitorProcess) {
        let left = {
            let mut records = self.lock();
            match records.get_mut(id) {
                Some(r) if r.state == SandboxState::Ready && r.monitor == Some(monitor) => {
                    r.state = SandboxState::NotReady;
                    let _ = r.save(&self.pod_dir(id));
                    true
                }
                _ => false,
            }
        };
        if left {
            tracing::warn!(pod_id = %id, pid = monitor.pid, "pod monitor exited: sandbox is NotReady");
            self.update_state_metrics();
            self.events.publish(EventKind::Stopped, id, id);
        }
    }
}
