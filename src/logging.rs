//! Logging setup: `tracing` to stderr, text or JSON, level from the config unless `RUST_LOG` is set.
//! The level can be changed while berthd runs (SIGHUP): the filter sits behind a reload handle.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// Changes the level of the installed subscriber.
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it wins over the config, now and on every reload.
    from_env: bool,
}

impl LogLevel {
    /// Applies `level` (a tracing filter the config already validated). Returns false when
    /// `RUST_LOG` holds the level instead, so nothing changed.
    pub fn set(&self, level: &str) -> Result<bool, String> {
        if self.from_env {
            return Ok(false);
        }
        let filter = EnvFilter::builder()
            .parse(level)
            .map_err(|e| format!("{level:?}: {e}"))?;
        self.handle
            .reload(filter)
            .map(|()| true)
            .map_err(|e| e.to_string())
    }
}

pub fn init(config: &LogConfig) -> LogLevel {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|v| EnvFilter::builder().parse(v).ok());
    let from_env_set = from_env.is_some();
    // The config's level was validated when it was loaded.
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.level));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    match config.format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi))
            .init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .init(),
    }
    LogLevel {
        handle,
        from_env: from_env_set,
    }
}
