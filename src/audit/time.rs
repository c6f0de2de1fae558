//! Time for the conversation log: the `Clock` every record and retention decision reads
//! (the system's, or a `ManualClock` that tests set), RFC 3339 formatting of record
//! times, and the dates operators type (`--since 2026-01-31`, `since=2026-01-31T08:00:00Z`,
//! or unix seconds), all in UTC.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Where the log reads the time.
pub trait Clock: Send + Sync {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that says what it is told (tests: records of several days, retention).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(now_ms)))
    }

    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A shared clock in a config (compared by identity).
#[derive(Clone)]
pub struct ClockRef(pub Arc<dyn Clock>);

impl ClockRef {
    pub fn system() -> Self {
        ClockRef(Arc::new(SystemClock))
    }

    pub fn now_ms(&self) -> i64 {
        self.0.now_ms()
    }
}

impl Default for ClockRef {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for ClockRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClockRef({} ms)", self.now_ms())
    }
}

impl PartialEq for ClockRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-01-31T08:05:09.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(DAY_MS), ms.rem_euclid(DAY_MS));
    let (y, m, d) = civil_from_days(days);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Unix milliseconds of `2026-01-31` (midnight UTC), `2026-01-31T08:05:09Z` (optional
/// fraction, `Z` or `+00:00`), or unix seconds; `None` for anything else.
pub fn parse_date(text: &str) -> Option<i64> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().ok()?.checked_mul(1000);
    }
    let (date, time) = match t.split_once(['T', 't', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (t, None),
    };
    let mut parts = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    let month_days = [
        31,
        28 + i64::from(leap(y)),
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || !(1..=month_days[(m - 1) as usize]).contains(&d) {
        return None;
    }
    let day_ms = days_from_civil(y, m, d).checked_mul(DAY_MS)?;
    match time {
        None => Some(day_ms),
        Some(time) => Some(day_ms + time_of_day_ms(time)?),
    }
}

fn leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// `08:05:09[.123](Z|+00:00)` in milliseconds.
fn time_of_day_ms(time: &str) -> Option<i64> {
    let time = time
        .strip_suffix(['Z', 'z'])
        .or_else(|| time.strip_suffix("+00:00"))?;
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (parts.next()??, parts.next()??, parts.next()??);
    if h > 23 || min > 59 || s > 60 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let milli = format!("{fraction:0<3}")[..3].parse::<i64>().ok()?;
    Some(((h * 60 + min) * 60 + s) * 1000 + milli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_and_parse_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        let t = parse_date("2026-02-28T23:59:58.5Z").expect("parses");
        assert_eq!(rfc3339(t), "2026-02-28T23:59:58.500Z");
        assert_eq!(parse_date("2026-03-01"), Some(t + 1500));
        assert_eq!(parse_date("2024-02-29"), Some(1_709_164_800_000));
        assert_eq!(parse_date("1709164800"), Some(1_709_164_800_000));
        assert_eq!(
            parse_date("2026-01-01T00:00:00+00:00"),
            parse_date("2026-01-01")
        );
        for bad in [
            "2026-02-29",
            "2026-13-01",
            "2026-1",
            "yesterday",
            "",
            "2026-01-01T25:00:00Z",
        ] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
        for ms in [-DAY_MS, 951_782_400_000, 4_102_444_800_123] {
            assert_eq!(parse_date(&rfc3339(ms)), Some(ms), "{ms}");
        }
    }

    #[test]
    fn manual_clocks_move_when_told() {
        let clock = ManualClock::new(5);
        clock.advance(DAY_MS);
        assert_eq!(clock.now_ms(), DAY_MS + 5);
        let r = ClockRef(clock.clone());
        assert_eq!(r, r.clone());
        assert_ne!(r, ClockRef::system());
    }
}
