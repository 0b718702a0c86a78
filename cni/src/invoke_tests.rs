//! The invoker against fake plugins: small shell scripts that record their stdin, environment
//! and call order, and answer what each test needs. No root, no real network.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use serde_json::json;

use super::*;
use crate::capabilities::PortMapping;

struct Fakes {
    dir: tempfile::TempDir,
}

/// What a fake answers by default: a result naming itself, on ADD only.
fn result_of(name: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "br0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"interface": 1, "address": "10.1.2.3/24", "gateway": "10.1.2.1"}],
        "dns": {"nameservers": [name]}
    })
}

impl Fakes {
    fn new() -> Fakes {
        let fakes = Fakes {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(fakes.bin()).unwrap();
        fakes
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn invoker(&self) -> CniInvoker {
        CniInvoker::new(
            vec![self.dir.path().join("empty-bin"), self.bin()],
            ResultCache::new(self.dir.path().join("results")),
        )
    }

    /// A plugin that records its call, then runs `on_call` (shell) or, without one, prints
    /// its result on ADD.
    fn plugin(&self, name: &str, on_call: Option<&str>) {
        let d = self.dir.path().display();
        let default = format!(
            "[ \"$CNI_COMMAND\" = ADD ] && printf '%s' '{}'\nexit 0",
            result_of(name)
        );
        let script = format!(
            "#!/bin/sh\n\
             /bin/cat > {d}/{name}.$CNI_COMMAND.stdin\n\
             /usr/bin/env > {d}/{name}.$CNI_COMMAND.env\n\
             echo \"$CNI_COMMAND {name}\" >> {d}/log\n\
             {}\n",
            on_call.map(str::to_string).unwrap_or(default)
        );
        let path = self.bin().join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn stdin(&self, name: &str, verb: &str) -> Value {
        let path = self.dir.path().join(format!("{name}.{verb}.stdin"));
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }

    fn env(&self, name: &str, verb: &str) -> BTreeMap<String, String> {
        let path = self.dir.path().join(format!("{name}.{verb}.env"));
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

fn network(version: &str, plugins: &[(&str, &[&str])]) -> Network {
    let plugins = plugins
        .iter()
        .map(|(name, caps)| {
            let caps: Map<String, Value> = caps.iter().map(|c| (c.to_string(), json!(true))).collect();
            let conf = json!({"type": name, "name": "overridden", "setting": format!("{name}-setting"), "capabilities": caps});
            let Value::Object(conf) = conf else { unreachable!() };
            PluginConf::from_object(conf).unwrap()
        })
        .collect();
    Network {
        name: "testnet".into(),
        cni_version: version.into(),
        disable_check: false,
        plugins,
        source: PathBuf::new(),
    }
}

fn attachment(netns: &str) -> Attachment {
    let mut att = Attachment::new("sandbox1", netns).with_pod("default", "web-0", "uid-1");
    att.capabilities.port_mappings.push(PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: "tcp".into(),
        host_ip: String::new(),
    });
    att.capabilities.dns = Some(Default::default());
    att
}

#[test]
fn cni_args_start_with_ignore_unknown_and_keep_order() {
    let att = Attachment::new("abc", "/run/netns/x").with_pod("kube-system", "dns-1", "u-1");
    assert_eq!(
        att.cni_args().unwrap(),
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
    );
    assert_eq!(
        Attachment::new("abc", "/x").cni_args().unwrap(),
        "IgnoreUnknown=1"
    );
    let mut dup = Attachment::new("abc", "/x");
    dup.args.push(("IgnoreUnknown".into(), "1".into()));
    assert_eq!(dup.cni_args().unwrap(), "IgnoreUnknown=1");
}

#[test]
fn cni_args_refuse_separators() {
    for (k, v) in [("A", "b;c"), ("A", "b=c"), ("A;B", "c"), ("", "c")] {
        let mut att = Attachment::new("abc", "/x");
        att.args.push((k.into(), v.into()));
        assert!(att.cni_args().is_err(), "{k}={v}");
    }
}

#[test]
fn interface_names_follow_libcni() {
    for good in ["eth0", "lo", "a", "fifteen-chars-x"] {
        assert!(is_valid_ifname(good), "{good}");
    }
    for bad in ["", ".", "..", "sixteen-chars-xx", "a/b", "a:b", "a b"] {
        assert!(!is_valid_ifname(bad), "{bad}");
    }
}

#[test]
fn stdin_injects_list_name_version_prev_result_and_declared_capabilities() {
    let net = network(
        "1.0.0",
        &[("a", &[]), ("b", &["portMappings", "bandwidth"])],
    );
    let offered = attachment("/x").capabilities.to_json();
    let prev = json!({"cniVersion": "1.0.0", "ips": []});

    let a: Value =
        serde_json::from_slice(&plugin_stdin(&net, &net.plugins[0], None, &offered)).unwrap();
    assert_eq!(a["name"], "testnet");
    assert_eq!(a["cniVersion"], "1.0.0");
    assert_eq!(a["setting"], "a-setting");
    assert!(a.get("prevResult").is_none());
    assert!(a.get("runtimeConfig").is_none());

    let b: Value =
        serde_json::from_slice(&plugin_stdin(&net, &net.plugins[1], Some(&prev), &offered))
            .unwrap();
    assert_eq!(b["prevResult"], prev);
    assert_eq!(
        b["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
}

#[tokio::test]
async fn add_chains_prev_result_and_caches_the_final_result() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    fakes.plugin("b", None);
    let net = network("1.0.0", &[("a", &[]), ("b", &["portMappings"])]);
    let invoker = fakes.invoker();
    let att = attachment("/run/netns/fake");

    let result = invoker.add(&net, &att).await.unwrap();
    assert_eq!(fakes.log(), ["ADD a", "ADD b"]);
    assert_eq!(result.raw(), &result_of("b"));
    let a_in = fakes.stdin("a", "ADD");
    assert!(a_in.get("prevResult").is_none());
    assert!(a_in.get("runtimeConfig").is_none());
    let b_in = fakes.stdin("b", "ADD");
    assert_eq!(b_in["prevResult"], result_of("a"));
    assert_eq!(b_in["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert_eq!(
        invoker.cache().load("sandbox1", "eth0").unwrap(),
        Some(result)
    );
}

#[tokio::test]
async fn plugins_run_with_only_the_cni_environment() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    let invoker = fakes.invoker();
    invoker
        .add(
            &network("1.0.0", &[("a", &[])]),
            &attachment("/run/netns/fake"),
        )
        .await
        .unwrap();
    let env = fakes.env("a", "ADD");
    let expected = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", "sandbox1".to_string()),
        ("CNI_NETNS", "/run/netns/fake".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=uid-1".to_string(),
        ),
        (
            "CNI_PATH",
            format!("{}:{}", fakes.dir.path().join("empty-bin").display(), fakes.bin().display()),
        ),
        ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
    ];
    for (key, value) in &expected {
        assert_eq!(env.get(*key), Some(value), "{key}");
    }
    // Nothing of ours leaks through; only what the shell itself sets may appear.
    for key in env.keys() {
        assert!(
            expected.iter().any(|(k, _)| k == key)
                || ["PWD", "OLDPWD", "SHLVL", "_"].contains(&key.as_str()),
            "unexpected variable {key} in the plugin's environment"
        );
    }
}

#[tokio::test]
async fn check_and_del_get_the_cached_result_and_del_runs_in_reverse() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    fakes.plugin("b", None);
    let net = network("1.0.0", &[("a", &[]), ("b", &[])]);
    let invoker = fakes.invoker();
    let att = attachment("/proc/self/ns/net");
    invoker.add(&net, &att).await.unwrap();

    invoker.check(&net, &att).await.unwrap();
    assert_eq!(fakes.stdin("a", "CHECK")["prevResult"], result_of("b"));
    assert_eq!(fakes.stdin("b", "CHECK")["prevResult"], result_of("b"));

    invoker.del(&net, &att).await.unwrap();
    assert_eq!(
        fakes.log(),
        ["ADD a", "ADD b", "CHECK a", "CHECK b", "DEL b", "DEL a"]
    );
    assert_eq!(fakes.stdin("a", "DEL")["prevResult"], result_of("b"));
    // A live namespace is passed as is.
    assert_eq!(fakes.env("b", "DEL")["CNI_NETNS"], "/proc/self/ns/net");
    assert_eq!(invoker.cache().load("sandbox1", "eth0").unwrap(), None);

    // A second DEL has no cached result to give, and succeeds.
    invoker.del(&net, &att).await.unwrap();
    assert!(fakes.stdin("a", "DEL").get("prevResult").is_none());
}

#[tokio::test]
async fn del_before_0_4_0_gets_no_prev_result() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    let net = network("0.3.1", &[("a", &[])]);
    let invoker = fakes.invoker();
    let att = attachment("/run/netns/fake");
    invoker.add(&net, &att).await.unwrap();
    invoker.del(&net, &att).await.unwrap();
    assert!(fakes.stdin("a", "DEL").get("prevResult").is_none());
    let err = invoker.check(&net, &att).await.unwrap_err().to_string();
    assert!(err.contains("has no CHECK"), "{err}");
}

#[tokio::test]
async fn del_passes_an_empty_netns_when_the_namespace_is_gone() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    let net = network("1.0.0", &[("a", &[])]);
    let invoker = fakes.invoker();
    // An existing path that is not a namespace counts as gone too (an unmounted pin).
    let plain_file = fakes.dir.path().join("not-a-netns");
    std::fs::write(&plain_file, b"").unwrap();
    for netns in [Path::new("/nonexistent/netns/x"), &plain_file] {
        let att = attachment(netns.to_str().unwrap());
        invoker.del(&net, &att).await.unwrap();
        assert_eq!(fakes.env("a", "DEL")["CNI_NETNS"], "");
    }
}

#[tokio::test]
async fn del_treats_unknown_container_as_done() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    fakes.plugin(
        "b",
        Some(r#"[ "$CNI_COMMAND" = DEL ] && { printf '%s' '{"code":3,"msg":"container unknown"}'; exit 1; }
printf '%s' '{"cniVersion":"1.0.0"}'"#),
    );
    let net = network("1.0.0", &[("a", &[]), ("b", &[])]);
    let invoker = fakes.invoker();
    let att = attachment("/run/netns/fake");
    invoker.add(&net, &att).await.unwrap();
    invoker.del(&net, &att).await.unwrap();
    assert_eq!(invoker.cache().load("sandbox1", "eth0").unwrap(), None);
}

#[tokio::test]
async fn del_runs_every_plugin_and_returns_the_first_real_error() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    fakes.plugin(
        "b",
        Some(r#"[ "$CNI_COMMAND" = DEL ] && { printf '%s' '{"code":7,"msg":"cannot remove rules"}'; exit 1; }
printf '%s' '{"cniVersion":"1.0.0"}'"#),
    );
    let net = network("1.0.0", &[("a", &[]), ("b", &[])]);
    let invoker = fakes.invoker();
    let att = attachment("/run/netns/fake");
    invoker.add(&net, &att).await.unwrap();
    let err = invoker.del(&net, &att).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "CNI DEL via b failed: cannot remove rules (code 7)"
    );
    assert_eq!(fakes.log(), ["ADD a", "ADD b", "DEL b", "DEL a"]);
    // Kept for the retry.
    assert!(invoker.cache().load("sandbox1", "eth0").unwrap().is_some());
}

