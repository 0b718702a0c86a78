//! UpdateContainerResources, the agent's half: the new limits merged over the recorded ones and
//! checked, then written into the live cgroup (`berth_runtime::cgroups::update`) and the record.

use std::sync::Mutex;

use berth_runtime::spec::{self, Resources};

use super::record::{ContainerError, ContainerState};
use super::Containers;

impl Containers {
    /// UpdateContainerResources: the new limits (a zero or empty field keeps its value, as with
    /// `runc update`) into the container's live cgroup, then into its record. An exited
    /// container's cgroup is gone, and a CRI container never starts again.
    pub fn update_resources(
        &self,
        id: &str,
        resources: spec::Resources,
    ) -> Result<(), ContainerError> {
        use berth_runtime::cgroups::update::{self as update, UpdateError};
        // One update at a time, so that the cgroup and the record end with the same values.
        static UPDATES: Mutex<()> = Mutex::new(());
        let _one = UPDATES.lock().unwrap_or_else(|e| e.into_inner());
        let record = self
            .fold_exit(id)
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if record.state() == ContainerState::Exited {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {id} has exited: its resources cannot change"
            )));
        }
        let cgroup = record.cgroup.clone().ok_or_else(|| {
            ContainerError::FailedPrecondition(format!("container {id} has no cgroup"))
        })?;
        let invalid = |e: String| ContainerError::InvalidArgument(format!("container {id}: {e}"));
        let old = &record.config.resources;
        let merged = merge(old, &resources);
        let linux =
            spec::resources::resources(&merged, &self.host).map_err(|e| invalid(e.to_string()))?;
        let oom_score_adj = (merged.oom_score_adj != old.oom_score_adj)
            .then(|| {
                spec::resources::oom_score_adj(merged.oom_score_adj, self.host.min_oom_score_adj)
            })
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        update::update_cgroup(&cgroup, &linux).map_err(|e| match e {
            UpdateError::Invalid(m) => invalid(m),
            UpdateError::Refused(m) => self.failed(id, "update resources", m),
        })?;
        // The files are written (and the kernel took them); the scope's properties follow, so
        // that systemd keeps the new limits when it reloads.
        if self.host.cgroup_driver == berth_runtime::CgroupDriver::Systemd {
            berth_runtime::cgroups::systemd::set_scope_resources(&cgroup, &linux)
                .map_err(|e| self.failed(id, "update the scope's properties", e))?;
        }
        if let Some(adj) = oom_score_adj.filter(|_| record.pid > 0) {
            update::set_oom_score_adj(record.pid, adj)
                .map_err(|e| self.failed(id, "update oom_score_adj", e))?;
        }
        let updated = {
            let mut records = self.lock();
            let r = records
                .get_mut(id)
                .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
            r.config.resources = merged;
            r.clone()
        };
        self.save(&updated)
    }
}

/// `new` over `old`. As in `runc update`, a zero or empty field keeps the old value; hugepage
/// limits are replaced by page size and unified keys by key.
pub fn merge(old: &Resources, new: &Resources) -> Resources {
    let num = |new: i64, old: i64| if new != 0 { new } else { old };
    let text = |new: &str, old: &str| if new.is_empty() { old } else { new }.to_string();
    let mut hugepage_limits = old.hugepage_limits.clone();
    for h in &new.hugepage_limits {
        match hugepage_limits
            .iter_mut()
            .find(|o| o.page_size == h.page_size)
        {
            Some(o) => o.limit = h.limit,
            None => hugepage_limits.push(h.clone()),
        }
    }
    let mut unified = old.unified.clone();
    unified.extend(new.unified.clone());
    Resources {
        cpu_period: num(new.cpu_period, old.cpu_period),
        cpu_quota: num(new.cpu_quota, old.cpu_quota),
        cpu_shares: num(new.cpu_shares, old.cpu_shares),
        memory_limit_in_bytes: num(new.memory_limit_in_bytes, old.memory_limit_in_bytes),
        oom_score_adj: num(new.oom_score_adj, old.oom_score_adj),
        cpuset_cpus: text(&new.cpuset_cpus, &old.cpuset_cpus),
        cpuset_mems: text(&new.cpuset_mems, &old.cpuset_mems),
        hugepage_limits,
        unified,
        memory_swap_limit_in_bytes: num(
            new.memory_swap_limit_in_bytes,
            old.memory_swap_limit_in_bytes,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_runtime::spec::HugepageLimit;

    use super::*;

    #[test]
    fn zero_and_empty_fields_keep_the_recorded_values() {
        let old = Resources {
            cpu_shares: 1024,
            cpu_quota: 20_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 1 << 30,
            cpuset_cpus: "0-3".into(),
            oom_score_adj: 500,
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 1 << 21,
            }],
            unified: BTreeMap::from([("memory.high".into(), "1".into())]),
            ..Resources::default()
        };
        let new = Resources {
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            cpuset_mems: "0".into(),
            hugepage_limits: vec![
                HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 2 << 21,
                },
                HugepageLimit {
                    page_size: "1GB".into(),
                    limit: 1 << 30,
                },
            ],
            unified: BTreeMap::from([("memory.low".into(), "2".into())]),
            ..Resources::default()
        };
        let got = merge(&old, &new);
        assert_eq!(
            (got.cpu_shares, got.cpu_quota, got.cpu_period),
            (512, 20_000, 100_000)
        );
        assert_eq!(got.memory_limit_in_bytes, 64 << 20);
        assert_eq!(
            (got.cpuset_cpus.as_str(), got.cpuset_mems.as_str()),
            ("0-3", "0")
        );
        assert_eq!(got.oom_score_adj, 500);
        assert_eq!(got.hugepage_limits, new.hugepage_limits);
        assert_eq!(got.unified.len(), 2);
        assert_eq!(merge(&old, &Resources::default()), old);
    }
}
