//! Named crash points, for the tests that prove a crash at any step is repaired at the next
//! start. With `BERTH_CRASH_AT=<name>` in its environment, the process SIGKILLs itself when it
//! reaches the point of that name: exactly what a `kill -9` at that moment leaves behind, made
//! to happen on cue. With `BERTH_HOLD_AT` ([`HOLD_ENV`]) it waits there instead. Without either
//! variable a point costs two comparisons.

use std::sync::OnceLock;

/// The environment variable naming the point to crash at.
pub const ENV: &str = "BERTH_CRASH_AT";

/// The environment variable naming a point to hold at, and the gate file that ends the hold:
/// `BERTH_HOLD_AT=<name>:<gate>`. Reaching the point, the process makes `<gate>.reached`, which
/// holds its pid, and waits until `<gate>` exists: a step paused on cue, for a test to act while
/// it is half-done.
pub const HOLD_ENV: &str = "BERTH_HOLD_AT";

/// Crashes here if `BERTH_CRASH_AT` names this point; holds here if `BERTH_HOLD_AT` does.
pub fn point(name: &str) {
    static HOLD: OnceLock<Option<(String, std::path::PathBuf)>> = OnceLock::new();
    let hold = HOLD.get_or_init(|| {
        let value = std::env::var(HOLD_ENV).ok()?;
        let (at, gate) = value.split_once(':')?;
        Some((at.to_string(), gate.into()))
    });
    if let Some((_, gate)) = hold.as_ref().filter(|(at, _)| at == name) {
        let mut reached = gate.clone().into_os_string();
        reached.push(".reached");
        let _ = std::fs::write(reached, std::process::id().to_string());
        while !gate.exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
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
