//! Named crash points, for the tests that prove a crash at any step is repaired at the next
//! start. With `BERTH_CRASH_AT=<name>` in its environment, the process SIGKILLs itself when it
//! reaches the point of that name: exactly what a `kill -9` at that moment leaves behind, made
//! to happen on cue. Without the variable a point costs one comparison.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const ENV: &str = "BERTH_CRASH_AT";

/// Crashes here if `BERTH_CRASH_AT` names this point.
pub fn point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        eprintln!("berthd: crash point {name:?} reached: SIGKILL");
        // SAFETY: kill(2) on our own pid with a signal that cannot be caught; no memory is
        // touched.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
