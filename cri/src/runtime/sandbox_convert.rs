//! CRI pod sandbox messages ↔ `berth_podsandbox` types, and its errors → gRPC status.

use std::collections::HashMap;

use berth_podsandbox::sandbox::record::{SandboxRecord, SandboxState};
use berth_podsandbox::sandbox::spec::{
    DnsSpec, IdMapping, NamespaceMode, NamespaceModes, PodMetadata, PortMapping, SandboxSpec,
    UserNamespace,
};
use k8s_cri::v1 as cri;
use tonic::Status;

pub(super) fn sandbox_spec(
    config: cri::PodSandboxConfig,
    runtime_handler: String,
) -> Result<SandboxSpec, Status> {
    let metadata = config
        .metadata
        .ok_or_else(|| Status::invalid_argument("berth: pod sandbox config needs metadata"))?;
    let attempt = metadata.attempt;
    let linux = config.linux.unwrap_or_default();
    let options = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let mode = |m: i32| match cri::NamespaceMode::try_from(m) {
        Ok(cri::NamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(cri::NamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(cri::NamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(cri::NamespaceMode::Target) => Ok(NamespaceMode::Target),
        Err(_) => Err(Status::invalid_argument(format!(
            "berth: unknown namespace mode {m}"
        ))),
    };
    let namespaces = NamespaceModes {
        network: mode(options.network)?,
        pid: mode(options.pid)?,
        ipc: mode(options.ipc)?,
    };
    let userns = user_namespace(options.userns_options.as_ref(), &namespaces)?;
    let port_mappings = config
        .port_mappings
        .into_iter()
        .map(|p| PortMapping {
            protocol: match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            }
            .to_string(),
            container_port: p.container_port,
            host_port: p.host_port,
            host_ip: p.host_ip,
        })
        .collect();
    Ok(SandboxSpec {
        metadata: PodMetadata {
            name: metadata.name,
            uid: metadata.uid,
            namespace: metadata.namespace,
            attempt,
        },
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: config.dns_config.map(|d| DnsSpec {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        namespaces,
        sysctls: linux.sysctls.into_iter().collect(),
        runtime_handler,
        privileged: linux
            .security_context
            .as_ref()
            .is_some_and(|s| s.privileged),
        userns,
    })
}

pub(crate) fn id_mappings(list: &[cri::IdMapping]) -> Vec<IdMapping> {
    list.iter()
        .map(|m| IdMapping {
            container_id: m.container_id,
            host_id: m.host_id,
            length: m.length,
        })
        .collect()
}

fn cri_id_mapping(m: &IdMapping) -> cri::IdMapping {
    cri::IdMapping {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    }
}

/// The pod's user namespace: none for mode NODE (or unset), one range each for POD (the
/// namespaces it owns must be the pod's own too); CONTAINER and TARGET do not exist for it.
fn user_namespace(
    options: Option<&cri::UserNamespace>,
    namespaces: &NamespaceModes,
) -> Result<Option<UserNamespace>, Status> {
    let Some(options) = options else {
        return Ok(None);
    };
    let invalid = |m: String| Status::invalid_argument(format!("berth: user namespace: {m}"));
    match cri::NamespaceMode::try_from(options.mode) {
        Ok(cri::NamespaceMode::Node) => return Ok(None),
        Ok(cri::NamespaceMode::Pod) => {}
        Ok(other) => {
            return Err(invalid(format!(
                "mode {} is not supported (only POD or NODE)",
                other.as_str_name()
            )))
        }
        Err(_) => return Err(invalid(format!("unknown mode {}", options.mode))),
    }
    for (kind, mode) in [
        ("network", namespaces.network),
        ("PID", namespaces.pid),
        ("IPC", namespaces.ipc),
    ] {
        if mode == NamespaceMode::Node {
            return Err(invalid(format!(
                "a pod with its own user namespace cannot use the host's {kind} namespace"
            )));
        }
    }
    UserNamespace::check(&id_mappings(&options.uids), &id_mappings(&options.gids))
        .map(Some)
        .map_err(invalid)
}

fn cri_mode(m: NamespaceMode) -> i32 {
    (match m {
        NamespaceMode::Pod => cri::NamespaceMode::Pod,
        NamespaceMode::Container => cri::NamespaceMode::Container,
        NamespaceMode::Node => cri::NamespaceMode::Node,
        NamespaceMode::Target => cri::NamespaceMode::Target,
    }) as i32
}

pub(super) fn cri_state(s: SandboxState) -> i32 {
    (match s {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady,
        _ => cri::PodSandboxState::SandboxNotready,
    }) as i32
}

pub(super) fn cri_metadata(r: &SandboxRecord) -> cri::PodSandboxMetadata {
    let m = &r.spec.metadata;
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

pub(super) fn cri_status(r: &SandboxRecord) -> cri::PodSandboxStatus {
    let mut ips = r.network.ips.iter();
    let network = (!r.spec.host_network()).then(|| cri::PodSandboxNetworkStatus {
        ip: ips.next().cloned().unwrap_or_default(),
        additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
    });
    cri::PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(cri_metadata(r)),
        state: cri_state(r.state),
        created_at: r.created_at,
        network,
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: cri_mode(r.spec.namespaces.network),
                    pid: cri_mode(r.spec.namespaces.pid),
                    ipc: cri_mode(r.spec.namespaces.ipc),
                    userns_options: Some(match &r.spec.userns {
                        Some(u) => cri::UserNamespace {
                            mode: cri::NamespaceMode::Pod as i32,
                            uids: vec![cri_id_mapping(&u.uids)],
                            gids: vec![cri_id_mapping(&u.gids)],
                        },
                        None => cri::UserNamespace {
                            mode: cri::NamespaceMode::Node as i32,
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }),
            }),
        }),
        labels: r.spec.labels.clone().into_iter().collect::<HashMap<_, _>>(),
        annotations: r
            .spec
            .annotations
            .clone()
            .into_iter()
            .collect::<HashMap<_, _>>(),
        runtime_handler: r.spec.runtime_handler.clone(),
    }
}

/// A pod's usage sample as CRI `PodSandboxStats`: the pod cgroup, its interfaces (`eth0` the
/// default), its process count, and its running containers' stats.
pub(super) fn cri_sandbox_stats(p: &berth_podsandbox::PodUsage) -> cri::PodSandboxStats {
    use super::container_convert::{cri_container_stats, cri_cpu, cri_memory, cri_value};
    let r = &p.sandbox;
    let at = p.usage.timestamp;
    let interface = |i: &berth_podsandbox::sandbox::InterfaceUsage| cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: cri_value(Some(i.rx_bytes)),
        rx_errors: cri_value(Some(i.rx_errors)),
        tx_bytes: cri_value(Some(i.tx_bytes)),
        tx_errors: cri_value(Some(i.tx_errors)),
    };
    let interfaces = &p.usage.interfaces;
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: r.id.clone(),
            metadata: Some(cri_metadata(r)),
            labels: r.spec.labels.clone().into_iter().collect(),
            annotations: r.spec.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cri_cpu(at, &p.usage.cgroup, None)),
            memory: Some(cri_memory(at, &p.usage.cgroup)),
            network: (!interfaces.is_empty()).then(|| cri::NetworkUsage {
                timestamp: at,
                default_interface: interfaces
                    .iter()
                    .find(|i| i.name == berth_podsandbox::sandbox::DEFAULT_INTERFACE)
                    .map(interface),
                interfaces: interfaces.iter().map(interface).collect(),
            }),
            process: Some(cri::ProcessUsage {
                timestamp: at,
                process_count: cri_value(p.usage.cgroup.pids),
            }),
            containers: p
                .containers
                .iter()
                .map(|c| cri_container_stats(&c.record, &c.usage))
                .collect(),
        }),
        windows: None,
    }
}
