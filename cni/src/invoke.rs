//! Running a network's plugins for one attachment, following libcni's `AddNetworkList`,
//! `CheckNetworkList` and `DelNetworkList`, with our own process handling: a cleared
//! environment, stdin built from the plugin's raw config, and a timeout that kills the plugin's
//! whole process group.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use crate::cache::ResultCache;
use crate::capabilities::{runtime_config_for, RuntimeCapabilities};
use crate::error::{CniError, PluginError, Verb};
use crate::metrics::CniMetrics;
use crate::network::{is_valid_name, Network, PluginConf};
use crate::result::CniResult;
use crate::CniConfig;

/// How long one plugin call may run before it is killed (containerd has no limit; CRI-O none
/// either; kubelet's RunPodSandbox deadline is 4 min, so one stuck plugin must not eat it all).
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// `PATH` for plugins: bridge and portmap run `iptables`, found through it.
const PLUGIN_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// After a kill, how long to wait for the plugin's pipes to close before giving up on it.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// One interface of one sandbox on a network: what a plugin needs besides its config.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the sandbox id.
    pub container_id: String,
    /// `CNI_NETNS`: the pinned network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface inside the namespace, "eth0" for pods.
    pub ifname: String,
    /// `CNI_ARGS` pairs, after the `IgnoreUnknown=1` that is always sent first.
    pub args: Vec<(String, String)>,
    /// Offered to plugins as `runtimeConfig`, each only to plugins that declare it.
    pub capabilities: RuntimeCapabilities,
}

impl Attachment {
    /// `eth0` of `container_id` in `netns`, with no args and no capabilities.
    pub fn new(container_id: impl Into<String>, netns: impl Into<PathBuf>) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".to_string(),
            args: Vec::new(),
            capabilities: RuntimeCapabilities::default(),
        }
    }

    /// Adds the args kubelet's plugins expect: K8S_POD_NAMESPACE, K8S_POD_NAME,
    /// K8S_POD_INFRA_CONTAINER_ID (the sandbox id) and K8S_POD_UID.
    pub fn with_pod(mut self, namespace: &str, name: &str, uid: &str) -> Attachment {
        let infra = self.container_id.clone();
        self.args.extend([
            ("K8S_POD_NAMESPACE".to_string(), namespace.to_string()),
            ("K8S_POD_NAME".to_string(), name.to_string()),
            ("K8S_POD_INFRA_CONTAINER_ID".to_string(), infra),
            ("K8S_POD_UID".to_string(), uid.to_string()),
        ]);
        self
    }

    /// The `CNI_ARGS` value: `IgnoreUnknown=1;K=V;...`. Plugins split on `;` and `=`, so
    /// neither may appear in a key or value.
    pub fn cni_args(&self) -> Result<String, String> {
        let mut out = String::from("IgnoreUnknown=1");
        for (key, value) in &self.args {
            if key.is_empty()
                || [key, value]
                    .iter()
                    .any(|s| s.contains([';', '=']) || s.contains('\0'))
            {
                return Err(format!("CNI_ARGS pair {key:?}={value:?} cannot be encoded"));
            }
            if key == "IgnoreUnknown" {
                continue;
            }
            out.push(';');
            out.push_str(key);
            out.push('=');
            out.push_str(value);
        }
        Ok(out)
    }

    fn validate(&self, verb: Verb) -> Result<String, CniError> {
        let invalid = |message: String| CniError::InvalidAttachment { verb, message };
        if !is_valid_name(&self.container_id) {
            return Err(invalid(format!(
                "invalid container id {:?}",
                self.container_id
            )));
        }
        if !is_valid_ifname(&self.ifname) {
            return Err(invalid(format!("invalid interface name {:?}", self.ifname)));
        }
        if self.netns.as_os_str().is_empty() && verb != Verb::Del {
            return Err(invalid("no network namespace".to_string()));
        }
        self.cni_args().map_err(invalid)
    }
}

/// libcni's ValidateInterfaceName: 1..=15 bytes, not "." or "..", no '/', ':' or whitespace.
pub(crate) fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Runs plugins. Cheap to clone; share one per agent.
#[derive(Debug, Clone)]
pub struct CniInvoker {
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
    cache: ResultCache,
    metrics: Option<CniMetrics>,
}

