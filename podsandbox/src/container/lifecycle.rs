//! Create, start, stop, remove and reopen-log: each a request to the pod's monitor and a
//! record update. Blocking functions: the agent calls them from its blocking pool.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_runtime::monitor::protocol::{ExitRecord, Request, RUNC_DIR};
use nix::mount::{umount2, MntFlags};

use super::record::{ContainerError, ContainerRecord, ContainerState, EXIT_FILE};
use super::rootfs::CreateInput;
use super::Containers;
use crate::events::EventKind;
use crate::monitor_client;

/// How long the agent waits for a container's cgroup to empty after SIGKILL.
const ORPHAN_KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// The exit code of a container whose end nobody saw (containerd's `unknownExitCode`).
const UNKNOWN_EXIT_CODE: i32 = 255;

impl Containers {
    /// CreateContainer of container `id`: rootfs, bundle, and the container built (not
    /// started) by the monitor. Any failure takes back every step.
    pub fn create(&self, id: &str, input: CreateInput) -> Result<(), ContainerError> {
        let id = id.to_string();
        let _name = self.reserve_name(&input, &id)?;
        let dir = self.dir(&id);
        let layer_dir = self.root.join("containers").join(&id);
        let rootfs = dir.join("rootfs");
        let result = self.build(&id, &dir, &layer_dir, &rootfs, &input);
        if let Err(e) = &result {
            tracing::warn!(container_id = %id, error = %e, "create failed: rolling back");
            // The record, once written, names the container's cgroup: its init may be there
            // (the monitor died while creating it) with nobody else to end it.
            let unfinished = ContainerRecord::load(&dir).unwrap_or_else(|| {
                let mut r = ContainerRecord::unrecorded(&id, &self.root);
                r.pod_dir = input.pod_dir.clone();
                r
            });
            self.take_back(&unfinished);
        }
        let record = result?;
        let sandbox_id = record.sandbox_id.clone();
        self.lock().insert(id.clone(), record);
        self.events.publish(EventKind::Created, &id, &sandbox_id);
        Ok(())
    }

