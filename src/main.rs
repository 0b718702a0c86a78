//! berthd: a Kubernetes CRI runtime. See ARCHITECTURE.md for the map.

mod agent;
mod config;
mod health;
mod logging;
mod metrics;
mod reload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "berthd", version, about = "berth: a Kubernetes CRI runtime")]
struct Cli {
    /// Configuration file (TOML). Without it, /etc/berth/config.toml if it exists, else defaults.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print or check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ask the agent on the configured socket whether it is up: exit 0 and one line when it
    /// answers and says RuntimeReady (NetworkReady is said, not required), 1 otherwise.
    Health {
        /// How long to wait for the answer.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        timeout_secs: u64,
    },
    /// Print berthd's version and the CRI API it serves.
    Version,
    /// The OCI executor: one container operation per process (started by the monitor).
    #[command(hide = true)]
    Init {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The per-pod monitor (started by the agent, not by hand).
    #[command(hide = true)]
    Monitor {
        /// The monitor's JSON configuration, written by the agent in the pod's state dir.
        config: PathBuf,
    },
    /// A pod monitor started ahead of its pod (by the agent), told its config on stdin.
    #[command(hide = true)]
    MonitorStandby {
        /// The agent's state dir: the config must be under its `pods`.
        state: PathBuf,
        /// Spaces: room for the monitor's command line once it has its pod.
        #[arg(allow_hyphen_values = true)]
        room: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print every key with its default value and a one-line comment.
    Default,
    /// Validate a configuration file and print the effective configuration.
    Check {
        /// The file to check.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Config(ConfigCommand::Default)) => output(config::DEFAULT_TOML),
        Some(Command::Config(ConfigCommand::Check { path })) => match Config::load(Some(&path)) {
            Ok(config) => output(&format!(
                "{}: ok\n{}",
                path.display(),
                toml::to_string(&config).unwrap_or_default()
            )),
            Err(e) => fail(e),
        },
        Some(Command::Health { timeout_secs }) => health::run(
            cli.config,
            std::time::Duration::from_secs(timeout_secs.max(1)),
        ),
        Some(Command::Version) => {
            output(&format!("berthd {} (CRI v1)\n", env!("CARGO_PKG_VERSION")))
        }
        // Before any thread exists: libcontainer clones this very process.
        Some(Command::Init { args }) => ExitCode::from(berth_runtime::executor::run(&args) as u8),
        // Before any thread exists: the monitor forks and unshares.
        Some(Command::Monitor { config }) => {
            ExitCode::from(berth_runtime::monitor::run(&config) as u8)
        }
        Some(Command::MonitorStandby { state, room: _ }) => {
            ExitCode::from(berth_runtime::monitor::run_standby(&state) as u8)
        }
        None => serve(cli.config),
    }
}

fn serve(config_path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(config_path.as_deref()) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    let log_level = logging::init(&config.log);
    // TLS to registries uses ring (the aws-lc default costs minutes of build for nothing here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(agent::run(config, config_path.as_deref(), log_level)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Writes a command's output to stdout. A reader that went before it was written (`| head`)
/// ends the command quietly, with a non-zero exit; any other write error is one line.
fn output(text: &str) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::FAILURE,
        Err(e) => fail(format!("write the output: {e}")),
    }
}

/// One clear line on stderr and a non-zero exit.
fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("berthd: {error}");
    ExitCode::FAILURE
}
