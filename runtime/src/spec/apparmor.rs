//! AppArmor: which profile a container runs under, and berth's own default profile.
//!
//! `decide` is the rule (pure): the CRI field or the deprecated one, privileged containers, and
//! hosts without AppArmor. `resolve` applies it to this host: a `localhost/` profile must already
//! be loaded, and berth's default is loaded with `apparmor_parser` the first time a container
//! needs it. The profile's name goes into the spec's `process.apparmorProfile`, which
//! libcontainer applies to the init and `berthd init exec` to an exec'd process.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::input::AppArmorProfile;

/// The name of berth's default profile.
pub const DEFAULT_PROFILE: &str = "berth-default";

/// berth's default profile: everything a container normally does (files, network, signals and
/// ptrace among its own processes, capabilities the runtime left it), and none of what would
/// reach the host through the kernel's own interfaces: mounting, writing kernel parameters under
/// /proc/sys (the network namespace's own excepted) and /sys, the sysrq trigger, kernel memory,
/// firmware and the security file system.
pub fn default_profile_text() -> String {
    let p = DEFAULT_PROFILE;
    let mut rules: Vec<String> = vec![
        "file,".into(),
        "network,".into(),
        "capability,".into(),
        "umount,".into(),
        "pivot_root,".into(),
        "dbus,".into(),
        "unix,".into(),
        format!("signal (send,receive) peer={p},"),
        "signal (receive) peer=unconfined,".into(),
        format!("ptrace (trace,read,tracedby,readby) peer={p},"),
        "deny mount,".into(),
        "deny /proc/sysrq-trigger rwklx,".into(),
        "deny /proc/kcore rwklx,".into(),
        "deny /proc/kmem rwklx,".into(),
        "deny /proc/mem rwklx,".into(),
        // /proc/sys: read-only but for net (per network namespace) and the IPC sysctls,
        // kernel.{shm,msg,sem}* (a deny always wins, so the globs leave those names out).
        "deny /proc/sys/[^kn]*/** wklx,".into(),
        "deny /proc/sys/kernel/*/** wklx,".into(),
        "deny /proc/sys/kernel/{[^ms]*,m[^s]*,s[^he]*,sh[^m]*,se[^m]*} wklx,".into(),
        "deny /sys/firmware/** rwklx,".into(),
        "deny /sys/kernel/security/** rwklx,".into(),
        // /sys: read-only but the container's cgroup file system.
        "deny /sys/[^f]*/** wklx,".into(),
        "deny /sys/f[^s]*/** wklx,".into(),
        "deny /sys/fs/[^c]*/** wklx,".into(),
        "deny /sys/fs/c[^g]*/** wklx,".into(),
    ];
    rules.iter_mut().for_each(|r| r.insert_str(0, "  "));
    format!(
        "# berth's default AppArmor profile (berthd loads it with apparmor_parser when a container needs it)\n\
         profile {p} flags=(attach_disconnected,mediate_deleted) {{\n{}\n}}\n",
        rules.join("\n")
    )
}

/// Whether this host enforces AppArmor and can load profiles (the module is enabled and
/// `apparmor_parser` is installed), as containerd decides.
pub fn host_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
        && parser().is_some()
}

fn parser() -> Option<&'static Path> {
    ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
}

/// What the CRI asked, as this host and the container's privilege make it: the profile's name,
/// or `None` to run unconfined. An explicit profile on a host without AppArmor is an error.
pub fn decide(
    asked: &AppArmorProfile,
    privileged: bool,
    host_enabled: bool,
) -> Result<Option<String>, String> {
    match asked {
        AppArmorProfile::Unconfined => Ok(None),
        AppArmorProfile::Unset if !host_enabled || privileged => Ok(None),
        AppArmorProfile::Unset => Ok(Some(DEFAULT_PROFILE.to_string())),
        _ if !host_enabled => Err(format!(
            "AppArmor profile {asked} asked for, but AppArmor is not enabled on this host"
        )),
        AppArmorProfile::RuntimeDefault if privileged => Ok(None),
        AppArmorProfile::RuntimeDefault => Ok(Some(DEFAULT_PROFILE.to_string())),
        AppArmorProfile::Localhost(name) if name.is_empty() || name.contains('\n') => {
            Err(format!("AppArmor profile name {name:?} is not valid"))
        }
        AppArmorProfile::Localhost(name) => Ok(Some(name.clone())),
    }
}

/// Whether a profile of this name is loaded in the kernel (`<name> (<mode>)` lines).
pub fn is_loaded(profiles: &str, name: &str) -> bool {
    profiles
        .lines()
        .any(|l| l.rsplit_once(" (").is_some_and(|(n, _)| n == name))
}