#[tokio::test]
async fn add_error_carries_the_plugins_message_and_caches_nothing() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    fakes.plugin(
        "b",
        Some(r#"printf '%s' '{"code":7,"msg":"invalid subnet","details":"10.0.0.0/33"}'; exit 1"#),
    );
    let net = network("1.0.0", &[("a", &[]), ("b", &[])]);
    let invoker = fakes.invoker();
    let err = invoker
        .add(&net, &attachment("/run/netns/fake"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "CNI ADD via b failed: invalid subnet: 10.0.0.0/33 (code 7)"
    );
    assert_eq!(err.plugin_error().unwrap().code, 7);
    assert_eq!(invoker.cache().load("sandbox1", "eth0").unwrap(), None);
}

#[tokio::test]
async fn stderr_is_the_message_when_a_plugin_prints_no_error_object() {
    let fakes = Fakes::new();
    fakes.plugin("a", Some("echo 'segfault somewhere' >&2; exit 2"));
    let err = fakes
        .invoker()
        .add(
            &network("1.0.0", &[("a", &[])]),
            &attachment("/run/netns/fake"),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("CNI ADD via a failed: segfault somewhere (exit status: 2)"),
        "{err}"
    );
}

#[tokio::test]
async fn add_rejects_output_that_is_not_a_result() {
    let fakes = Fakes::new();
    fakes.plugin("a", Some("echo garbage"));
    let err = fakes
        .invoker()
        .add(
            &network("1.0.0", &[("a", &[])]),
            &attachment("/run/netns/fake"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CniError::BadResult { .. }), "{err}");
    assert!(err
        .to_string()
        .starts_with("CNI ADD via a failed: plugin printed an invalid result"));
}

#[tokio::test]
async fn missing_plugin_names_the_dirs_searched() {
    let fakes = Fakes::new();
    let err = fakes
        .invoker()
        .add(
            &network("1.0.0", &[("nosuch", &[])]),
            &attachment("/run/netns/fake"),
        )
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "CNI ADD via nosuch failed: plugin \"nosuch\" not found in {}, {}",
            fakes.dir.path().join("empty-bin").display(),
            fakes.bin().display()
        )
    );
}

