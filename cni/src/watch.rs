//! Keeps the network current while `conf_dir` changes (a CNI DaemonSet usually writes its
//! conflist after the runtime started). Polls: every interval it compares the candidate files'
//! names, sizes, inodes and mtimes with the last look and reloads only when they differ. That is
//! simpler than inotify, sees files behind symlinks change, and costs one readdir a second.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::network::{candidate_files, load_network, Network};

/// The network, or why there is none (a message for CRI `Status`, reason NetworkPluginNotReady).
pub type NetworkStatus = Result<Arc<Network>, String>;

/// Watches a config dir from a background task; dropping it stops the task.
#[derive(Debug)]
pub struct NetworkWatcher {
    conf_dir: PathBuf,
    status: watch::Receiver<NetworkStatus>,
    task: JoinHandle<()>,
}

/// What the last look saw: (file, size, inode, mtime s, mtime ns), or the listing error.
#[derive(Debug, PartialEq)]
enum Fingerprint {
    Files(Vec<(PathBuf, u64, u64, i64, i64)>),
    Unreadable(String),
}

impl NetworkWatcher {
    /// How often the directory is looked at.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

    /// Loads the network now and watches `conf_dir` every [`Self::DEFAULT_INTERVAL`].
    /// Must be called inside a tokio runtime.
    pub fn start(conf_dir: impl Into<PathBuf>) -> NetworkWatcher {
        NetworkWatcher::start_with_interval(conf_dir, Self::DEFAULT_INTERVAL)
    }

    pub fn start_with_interval(conf_dir: impl Into<PathBuf>, interval: Duration) -> NetworkWatcher {
        let conf_dir = conf_dir.into();
        let mut seen = fingerprint(&conf_dir);
        let (tx, rx) = watch::channel(load(&conf_dir));
        log_status(&rx.borrow());
        let dir = conf_dir.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let now = fingerprint(&dir);
                if now == seen {
                    continue;
                }
                seen = now;
                let status = load(&dir);
                tx.send_if_modified(|current| {
                    if *current == status {
                        return false;
                    }
                    log_status(&status);
                    *current = status;
                    true
                });
            }
        });
        NetworkWatcher {
            conf_dir,
            status: rx,
            task,
        }
    }

    /// The current network, or the message saying why there is none, e.g.
    /// "no network config found in /etc/cni/net.d".
    pub fn status(&self) -> NetworkStatus {
        self.status.borrow().clone()
    }

    /// A receiver that wakes on every change of [`status`](Self::status).
    pub fn subscribe(&self) -> watch::Receiver<NetworkStatus> {
        self.status.clone()
    }

    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }
}

impl Drop for NetworkWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn load(dir: &Path) -> NetworkStatus {
    load_network(dir).map(Arc::new).map_err(|e| e.to_string())
}

fn log_status(status: &NetworkStatus) {
    match status {
        Ok(net) => tracing::info!(
            network = %net.name,
            file = %net.source.display(),
            "CNI network config loaded"
        ),
        Err(message) => tracing::warn!("CNI network not ready: {message}"),
    }
}

fn fingerprint(dir: &Path) -> Fingerprint {
    match candidate_files(dir) {
        Ok(files) => Fingerprint::Files(
            files
                .into_iter()
                .map(|path| match std::fs::metadata(&path) {
                    Ok(m) => (path, m.len(), m.ino(), m.mtime(), m.mtime_nsec()),
                    Err(_) => (path, 0, 0, 0, 0),
                })
                .collect(),
        ),
        Err(e) => Fingerprint::Unreadable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"NAME","type":"bridge"}"#;

    /// Waits (up to 5 s) until the status satisfies `want`.
    async fn wait_for(
        watcher: &NetworkWatcher,
        want: impl Fn(&NetworkStatus) -> bool,
    ) -> NetworkStatus {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = watcher.status();
            if want(&status) || Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn watcher_follows_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let watcher = NetworkWatcher::start_with_interval(dir.path(), Duration::from_millis(50));
        assert_eq!(
            watcher.status().unwrap_err(),
            format!("no network config found in {}", dir.path().display())
        );

        std::fs::write(dir.path().join("10-a.conf"), CONF.replace("NAME", "first")).unwrap();
        let status = wait_for(&watcher, |s| s.is_ok()).await;
        assert_eq!(status.unwrap().name, "first");

        // An earlier file by name takes over; a broken one is skipped.
        std::fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        std::fs::write(dir.path().join("07-b.conf"), CONF.replace("NAME", "second")).unwrap();
        let status = wait_for(&watcher, |s| s.as_ref().is_ok_and(|n| n.name == "second")).await;
        assert_eq!(status.unwrap().name, "second");

        // Rewriting a file in place is seen.
        std::fs::write(
            dir.path().join("07-b.conf"),
            CONF.replace("NAME", "second-v2"),
        )
        .unwrap();
        let status = wait_for(&watcher, |s| {
            s.as_ref().is_ok_and(|n| n.name == "second-v2")
        })
        .await;
        assert_eq!(status.unwrap().name, "second-v2");

        for name in ["05-broken.conflist", "07-b.conf", "10-a.conf"] {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        let status = wait_for(&watcher, |s| s.is_err()).await;
        assert!(status
            .unwrap_err()
            .starts_with("no network config found in "));
    }

    #[tokio::test]
    async fn subscribers_are_woken_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let watcher = NetworkWatcher::start_with_interval(dir.path(), Duration::from_millis(50));
        let mut rx = watcher.subscribe();
        rx.borrow_and_update();
        std::fs::write(dir.path().join("10-a.conf"), CONF.replace("NAME", "net")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("no change seen")
            .unwrap();
        assert_eq!(rx.borrow().as_ref().unwrap().name, "net");
    }
}