    /// Reserves the pod's container name and attempt for container `id` until the returned
    /// guard goes: taken by a recorded container, or by a create still in flight (kubelet
    /// retries one whose answer it missed), it is InvalidArgument naming the holder.
    fn reserve_name(
        &self,
        input: &CreateInput,
        id: &str,
    ) -> Result<NameReservation<'_>, ContainerError> {
        let key = (
            input.sandbox_id.clone(),
            input.config.metadata.name.clone(),
            input.config.metadata.attempt,
        );
        let records = self.lock();
        let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        let holder = records
            .values()
            .find(|r| {
                r.sandbox_id == key.0
                    && r.config.metadata.name == key.1
                    && r.config.metadata.attempt == key.2
            })
            .map(|r| r.id.clone())
            .or_else(|| creating.get(&key).cloned());
        if let Some(holder) = holder {
            return Err(ContainerError::InvalidArgument(format!(
                "container name {:?} attempt {} is reserved for {holder} in pod {}",
                key.1, key.2, key.0
            )));
        }
        creating.insert(key.clone(), id.to_string());
        Ok(NameReservation {
            containers: self,
            key,
        })
    }

    /// Takes back whatever a create made of `record`'s container, however far it got: the
    /// container in the pod's monitor (ended first: the monitor deletes none that runs), what
    /// is left in its cgroup, the rootfs and image volume mounts, the bundle and the writable
    /// layer. Not the record in memory, which an unfinished create never put there.
    pub(super) fn take_back(&self, record: &ContainerRecord) {
        let id = &record.id;
        let dir = self.dir(id);
        let pod_dir = &record.pod_dir;
        if !pod_dir.as_os_str().is_empty() && !monitor_client::gone(pod_dir) {
            let kill = Request::Signal {
                id: id.clone(),
                signal: libc::SIGKILL,
            };
            if monitor_client::request(pod_dir, &kill).is_ok() {
                wait_for(&dir.join(EXIT_FILE), ORPHAN_KILL_TIMEOUT);
            }
            let _ = monitor_client::request(pod_dir, &Request::Delete { id: id.clone() });
        }
        if let Some(cgroup) = &record.cgroup {
            let _ = berth_runtime::cgroups::kill_and_remove(cgroup, ORPHAN_KILL_TIMEOUT);
        }
        let _ = umount2(&dir.join("rootfs"), MntFlags::MNT_DETACH);
        super::rootfs::unmount_bundle_mounts(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&record.layer_dir);
    }

    /// StartContainer: only a created container starts.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let record = self
            .fold_exit(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if record.state() != ContainerState::Created {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id} is {:?}, not created",
                record.state()
            )));
        }
        // Stamped before the process may run: a container that exits at once must not show a
        // finish time earlier than its start.
        let started_at = berth_common::time::now_nanos();
        monitor_client::request(&record.pod_dir, &Request::Start { id: id.to_string() })
            .map_err(|e| self.failed(id, "start", e))?;
        let mut records = self.lock();
        if let Some(r) = records.get_mut(id) {
            r.started_at = started_at;
            let r = r.clone();
            drop(records);
            self.save(&r)?;
            self.events.publish(EventKind::Started, id, &r.sandbox_id);
        }
        Ok(())
    }

    /// StopContainer: the stop signal, SIGKILL after `timeout`, returns once the process is
    /// gone. CRI: a stopped or unknown container is not an error.
    pub fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let Some(record) = self.fold_exit(id) else {
            return Ok(());
        };
        if record.state() == ContainerState::Exited {
            return Ok(());
        }
        if monitor_client::gone(&record.pod_dir) {
            return self.kill_orphan(&record);
        }
        let signal = parse_signal(&record.stop_signal).unwrap_or(libc::SIGTERM);
        let exit_file = self.dir(id).join(EXIT_FILE);
        if record.state() == ContainerState::Created {
            // Never started: its init waits for `start`; SIGKILL is the only way out.
            let _ = monitor_client::request(
                &record.pod_dir,
                &Request::Signal {
                    id: id.into(),
                    signal: libc::SIGKILL,
                },
            );
        } else if !timeout.is_zero() {
            monitor_client::request(
                &record.pod_dir,
                &Request::Signal {
                    id: id.into(),
                    signal,
                },
            )
            .map_err(|e| self.failed(id, "stop signal", e))?;
            if wait_for(&exit_file, timeout) {
                return Ok(());
            }
        }
        monitor_client::request(
            &record.pod_dir,
            &Request::Signal {
                id: id.into(),
                signal: libc::SIGKILL,
            },
        )
        .map_err(|e| self.failed(id, "kill", e))?;
        if !wait_for(&exit_file, Duration::from_secs(30)) {
            return Err(self.failed(
                id,
                "stop",
                "the process did not exit 30s after SIGKILL".to_string(),
            ));
        }
        Ok(())
    }

    /// A container whose monitor is gone (killed, crashed): nobody holds its stdio, reaps it or
    /// records its exit, so the agent ends it through its cgroup and records the exit itself:
    /// killed (137) if anything still ran, else unknown (255, as containerd reports an exit
    /// that a dead shim took with it).
    fn kill_orphan(&self, record: &ContainerRecord) -> Result<(), ContainerError> {
        let id = &record.id;
        let Some(cgroup) = &record.cgroup else {
            return Err(self.failed(
                id,
                "stop",
                "the pod's monitor is gone and the container has no cgroup to end it through"
                    .to_string(),
            ));
        };
        let killed = berth_runtime::cgroups::kill_all(cgroup, ORPHAN_KILL_TIMEOUT)
            .map_err(|e| self.failed(id, "kill through the cgroup", e))?;
        tracing::warn!(container_id = %id, processes = killed, "the pod's monitor is gone: container killed through its cgroup");
        self.metrics.orphan_killed();
        let now = berth_common::time::now_nanos();
        let exit = if killed > 0 {
            ExitRecord::new(128 + libc::SIGKILL, Some(libc::SIGKILL), now, false)
        } else {
            ExitRecord::new(UNKNOWN_EXIT_CODE, None, now, false)
        };
        let bytes =
            serde_json::to_vec(&exit).map_err(|e| self.failed(id, "exit record", e.to_string()))?;
        berth_common::atomic::write_atomic_unsynced(&self.dir(id).join(EXIT_FILE), &bytes)
            .map_err(|e| self.failed(id, "write exit record", e.to_string()))?;
        self.fold_exit(id);
        Ok(())
    }

    /// RemoveContainer: stop, then the monitor's and libcontainer's state, the rootfs, the
    /// writable layer and the record. CRI: an unknown container is already removed.
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let Some(record) = self.fold_exit(id) else {
            return Ok(());
        };
        self.stop(id, Duration::ZERO)?;
        if monitor_client::gone(&record.pod_dir) {
            // What the monitor's delete would have removed.
            let _ = std::fs::remove_dir_all(record.pod_dir.join(RUNC_DIR).join(id));
        } else if let Err(e) =
            monitor_client::request(&record.pod_dir, &Request::Delete { id: id.to_string() })
        {
            tracing::warn!(container_id = %id, error = %e, "monitor could not delete the container's state");
        }
        let dir = self.dir(id);
        match umount2(&dir.join("rootfs"), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(self.failed(id, "unmount rootfs", e.to_string())),
        }
        super::rootfs::unmount_bundle_mounts(&dir);
        if let Some(cgroup) = &record.cgroup {
            // libcontainer's delete removes it; a container whose monitor died leaves it, with
            // whatever its init left behind in the host's or the pod's PID namespace.
            berth_runtime::cgroups::kill_and_remove(cgroup, ORPHAN_KILL_TIMEOUT)
                .map_err(|e| self.failed(id, "kill what is left in the cgroup", e))?;
        }
        let _ = std::fs::remove_dir_all(&record.layer_dir);
        berth_common::fs::remove_dir_all_if_present(&dir)
            .map_err(|e| self.failed(id, "remove dir", e.to_string()))?;
        self.lock().remove(id);
        self.events
            .publish(EventKind::Deleted, id, &record.sandbox_id);
        Ok(())
    }

    /// ReopenContainerLog: the monitor opens the log path anew (after kubelet's rotation).
    pub fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let record = self
            .fold_exit(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if record.state() != ContainerState::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        monitor_client::request(&record.pod_dir, &Request::ReopenLog { id: id.to_string() })
            .map(|_| ())
            .map_err(|e| self.failed(id, "reopen log", e))
    }
}

/// Waits until `file` exists, at most `timeout` (one past any instant: no limit).
fn wait_for(file: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        if file.exists() {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `SIGTERM`, `TERM`, `15` → 15.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// A container name held by a create in flight; released when the create ends (its record,
/// if it made one, holds the name from then on).
struct NameReservation<'a> {
    containers: &'a Containers,
    key: (String, String, u32),
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        self.containers
            .creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
