//! SIGHUP: what berthd takes from its config file without a restart, as `systemctl reload
//! berthd` asks. Pods, containers and the CRI socket are not touched.
//!
//! - `[log] level`: applied to the running subscriber (unless `RUST_LOG` holds it).
//! - registry host files: read on every pull already; the TLS clients built from their `ca`
//!   files are dropped, so the next pull reads changed certificates too.
//!
//! Every other key needs a restart; one that changed in the file is named in a warning. A file
//! that does not load changes nothing.

use std::path::Path;

use berth_common::metrics::OutcomeLabel;
use berth_image::Images;

use crate::config::Config;
use crate::logging::LogLevel;
use crate::metrics::ReloadCounter;

pub struct Reloader<'a> {
    pub path: Option<&'a Path>,
    pub running: Config,
    pub log_level: LogLevel,
    pub images: &'a Images,
    pub reloads: ReloadCounter,
}

impl Reloader<'_> {
    pub fn reload(&mut self) {
        let outcome = match self.apply() {
            Ok(()) => "success",
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: configuration not reloaded; nothing changed");
                "error"
            }
        };
        self.reloads.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    fn apply(&mut self) -> Result<(), String> {
        let new = Config::load(self.path).map_err(|e| e.to_string())?;
        let level = if self.log_level.set(&new.log.level)? {
            new.log.level.clone()
        } else {
            "RUST_LOG (unchanged)".to_string()
        };
        self.images.forget_registry_clients();
        let mut reloaded = self.running.clone();
        reloaded.log.level = new.log.level.clone();
        let needs_restart = changed_sections(&reloaded, &new);
        if !needs_restart.is_empty() {
            tracing::warn!(
                sections = %needs_restart.join(", "),
                "SIGHUP: these changed in the file and take effect at the next restart"
            );
        }
        tracing::info!(level = %level, "SIGHUP: reloaded the log level and registry host files");
        self.running = reloaded;
        Ok(())
    }
}

/// The top-level keys and sections that differ between two configurations.
fn changed_sections(a: &Config, b: &Config) -> Vec<String> {
    let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) =
        (toml::Value::try_from(a), toml::Value::try_from(b))
    else {
        return Vec::new();
    };
    let mut changed: Vec<String> = a
        .iter()
        .filter(|(key, value)| b.get(*key) != Some(*value))
        .map(|(key, _)| key.clone())
        .collect();
    changed.sort();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_sections_names_what_differs_and_nothing_else() {
        let a = Config::default();
        let mut b = a.clone();
        assert!(changed_sections(&a, &b).is_empty());
        b.metrics.address = "0.0.0.0:9810".to_string();
        b.root = "/srv/berth".into();
        assert_eq!(changed_sections(&a, &b), ["metrics", "root"]);
    }
}
