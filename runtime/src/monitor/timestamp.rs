//! CRI log timestamps: Go's `time.RFC3339Nano` in UTC, which kubelet parses back.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `t` in UTC as Go's `time.RFC3339Nano` does (`2006-01-02T15:04:05.999999999Z07:00`):
/// trailing zeros of the fraction trimmed, no fraction at all on a whole second, `Z` for UTC.
pub fn format_rfc3339_nano(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            // Before 1970: floor to the second below, so the fraction counts forward from it.
            let d = e.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs - 1, 1_000_000_000 - n),
            }
        }
    };
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let second_of_day = secs.rem_euclid(86_400);
    let mut s = String::with_capacity(30);
    // Go pads the year to four digits after the sign.
    if year < 0 {
        s.push('-');
    }
    let _ = write!(
        s,
        "{:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        year.unsigned_abs(),
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    );
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        s.push('.');
        s.push_str(fraction.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01, after Howard
/// Hinnant's `civil_from_days`: shift to years starting on March 1st so the leap day is last,
/// then split into 400-year eras of 146097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11]
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // [1, 31]
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    }; // [1, 12]
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn timestamps_format_like_go_rfc3339_nano() {
        let cases = [
            (at(0, 0), "1970-01-01T00:00:00Z"),
            (at(0, 1), "1970-01-01T00:00:00.000000001Z"),
            (at(1_000_000_000, 0), "2001-09-09T01:46:40Z"),
            (at(1_700_000_000, 500_000_000), "2023-11-14T22:13:20.5Z"),
            (
                at(1_700_000_000, 123_456_789),
                "2023-11-14T22:13:20.123456789Z",
            ),
            (at(1_700_000_000, 120_000_000), "2023-11-14T22:13:20.12Z"),
            (at(951_782_400, 0), "2000-02-29T00:00:00Z"),
            (at(1_709_164_800, 0), "2024-02-29T00:00:00Z"),
            (at(2_147_483_647, 0), "2038-01-19T03:14:07Z"),
            (at(2_147_483_648, 0), "2038-01-19T03:14:08Z"),
            (at(4_102_444_800, 0), "2100-01-01T00:00:00Z"),
            (at(4_107_542_400, 0), "2100-03-01T00:00:00Z"),
            (
                at(253_402_300_799, 999_999_999),
                "9999-12-31T23:59:59.999999999Z",
            ),
            (UNIX_EPOCH - Duration::from_secs(1), "1969-12-31T23:59:59Z"),
            (
                UNIX_EPOCH - Duration::from_millis(500),
                "1969-12-31T23:59:59.5Z",
            ),
            (
                UNIX_EPOCH - Duration::from_secs(62_135_596_800),
                "0001-01-01T00:00:00Z",
            ),
        ];
        for (t, expected) in cases {
            assert_eq!(format_rfc3339_nano(t), expected, "{t:?}");
        }
    }
}