#[tokio::test]
async fn plugin_past_the_timeout_is_killed_with_its_children() {
    let fakes = Fakes::new();
    let child_pid = fakes.dir.path().join("child.pid");
    fakes.plugin(
        "slow",
        Some(&format!(
            "/bin/sleep 60 & echo $! > {}; wait",
            child_pid.display()
        )),
    );
    let invoker = fakes.invoker().with_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = invoker
        .add(
            &network("1.0.0", &[("slow", &[])]),
            &attachment("/run/netns/fake"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CniError::Timeout { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "CNI ADD via slow timed out after 0.5s; the plugin was killed"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid = std::fs::read_to_string(&child_pid).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie waiting for its new parent to reap it.
    while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            Instant::now() < deadline,
            "the plugin's child survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn check_needs_a_cached_result_unless_disabled() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    let mut net = network("1.0.0", &[("a", &[])]);
    let invoker = fakes.invoker();
    let att = attachment("/run/netns/fake");
    let err = invoker.check(&net, &att).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "CNI CHECK on network testnet: no cached ADD result for sandbox1/eth0"
    );
    net.disable_check = true;
    invoker.check(&net, &att).await.unwrap();
    assert!(fakes.log().is_empty());
}

#[tokio::test]
async fn invalid_attachments_are_refused_before_any_plugin_runs() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    let net = network("1.0.0", &[("a", &[])]);
    let invoker = fakes.invoker();
    let mut bad_id = attachment("/run/netns/fake");
    bad_id.container_id = "../x".into();
    let mut bad_if = attachment("/run/netns/fake");
    bad_if.ifname = "much-too-long-name".into();
    let mut bad_arg = attachment("/run/netns/fake");
    bad_arg.args.push(("K".into(), "a;b".into()));
    for att in [bad_id, bad_if, bad_arg, attachment("")] {
        let err = invoker.add(&net, &att).await.unwrap_err();
        assert!(matches!(err, CniError::InvalidAttachment { .. }), "{err}");
    }
    assert!(fakes.log().is_empty());
}

#[tokio::test]
async fn metrics_record_each_plugin_call() {
    let fakes = Fakes::new();
    fakes.plugin("a", None);
    let mut registry = prometheus_client::registry::Registry::default();
    let invoker = fakes
        .invoker()
        .with_metrics(CniMetrics::register(&mut registry));
    invoker
        .add(
            &network("1.0.0", &[("a", &[])]),
            &attachment("/run/netns/fake"),
        )
        .await
        .unwrap();
    let _ = invoker
        .add(
            &network("1.0.0", &[("nosuch", &[])]),
            &attachment("/run/netns/fake"),
        )
        .await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"_count{operation="ADD",plugin="a",outcome="success"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"_count{operation="ADD",plugin="nosuch",outcome="error"} 1"#),
        "{text}"
    );
}
