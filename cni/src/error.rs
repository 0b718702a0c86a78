//! Errors of plugin invocation, each naming the verb and the plugin.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Add,
    Check,
    Del,
}

impl Verb {
    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Check => "CHECK",
            Verb::Del => "DEL",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failing plugin said: the spec's error object (`{"code", "msg", "details"}` on stdout),
/// or, like libcni's `pluginErr`, a message made from stderr and the exit status.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PluginError {
    /// The spec's error code (0 when the plugin printed none).
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl PluginError {
    /// Spec code 3: "container unknown or does not exist" (nothing to clean up).
    pub const UNKNOWN_CONTAINER: u32 = 3;

    /// Builds the error of a plugin that exited unsuccessfully.
    pub(crate) fn from_output(status: &str, stdout: &[u8], stderr: &[u8]) -> PluginError {
        let stdout_text = String::from_utf8_lossy(stdout);
        let stderr_text = String::from_utf8_lossy(stderr);
        let stderr_text = stderr_text.trim();
        if stdout_text.trim().is_empty() {
            let msg = if stderr_text.is_empty() {
                format!("plugin failed with no error message ({status})")
            } else {
                format!("{stderr_text} ({status})")
            };
            return PluginError {
                code: 0,
                msg,
                details: String::new(),
            };
        }
        match serde_json::from_slice::<PluginError>(stdout) {
            Ok(e) if !e.msg.is_empty() || e.code != 0 => e,
            _ => PluginError {
                code: 0,
                msg: format!(
                    "plugin failed ({status}) and printed no error object: {}",
                    stdout_text.trim()
                ),
                details: stderr_text.to_string(),
            },
        }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = if self.msg.is_empty() {
            "(no message)"
        } else {
            &self.msg
        };
        f.write_str(msg)?;
        if !self.details.is_empty() && self.details != self.msg {
            write!(f, ": {}", self.details)?;
        }
        if self.code != 0 {
            write!(f, " (code {})", self.code)?;
        }
        Ok(())
    }
}

/// Why a CNI operation failed. Every message says which verb and plugin.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin ran and reported failure.
    #[error("CNI {verb} via {plugin} failed: {error}")]
    Plugin {
        verb: Verb,
        plugin: String,
        error: PluginError,
    },
    /// The plugin ran past the timeout and was killed (with its process group).
    #[error("CNI {verb} via {plugin} timed out after {}s; the plugin was killed", timeout.as_secs_f64())]
    Timeout {
        verb: Verb,
        plugin: String,
        timeout: Duration,
    },
    /// No executable of that name in any bin dir.
    #[error("CNI {verb} via {plugin} failed: plugin {plugin:?} not found in {searched}")]
    PluginNotFound {
        verb: Verb,
        plugin: String,
        searched: String,
    },
    /// The executable could not be started.
    #[error("CNI {verb} via {plugin} failed: cannot run {}: {source}", path.display())]
    Exec {
        verb: Verb,
        plugin: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The plugin succeeded but printed something that is not a result.
    #[error("CNI {verb} via {plugin} failed: plugin printed an invalid result: {message}")]
    BadResult {
        verb: Verb,
        plugin: String,
        message: String,
    },
    /// The attachment cannot be passed to plugins (bad container id or interface name, a
    /// `;` or `=` in CNI_ARGS).
    #[error("CNI {verb}: invalid attachment: {message}")]
    InvalidAttachment { verb: Verb, message: String },
    /// The network cannot be run (a `Network` built in code with no plugins).
    #[error("CNI network {network}: {message}")]
    InvalidNetwork { network: String, message: String },
    /// CHECK is impossible: network older than 0.4.0, or no cached ADD result.
    #[error("CNI CHECK on network {network}: {message}")]
    CheckUnavailable { network: String, message: String },
    /// The result cache could not be read or written.
    #[error("CNI result cache {}: {message}", path.display())]
    Cache { path: PathBuf, message: String },
}

impl CniError {
    /// The plugin's own error, when the plugin ran and reported one.
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            CniError::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_on_stdout_is_the_plugins_message() {
        let e = PluginError::from_output(
            "exit status 1",
            br#"{"code":4,"msg":"required env variables [CNI_NETNS] missing"}"#,
            b"",
        );
        assert_eq!(e.code, 4);
        assert_eq!(e.msg, "required env variables [CNI_NETNS] missing");
        assert_eq!(
            e.to_string(),
            "required env variables [CNI_NETNS] missing (code 4)"
        );
    }

    #[test]
    fn error_details_follow_the_message() {
        let e = PluginError::from_output(
            "exit status 1",
            br#"{"cniVersion":"1.0.0","code":7,"msg":"invalid config","details":"bad subnet"}"#,
            b"",
        );
        assert_eq!(e.to_string(), "invalid config: bad subnet (code 7)");
    }

    #[test]
    fn plugin_error_from_stderr_when_stdout_is_empty() {
        let e = PluginError::from_output("exit status 2", b"", b"panic: boom\n");
        assert_eq!(e.code, 0);
        assert_eq!(e.msg, "panic: boom (exit status 2)");
        let e = PluginError::from_output("killed by signal 9", b"", b"");
        assert_eq!(
            e.msg,
            "plugin failed with no error message (killed by signal 9)"
        );
    }

    #[test]
    fn unparsable_stdout_is_quoted() {
        let e = PluginError::from_output("exit status 1", b"oops not json", b"stderr text");
        assert!(e.msg.contains("oops not json"), "{e}");
        assert_eq!(e.details, "stderr text");
    }

    #[test]
    fn cni_error_names_verb_and_plugin() {
        let e = CniError::Plugin {
            verb: Verb::Add,
            plugin: "bridge".into(),
            error: PluginError {
                code: 11,
                msg: "failed to allocate".into(),
                details: String::new(),
            },
        };
        assert_eq!(
            e.to_string(),
            "CNI ADD via bridge failed: failed to allocate (code 11)"
        );
        assert_eq!(e.plugin_error().map(|p| p.code), Some(11));
    }
}
