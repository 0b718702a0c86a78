//! Time as berth's records and the CRI carry it.

/// Now, in Unix nanoseconds: the CRI's timestamps (created_at, started_at, finished_at).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
