//! The process: its argv, environment and working directory, from the container config over
//! the image config.

use std::path::{Path, PathBuf};

use super::input::{EnvVar, ImageConfig};
use super::SpecError;

/// PATH when neither the image nor the config sets one (containerd's and Docker's).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// argv, merged as kubelet documents and containerd (after Docker) does: a `command` replaces
/// the image's Entrypoint and drops its Cmd; `args` alone replace the Cmd.
pub fn process_args(
    command: &[String],
    args: &[String],
    image: &ImageConfig,
) -> Result<Vec<String>, SpecError> {
    let mut argv: Vec<String> = command.to_vec();
    let mut rest: &[String] = args;
    if command.is_empty() {
        if args.is_empty() {
            rest = &image.cmd;
        }
        // `ENTRYPOINT [""]` is how a Dockerfile clears an inherited entrypoint.
        if image.entrypoint != [""] {
            argv = image.entrypoint.clone();
        }
    }
    argv.extend(rest.iter().cloned());
    if argv.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(argv)
}

/// The environment, in containerd's order: PATH, TERM (with a tty), HOSTNAME, then the image's
/// variables, then the config's. A later entry replaces an earlier one with the same key where
/// it stands; an image entry without `=` unsets the key.
pub fn process_env(
    image_env: &[String],
    config_env: &[EnvVar],
    hostname: &str,
    tty: bool,
) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH.to_string()];
    if tty {
        env.push("TERM=xterm".to_string());
    }
    set_env(&mut env, &format!("HOSTNAME={hostname}"));
    for entry in image_env {
        set_env(&mut env, entry);
    }
    for var in config_env {
        set_env(&mut env, &format!("{}={}", var.key, var.value));
    }
    env
}

/// Replaces the entry with `entry`'s key, or appends it; `KEY` alone removes the key.
fn set_env(env: &mut Vec<String>, entry: &str) {
    let (key, has_value) = match entry.split_once('=') {
        Some((key, _)) => (key, true),
        None => (entry, false),
    };
    let position = env
        .iter()
        .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
    match (position, has_value) {
        (Some(i), true) => env[i] = entry.to_string(),
        (Some(i), false) => {
            env.remove(i);
        }
        (None, true) => env.push(entry.to_string()),
        (None, false) => {}
    }
}

/// The working directory: the config's, else the image's, else `/`. A relative one is taken
/// from `/`, as Docker does for a relative WORKDIR (the OCI spec wants it absolute).
pub fn working_dir(config: &str, image: &str) -> PathBuf {
    let dir = [config, image]
        .into_iter()
        .find(|d| !d.is_empty())
        .unwrap_or("/");
    Path::new("/").join(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            ..ImageConfig::default()
        }
    }

    #[test]
    fn argv_follows_kubelet_rules() {
        let img = image(&["/entry", "-e"], &["cmd", "-c"]);
        // (command, args, expected)
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (&["/bin/sh"], &["-c", "true"], &["/bin/sh", "-c", "true"]),
            (&["/bin/sh"], &[], &["/bin/sh"]),
            (&[], &["x"], &["/entry", "-e", "x"]),
            (&[], &[], &["/entry", "-e", "cmd", "-c"]),
        ];
        for (command, args, expected) in cases {
            let argv = process_args(&strings(command), &strings(args), &img).unwrap();
            assert_eq!(argv, strings(expected), "command {command:?} args {args:?}");
        }
    }

    #[test]
    fn command_replaces_image_entrypoint_and_cmd() {
        let argv = process_args(&strings(&["/app"]), &[], &image(&["/entry"], &["cmd"])).unwrap();
        assert_eq!(argv, strings(&["/app"]));
    }

    #[test]
    fn args_only_appends_to_image_entrypoint() {
        let argv = process_args(&[], &strings(&["--flag"]), &image(&["/entry"], &["cmd"])).unwrap();
        assert_eq!(argv, strings(&["/entry", "--flag"]));
    }

    #[test]
    fn neither_runs_image_entrypoint_then_cmd() {
        let argv = process_args(&[], &[], &image(&["/entry"], &["cmd"])).unwrap();
        assert_eq!(argv, strings(&["/entry", "cmd"]));
        let argv = process_args(&[], &[], &image(&[], &["sh"])).unwrap();
        assert_eq!(argv, strings(&["sh"]));
    }

    #[test]
    fn empty_string_entrypoint_counts_as_none() {
        let argv = process_args(&[], &[], &image(&[""], &["sh", "-c", "true"])).unwrap();
        assert_eq!(argv, strings(&["sh", "-c", "true"]));
    }

    #[test]
    fn no_command_anywhere_is_an_error() {
        let err = process_args(&[], &[], &image(&[], &[])).unwrap_err();
        assert!(matches!(err, SpecError::NoCommand));
        assert!(process_args(&[], &[], &image(&[""], &[])).is_err());
    }

    fn var(key: &str, value: &str) -> EnvVar {
        EnvVar {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn env_without_path_gets_the_default_path_and_hostname() {
        let env = process_env(&[], &[], "pod-a", false);
        assert_eq!(env, strings(&[DEFAULT_PATH, "HOSTNAME=pod-a"]));
    }

    #[test]
    fn image_path_replaces_the_default_in_place() {
        let env = process_env(&strings(&["PATH=/bin", "A=1"]), &[], "h", false);
        assert_eq!(env, strings(&["PATH=/bin", "HOSTNAME=h", "A=1"]));
    }

    #[test]
    fn config_env_overrides_image_env_by_key() {
        let env = process_env(
            &strings(&["A=image", "B=image"]),
            &[var("A", "config"), var("C", "x=y")],
            "h",
            false,
        );
        assert_eq!(
            env,
            strings(&[DEFAULT_PATH, "HOSTNAME=h", "A=config", "B=image", "C=x=y"])
        );
    }

    #[test]
    fn config_env_may_override_hostname() {
        let env = process_env(&[], &[var("HOSTNAME", "mine")], "h", false);
        assert_eq!(env, strings(&[DEFAULT_PATH, "HOSTNAME=mine"]));
    }

    #[test]
    fn tty_adds_term_xterm() {
        let env = process_env(&[], &[], "h", true);
        assert_eq!(env, strings(&[DEFAULT_PATH, "TERM=xterm", "HOSTNAME=h"]));
        let env = process_env(&strings(&["TERM=vt100"]), &[], "h", true);
        assert!(env.contains(&"TERM=vt100".to_string()));
        assert!(!env.contains(&"TERM=xterm".to_string()));
    }

    #[test]
    fn image_entry_without_value_unsets_the_key() {
        let env = process_env(&strings(&["A=1", "A", "PATH"]), &[], "h", false);
        assert_eq!(env, strings(&["HOSTNAME=h"]));
    }

    #[test]
    fn working_dir_prefers_config_then_image_then_root() {
        let cases = [
            ("/work", "/img", "/work"),
            ("", "/img", "/img"),
            ("", "", "/"),
            ("", "app", "/app"),
        ];
        for (config, image, expected) in cases {
            assert_eq!(working_dir(config, image), PathBuf::from(expected));
        }
    }
}
