//! Device nodes in the container and the device cgroup rules that let it use them.
//!
//! `devices` is pure; `stat_device`, `host_devices` and `nodes_for` are the thin shell that
//! reads the host's /dev for it.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::input::{ContainerSpec, Device, DeviceKind, DeviceNode};
use super::SpecError;

fn oci_type(kind: DeviceKind) -> LinuxDeviceType {
    match kind {
        DeviceKind::Char => LinuxDeviceType::C,
        DeviceKind::Block => LinuxDeviceType::B,
    }
}

fn rule(allow: bool, node: Option<&DeviceNode>, access: &str) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    if let Some(node) = node {
        r.set_typ(Some(oci_type(node.kind)));
        r.set_major(Some(node.major));
        r.set_minor(Some(node.minor));
    }
    r.set_access(Some(access.to_string()));
    r
}

fn linux_device(node: &DeviceNode, path: &Path) -> LinuxDevice {
    let mut d = LinuxDevice::default();
    d.set_path(path.to_path_buf());
    d.set_typ(oci_type(node.kind));
    d.set_major(node.major);
    d.set_minor(node.minor);
    d.set_file_mode(Some(node.file_mode));
    d.set_uid(Some(node.uid));
    d.set_gid(Some(node.gid));
    d
}

/// The nodes to create and the cgroup rules, as containerd writes them: deny everything, then
/// allow each requested device with its permissions. A privileged container also gets every
/// host device (`host_nodes` then holds all of /dev) and one rule allowing all.
/// The executor adds the standard nodes (/dev/null, zero, full, random, urandom, tty) itself.
pub fn devices(
    requested: &[Device],
    host_nodes: &[DeviceNode],
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut nodes = Vec::new();
    let mut rules = vec![rule(false, None, "rwm")];
    for device in requested {
        let invalid = |reason: &str| SpecError::InvalidDevice {
            path: device.host_path.clone(),
            reason: reason.to_string(),
        };
        let access = &device.permissions;
        if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(&format!(
                "permissions {access:?} are not a subset of \"rwm\""
            )));
        }
        if !device.container_path.is_absolute() {
            return Err(invalid("the container path must be absolute"));
        }
        let node = host_nodes
            .iter()
            .find(|n| n.path == device.host_path)
            .ok_or_else(|| invalid("not a device node on this host"))?;
        nodes.push(linux_device(node, &device.container_path));
        rules.push(rule(true, Some(node), access));
    }
    if privileged {
        for node in host_nodes {
            if !nodes.iter().any(|d: &LinuxDevice| d.path() == &node.path) {
                nodes.push(linux_device(node, &node.path));
            }
        }
        rules = vec![rule(true, None, "rwm")];
    }
    Ok((nodes, rules))
}

/// Describes the device node at `path` (symlinks followed); an error if it is not one.
pub fn stat_device(path: &Path) -> io::Result<DeviceNode> {
    let meta = std::fs::metadata(path)?;
    let kind = if meta.file_type().is_char_device() {
        DeviceKind::Char
    } else if meta.file_type().is_block_device() {
        DeviceKind::Block
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a device node", path.display()),
        ));
    };
    let rdev = meta.rdev();
    Ok(DeviceNode {
        path: path.to_path_buf(),
        kind,
        major: libc::major(rdev) as i64,
        minor: libc::minor(rdev) as i64,
        file_mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Every device node under `dir` (the host's /dev), skipping what containerd skips: the pts,
/// shm, fd, mqueue and container-tool directories, /dev/console, and anything unreadable.
pub fn host_devices(dir: &Path) -> Vec<DeviceNode> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let path = dir.join(&name);
        if file_type.is_dir() {
            let skip = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
            if !skip.iter().any(|s| name == *s) {
                out.extend(host_devices(&path));
            }
        } else if (file_type.is_char_device() || file_type.is_block_device()) && name != "console" {
            if let Ok(node) = stat_device(&path) {
                out.push(node);
            }
        }
    }
    out
}

/// The device nodes `generate` needs for `config`: each requested device, and all of /dev for a
/// privileged container.
pub fn nodes_for(config: &ContainerSpec) -> io::Result<Vec<DeviceNode>> {
    let mut nodes = Vec::new();
    for device in &config.devices {
        let node = stat_device(&device.host_path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("device {}: {e}", device.host_path.display()),
            )
        })?;
        nodes.push(node);
    }
    if config.security.privileged {
        nodes.extend(host_devices(&PathBuf::from("/dev")));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, major: i64, minor: i64) -> DeviceNode {
        DeviceNode {
            path: path.into(),
            kind: DeviceKind::Char,
            major,
            minor,
            file_mode: 0o660,
            uid: 0,
            gid: 44,
        }
    }

    fn request(host: &str, container: &str, permissions: &str) -> Device {
        Device {
            container_path: container.into(),
            host_path: host.into(),
            permissions: permissions.into(),
        }
    }

    #[test]
    fn requested_device_is_created_at_its_container_path_and_allowed() {
        let host = [node("/dev/fuse", 10, 229), node("/dev/kvm", 10, 232)];
        let (nodes, rules) =
            devices(&[request("/dev/fuse", "/dev/myfuse", "rw")], &host, false).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].path(), Path::new("/dev/myfuse"));
        assert_eq!((nodes[0].major(), nodes[0].minor()), (10, 229));
        assert_eq!(nodes[0].gid(), Some(44));
        assert_eq!(rules.len(), 2);
        assert!(!rules[0].allow());
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
        assert!(rules[1].allow());
        assert_eq!(rules[1].typ(), Some(LinuxDeviceType::C));
        assert_eq!((rules[1].major(), rules[1].minor()), (Some(10), Some(229)));
        assert_eq!(rules[1].access().as_deref(), Some("rw"));
    }

    #[test]
    fn no_devices_means_deny_all() {
        let (nodes, rules) = devices(&[], &[], false).unwrap();
        assert!(nodes.is_empty());
        assert_eq!(rules.len(), 1);
        assert!(!rules[0].allow());
    }

    #[test]
    fn bad_permissions_or_unknown_nodes_are_errors() {
        let host = [node("/dev/fuse", 10, 229)];
        for bad in [
            request("/dev/fuse", "/dev/fuse", "rwx"),
            request("/dev/fuse", "/dev/fuse", ""),
            request("/dev/fuse", "dev/fuse", "rw"),
            request("/dev/nope", "/dev/nope", "rw"),
        ] {
            let err = devices(std::slice::from_ref(&bad), &host, false).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&bad.host_path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn privileged_gets_every_host_device_and_an_allow_all_rule() {
        let host = [node("/dev/fuse", 10, 229), node("/dev/kvm", 10, 232)];
        let (nodes, rules) = devices(&[request("/dev/kvm", "/dev/kvm", "r")], &host, true).unwrap();
        let paths: Vec<_> = nodes
            .iter()
            .map(|d| d.path().display().to_string())
            .collect();
        assert_eq!(paths, ["/dev/kvm", "/dev/fuse"]);
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow());
        assert_eq!(rules[0].major(), None);
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
    }

    #[test]
    fn dev_null_is_a_char_device_on_any_host() {
        let null = stat_device(Path::new("/dev/null")).unwrap();
        assert_eq!(
            (null.kind, null.major, null.minor),
            (DeviceKind::Char, 1, 3)
        );
        assert!(stat_device(Path::new("/etc/hostname")).is_err());
        assert!(host_devices(Path::new("/dev"))
            .iter()
            .any(|n| n.path == Path::new("/dev/null")));
    }
}