/// One plugin call: everything but the process handling.
struct Call<'a> {
    verb: Verb,
    plugin: &'a PluginConf,
    stdin: Vec<u8>,
    container_id: &'a str,
    /// `CNI_NETNS`; empty on a DEL whose namespace is gone.
    netns: OsString,
    ifname: &'a str,
    cni_args: &'a str,
}

impl CniInvoker {
    /// Plugins from `bin_dirs` (searched in order), final ADD results kept in `cache`.
    pub fn new(bin_dirs: Vec<PathBuf>, cache: ResultCache) -> CniInvoker {
        CniInvoker {
            bin_dirs,
            timeout: DEFAULT_PLUGIN_TIMEOUT,
            cache,
            metrics: None,
        }
    }

    /// An invoker for the `[cni]` config section.
    pub fn from_config(config: &CniConfig, cache: ResultCache) -> CniInvoker {
        CniInvoker::new(config.bin_dirs.clone(), cache)
    }

    /// Sets the per-plugin timeout (default [`DEFAULT_PLUGIN_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> CniInvoker {
        self.timeout = timeout;
        self
    }

    /// Records every plugin call in `metrics`.
    pub fn with_metrics(mut self, metrics: CniMetrics) -> CniInvoker {
        self.metrics = Some(metrics);
        self
    }

    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }

    /// ADD: runs the plugins in order, each given the previous one's result as `prevResult`,
    /// and caches the final result. Before the first plugin runs, the network and attachment
    /// are cached without a result, so that a DEL can follow an ADD that never finished. On
    /// error no result is cached and earlier plugins are not undone: the caller runs
    /// [`del`](Self::del), which cleans up by container id.
    pub async fn add(&self, net: &Network, att: &Attachment) -> Result<CniResult, CniError> {
        let cni_args = att.validate(Verb::Add)?;
        ensure_plugins(net)?;
        let offered = att.capabilities.to_json();
        let (cache, network, attachment) = (self.cache.clone(), net.clone(), att.clone());
        self.on_blocking_thread(move || cache.save_attachment(&network, &attachment))
            .await?;
        let mut prev: Option<CniResult> = None;
        for plugin in &net.plugins {
            let stdin = plugin_stdin(net, plugin, prev.as_ref().map(CniResult::raw), &offered);
            let stdout = self
                .run(Call {
                    verb: Verb::Add,
                    plugin,
                    stdin,
                    container_id: &att.container_id,
                    netns: att.netns.clone().into_os_string(),
                    ifname: &att.ifname,
                    cni_args: &cni_args,
                })
                .await?;
            let result = CniResult::from_slice(&stdout).map_err(|message| CniError::BadResult {
                verb: Verb::Add,
                plugin: plugin.plugin_type.clone(),
                message,
            })?;
            prev = Some(result);
        }
        let result = prev.ok_or_else(|| no_plugins(net))?;
        let (cache, id, ifname, saved) = (
            self.cache.clone(),
            att.container_id.clone(),
            att.ifname.clone(),
            result.clone(),
        );
        self.on_blocking_thread(move || cache.save_result(&id, &ifname, &saved))
            .await?;
        Ok(result)
    }

    /// A write to the cache, on a blocking thread.
    async fn on_blocking_thread(
        &self,
        write: impl FnOnce() -> Result<(), CniError> + Send + 'static,
    ) -> Result<(), CniError> {
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| CniError::Cache {
                path: self.cache.dir().to_path_buf(),
                message: e.to_string(),
            })?
    }

    /// CHECK: runs the plugins in order with the cached ADD result as `prevResult`. Like
    /// libcni: an error for networks older than 0.4.0, nothing to do with `disableCheck`, and
    /// an error when no result is cached.
    pub async fn check(&self, net: &Network, att: &Attachment) -> Result<(), CniError> {
        let cni_args = att.validate(Verb::Check)?;
        ensure_plugins(net)?;
        if !net.has_check_and_cached_del() {
            return Err(CniError::CheckUnavailable {
                network: net.name.clone(),
                message: format!(
                    "cniVersion {} has no CHECK (0.4.0 and later)",
                    net.cni_version
                ),
            });
        }
        if net.disable_check {
            return Ok(());
        }
        let cached = self
            .cache
            .load(&att.container_id, &att.ifname)?
            .ok_or_else(|| CniError::CheckUnavailable {
                network: net.name.clone(),
                message: format!(
                    "no cached ADD result for {}/{}",
                    att.container_id, att.ifname
                ),
            })?;
        let offered = att.capabilities.to_json();
        for plugin in &net.plugins {
            self.run(Call {
                verb: Verb::Check,
                plugin,
                stdin: plugin_stdin(net, plugin, Some(cached.raw()), &offered),
                container_id: &att.container_id,
                netns: att.netns.clone().into_os_string(),
                ifname: &att.ifname,
                cni_args: &cni_args,
            })
            .await?;
        }
        Ok(())
    }

    /// DEL: runs the plugins in reverse order with the cached ADD result as `prevResult`
    /// (0.4.0+; none if nothing is cached), then forgets the cached result.
    ///
    /// Removal must never get stuck on the network, so DEL tolerates what is already gone:
    /// - a namespace that no longer exists (or is no nsfs mount any more) is passed as
    ///   `CNI_NETNS=""`, which the spec allows and the reference plugins answer by releasing
    ///   the IPAM lease only (the kernel removed the veth with the namespace); a namespace that
    ///   vanishes during a call gets that call retried once that way;
    /// - a plugin answering code 3, "container unknown or does not exist", counts as done.
    ///
    /// Every plugin runs even when one fails; the first other error is returned and the cached
    /// result is kept so that a retry hands plugins the same `prevResult`. Whether to retry or
    /// give up on the network is the caller's decision. `capabilities` should be those of the
    /// ADD: portmap removes its rules only when it is given the port mappings again.
    pub async fn del(&self, net: &Network, att: &Attachment) -> Result<(), CniError> {
        let cni_args = att.validate(Verb::Del)?;
        ensure_plugins(net)?;
        let cached = if net.has_check_and_cached_del() {
            match self.cache.load(&att.container_id, &att.ifname) {
                Ok(cached) => cached,
                Err(e) => {
                    // libcni drops an unreadable cache entry and deletes without prevResult.
                    tracing::warn!(container_id = %att.container_id, "{e}; deleting without prevResult");
                    None
                }
            }
        } else {
            None
        };
        let offered = att.capabilities.to_json();
        let netns_alive = is_netns(&att.netns);
        let mut first_error = None;
        for plugin in net.plugins.iter().rev() {
            let call = |netns: OsString| Call {
                verb: Verb::Del,
                plugin,
                stdin: plugin_stdin(net, plugin, cached.as_ref().map(CniResult::raw), &offered),
                container_id: &att.container_id,
                netns,
                ifname: &att.ifname,
                cni_args: &cni_args,
            };
            let netns = if netns_alive {
                att.netns.clone().into_os_string()
            } else {
                OsString::new()
            };
            let mut outcome = self.run(call(netns)).await;
            if outcome.is_err() && netns_alive && !is_netns(&att.netns) {
                outcome = self.run(call(OsString::new())).await;
            }
            match outcome {
                Ok(_) => {}
                Err(e) if is_already_gone(&e) => {
                    tracing::debug!(container_id = %att.container_id, "{e}; treated as deleted");
                }
                Err(e) => {
                    tracing::warn!(container_id = %att.container_id, "{e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        self.cache.remove(&att.container_id, &att.ifname)
    }

    /// The plugin's executable: the first regular file of that name in `bin_dirs`.
    fn find_plugin(&self, name: &str) -> Option<PathBuf> {
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(name))
            .find(|path| path.metadata().is_ok_and(|m| m.is_file()))
    }

    /// Runs one plugin; its stdout on success. Records the duration by verb, plugin and outcome.
    async fn run(&self, call: Call<'_>) -> Result<Vec<u8>, CniError> {
        let started = Instant::now();
        let outcome = self.exec(&call).await;
        if let Some(metrics) = &self.metrics {
            metrics.observe(
                call.verb,
                &call.plugin.plugin_type,
                outcome.is_ok(),
                started.elapsed(),
            );
        }
        tracing::debug!(
            verb = %call.verb,
            plugin = %call.plugin.plugin_type,
            container_id = call.container_id,
            ms = started.elapsed().as_millis() as u64,
            ok = outcome.is_ok(),
            "CNI plugin call"
        );
        outcome
    }

    async fn exec(&self, call: &Call<'_>) -> Result<Vec<u8>, CniError> {
        let verb = call.verb;
        let plugin = call.plugin.plugin_type.clone();
        let Some(path) = self.find_plugin(&plugin) else {
            return Err(CniError::PluginNotFound {
                verb,
                plugin,
                searched: self.searched(),
            });
        };
        let mut command = tokio::process::Command::new(&path);
        command
            .env_clear()
            .env("CNI_COMMAND", verb.as_str())
            .env("CNI_CONTAINERID", call.container_id)
            .env("CNI_NETNS", &call.netns)
            .env("CNI_IFNAME", call.ifname)
            .env("CNI_ARGS", call.cni_args)
            .env("CNI_PATH", self.cni_path())
            .env("PATH", PLUGIN_PATH)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills what it started too (iptables, IPAM).
            .process_group(0)
            .kill_on_drop(true);
        let exec_error = |source| CniError::Exec {
            verb,
            plugin: plugin.clone(),
            path: path.clone(),
            source,
        };
        let mut child = spawn_retrying_busy(&mut command)
            .await
            .map_err(exec_error)?;
        let pid = child.id();
        let mut stdin_pipe = child.stdin.take();
        let stdin = &call.stdin;
        let feed = async move {
            if let Some(pipe) = stdin_pipe.as_mut() {
                // A plugin may exit without reading its config; its exit status tells why.
                let _ = pipe.write_all(stdin).await;
            }
            drop(stdin_pipe);
        };
        let run = async { tokio::join!(feed, child.wait_with_output()).1 };
        tokio::pin!(run);
        let output = tokio::select! {
            output = &mut run => output.map_err(exec_error)?,
            () = tokio::time::sleep(self.timeout) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = tokio::time::timeout(KILL_GRACE, run).await;
                return Err(CniError::Timeout { verb, plugin, timeout: self.timeout });
            }
        };
        if output.status.success() {
            if !output.stderr.is_empty() {
                tracing::debug!(
                    verb = %verb,
                    plugin = %plugin,
                    "plugin stderr: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            return Ok(output.stdout);
        }
        Err(CniError::Plugin {
            verb,
            plugin,
            error: PluginError::from_output(
                &output.status.to_string(),
                &output.stdout,
                &output.stderr,
            ),
        })
    }

    fn cni_path(&self) -> OsString {
        let mut joined = OsString::new();
        for (i, dir) in self.bin_dirs.iter().enumerate() {
            if i > 0 {
                joined.push(":");
            }
            joined.push(dir);
        }
        joined
    }

    fn searched(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// libcni retries "text file busy" (a plugin being installed while we exec it) for 5 s.
async fn spawn_retrying_busy(
    command: &mut tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempts < 5 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// A plugin's stdin: its own config with the list's `name` and `cniVersion`, the previous
/// result and the capabilities it declared injected, as libcni's `buildOneConfig` does.
pub(crate) fn plugin_stdin(
    net: &Network,
    plugin: &PluginConf,
    prev_result: Option<&Value>,
    offered: &Map<String, Value>,
) -> Vec<u8> {
    let mut conf = plugin.conf.clone();
    conf.insert("name".into(), Value::String(net.name.clone()));
    conf.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    if let Some(rc) = runtime_config_for(&plugin.capabilities, offered) {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    // A map of JSON values always serializes.
    serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
}

/// Whether `path` is a network namespace (an nsfs file, e.g. a pinned bind mount).
fn is_netns(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && nix::sys::statfs::statfs(path)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// DEL errors that mean the attachment is already gone.
fn is_already_gone(e: &CniError) -> bool {
    e.plugin_error()
        .is_some_and(|p| p.code == PluginError::UNKNOWN_CONTAINER)
}

fn ensure_plugins(net: &Network) -> Result<(), CniError> {
    if net.plugins.is_empty() {
        return Err(no_plugins(net));
    }
    Ok(())
}

fn no_plugins(net: &Network) -> CniError {
    CniError::InvalidNetwork {
        network: net.name.clone(),
        message: "no plugins".to_string(),
    }
}

#[cfg(test)]
#[path = "invoke_tests.rs"]
mod tests;