fn loaded_profiles() -> String {
    std::fs::read_to_string("/sys/kernel/security/apparmor/profiles").unwrap_or_default()
}

/// [`decide`] on this host: a localhost profile must be loaded; berth's default is loaded now if
/// it is not yet.
pub fn resolve(asked: &AppArmorProfile, privileged: bool) -> Result<Option<String>, String> {
    let Some(name) = decide(asked, privileged, host_enabled())? else {
        return Ok(None);
    };
    if is_loaded(&loaded_profiles(), &name) {
        return Ok(Some(name));
    }
    if name != DEFAULT_PROFILE {
        return Err(format!(
            "AppArmor profile {name:?} is not loaded on this host"
        ));
    }
    load_default()?;
    Ok(Some(name))
}

/// Loads (or replaces) berth's default profile through `apparmor_parser`. Serialized: two
/// creates at once must not both run the parser.
fn load_default() -> Result<(), String> {
    static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if is_loaded(&loaded_profiles(), DEFAULT_PROFILE) {
        return Ok(());
    }
    let parser = parser().ok_or("apparmor_parser is not installed")?;
    let mut child = Command::new(parser)
        .args(["--replace", "--skip-cache"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {}: {e}", parser.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(default_profile_text().as_bytes())
            .map_err(|e| format!("write the default profile to apparmor_parser: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("apparmor_parser: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "apparmor_parser could not load {DEFAULT_PROFILE}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The exec'd process's part: asks the kernel to move this task into `profile` at its next
/// execve (`/proc/thread-self/attr/apparmor/exec`, or the older `attr/exec`).
pub fn change_on_exec(profile: &str) -> Result<(), String> {
    let request = format!("exec {profile}");
    let mut last = String::new();
    for file in [
        "/proc/thread-self/attr/apparmor/exec",
        "/proc/thread-self/attr/exec",
    ] {
        match std::fs::OpenOptions::new().write(true).open(file) {
            Ok(mut f) => {
                return f
                    .write_all(request.as_bytes())
                    .map_err(|e| format!("AppArmor profile {profile}: write {file}: {e}"));
            }
            Err(e) => last = format!("{file}: {e}"),
        }
    }
    Err(format!("AppArmor profile {profile}: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_gets_the_default_where_apparmor_is_and_nothing_elsewhere() {
        let default = Some(DEFAULT_PROFILE.to_string());
        assert_eq!(
            decide(&AppArmorProfile::Unset, false, true),
            Ok(default.clone())
        );
        assert_eq!(decide(&AppArmorProfile::Unset, true, true), Ok(None));
        assert_eq!(decide(&AppArmorProfile::Unset, false, false), Ok(None));
        assert_eq!(
            decide(&AppArmorProfile::RuntimeDefault, false, true),
            Ok(default)
        );
        assert_eq!(
            decide(&AppArmorProfile::RuntimeDefault, true, true),
            Ok(None)
        );
        assert_eq!(decide(&AppArmorProfile::Unconfined, false, true), Ok(None));
        assert_eq!(decide(&AppArmorProfile::Unconfined, false, false), Ok(None));
    }

    #[test]
    fn explicit_profiles_need_apparmor_and_a_name() {
        let local = AppArmorProfile::Localhost("deny-write".into());
        assert_eq!(decide(&local, false, true), Ok(Some("deny-write".into())));
        assert_eq!(decide(&local, true, true), Ok(Some("deny-write".into())));
        for asked in [local, AppArmorProfile::RuntimeDefault] {
            let err = decide(&asked, false, false).unwrap_err();
            assert!(err.contains("not enabled"), "{err}");
        }
        assert!(decide(&AppArmorProfile::Localhost(String::new()), false, true).is_err());
    }

    #[test]
    fn loaded_profiles_are_read_by_name_not_prefix() {
        let profiles = "berth-default (enforce)\n/usr/bin/man (enforce)\ncri-deny (complain)\n";
        assert!(is_loaded(profiles, "berth-default"));
        assert!(is_loaded(profiles, "/usr/bin/man"));
        assert!(is_loaded(profiles, "cri-deny"));
        assert!(!is_loaded(profiles, "cri"));
        assert!(!is_loaded(profiles, "berth"));
    }

    #[test]
    fn the_default_profile_names_itself_and_denies_mount() {
        let text = default_profile_text();
        assert!(
            text.contains(&format!("profile {DEFAULT_PROFILE} flags=")),
            "{text}"
        );
        assert!(text.contains("  deny mount,\n"), "{text}");
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }
}
