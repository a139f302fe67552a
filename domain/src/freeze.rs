//! Change-freeze windows: when releases are refused. Pure arithmetic (no clock, no I/O):
//! a window is one-off (`from`..`to`, UTC instants) or recurring (weekdays and a local time
//! range in an IANA time zone). Local times are taken from the instant in the window's zone,
//! so a daylight-saving change moves the window with the wall clock: a range inside the
//! skipped hour of a spring-forward night is never active that night, one inside the
//! repeated hour of a fall-back night is active both times.
use chrono::{DateTime, Datelike, NaiveTime, Timelike, Utc, Weekday};
use chrono_tz::Tz;

/// A recurring window: on each of `days`, local time `from` until `to` in `tz`. When `to`
/// is not after `from` the window runs overnight into the next day (`fri 18:00 → 06:00`
/// covers Friday evening and Saturday morning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recurring {
    /// Weekdays the window starts on (`mon` … `sun`).
    pub days: Vec<Weekday>,
    /// `HH:MM` local.
    pub from: NaiveTime,
    /// `HH:MM` local.
    pub to: NaiveTime,
    /// An IANA zone, e.g. `Europe/Berlin`.
    pub tz: Tz,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FreezeError {
    #[error("a freeze window needs from and to, or a recurring rule (days, from, to, tz)")]
    Missing,
    #[error("a freeze window is one-off (from, to) or recurring, not both")]
    Both,
    #[error("a one-off freeze window must end after it starts")]
    Empty,
    #[error("a recurring freeze window needs at least one weekday")]
    NoDays,
    #[error("{0:?} is not an IANA time zone (e.g. Europe/Berlin, UTC)")]
    BadZone(String),
    #[error("{0:?} is not a weekday (mon, tue, wed, thu, fri, sat, sun)")]
    BadDay(String),
    #[error("{0:?} is not a local time HH:MM")]
    BadTime(String),
    #[error("a recurring freeze window's from and to must differ")]
    SameTimes,
}

/// When a window is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    Once { from: DateTime<Utc>, to: DateTime<Utc> },
    Recurring(Recurring),
}

impl Schedule {
    /// A one-off window; `to` must be after `from`.
    pub fn once(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Self, FreezeError> {
        if to <= from {
            return Err(FreezeError::Empty);
        }
        Ok(Schedule::Once { from, to })
    }

    /// A recurring window from its textual parts (`["sat","sun"]`, `"00:00"`, `"23:59"`,
    /// `"Europe/Berlin"`).
    pub fn recurring(days: &[String], from: &str, to: &str, tz: &str) -> Result<Self, FreezeError> {
        if days.is_empty() {
            return Err(FreezeError::NoDays);
        }
        let mut parsed = Vec::new();
        for d in days {
            let w = parse_day(d)?;
            if !parsed.contains(&w) {
                parsed.push(w);
            }
        }
        let from = parse_time(from)?;
        let to = parse_time(to)?;
        if from == to {
            return Err(FreezeError::SameTimes);
        }
        let tz: Tz = tz.parse().map_err(|_| FreezeError::BadZone(tz.to_owned()))?;
        Ok(Schedule::Recurring(Recurring { days: parsed, from, to, tz }))
    }

    /// Is the window active at `now`?
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        match self {
            Schedule::Once { from, to } => *from <= now && now < *to,
            Schedule::Recurring(r) => r.active_at(now),
        }
    }

    /// A one-line description (`"sat, sun 00:00-23:59 Europe/Berlin"` or the UTC range).
    pub fn describe(&self) -> String {
        match self {
            Schedule::Once { from, to } => format!("{} to {}", from.to_rfc3339(), to.to_rfc3339()),
            Schedule::Recurring(r) => {
                let days: Vec<String> = r.days.iter().map(|d| day_name(*d).to_owned()).collect();
                format!("{} {}-{} {}", days.join(", "), r.from.format("%H:%M"), r.to.format("%H:%M"), r.tz.name())
            }
        }
    }
}

impl Recurring {
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.tz);
        let t = local.time().with_nanosecond(0).unwrap_or(local.time());
        let day = local.weekday();
        if self.from < self.to {
            self.days.contains(&day) && self.from <= t && t < self.to
        } else {
            // Overnight: the evening part on a listed day, the morning part the day after.
            (self.days.contains(&day) && t >= self.from) || (self.days.contains(&day.pred()) && t < self.to)
        }
    }
}

pub fn parse_day(s: &str) -> Result<Weekday, FreezeError> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Mon,
        "tue" | "tuesday" => Weekday::Tue,
        "wed" | "wednesday" => Weekday::Wed,
        "thu" | "thursday" => Weekday::Thu,
        "fri" | "friday" => Weekday::Fri,
        "sat" | "saturday" => Weekday::Sat,
        "sun" | "sunday" => Weekday::Sun,
        _ => return Err(FreezeError::BadDay(s.to_owned())),
    })
}

pub fn day_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Mon => "mon",
        Weekday::Tue => "tue",
        Weekday::Wed => "wed",
        Weekday::Thu => "thu",
        Weekday::Fri => "fri",
        Weekday::Sat => "sat",
        Weekday::Sun => "sun",
    }
}

fn parse_time(s: &str) -> Result<NaiveTime, FreezeError> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M").map_err(|_| FreezeError::BadTime(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn weekly(days: &[&str], from: &str, to: &str, tz: &str) -> Schedule {
        Schedule::recurring(&days.iter().map(|d| d.to_string()).collect::<Vec<_>>(), from, to, tz).unwrap()
    }

    #[test]
    fn once_is_half_open() {
        let w = Schedule::once(utc("2026-12-20T00:00:00Z"), utc("2026-12-27T00:00:00Z")).unwrap();
        assert!(!w.active_at(utc("2026-12-19T23:59:59Z")));
        assert!(w.active_at(utc("2026-12-20T00:00:00Z")));
        assert!(w.active_at(utc("2026-12-26T23:59:59Z")));
        assert!(!w.active_at(utc("2026-12-27T00:00:00Z")));
        assert_eq!(Schedule::once(utc("2026-12-20T00:00:00Z"), utc("2026-12-20T00:00:00Z")), Err(FreezeError::Empty));
    }

    #[test]
    fn weekly_in_a_zone() {
        // Fridays 16:00-23:00 in New York (UTC-5 in December).
        let w = weekly(&["fri"], "16:00", "23:00", "America/New_York");
        assert!(!w.active_at(utc("2026-12-11T20:59:00Z")));
        assert!(w.active_at(utc("2026-12-11T21:00:00Z")));
        assert!(w.active_at(utc("2026-12-12T03:59:00Z")), "Friday 22:59 local is Saturday in UTC");
        assert!(!w.active_at(utc("2026-12-12T04:00:00Z")));
        assert!(!w.active_at(utc("2026-12-10T21:00:00Z")), "a Thursday");
    }

    #[test]
    fn overnight_runs_into_the_next_day() {
        let w = weekly(&["fri"], "18:00", "06:00", "UTC");
        assert!(w.active_at(utc("2026-12-11T18:00:00Z")));
        assert!(w.active_at(utc("2026-12-12T05:59:00Z")), "Saturday morning");
        assert!(!w.active_at(utc("2026-12-12T06:00:00Z")));
        assert!(!w.active_at(utc("2026-12-11T05:00:00Z")), "Friday morning belongs to Thursday's window");
    }

    #[test]
    fn spring_forward_skips_a_window_inside_the_missing_hour() {
        // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
        let w = weekly(&["sun"], "02:15", "02:45", "Europe/Berlin");
        let mut t = utc("2026-03-28T23:00:00Z");
        while t < utc("2026-03-29T04:00:00Z") {
            assert!(!w.active_at(t), "{t}: the local times 02:15-02:45 do not exist that night");
            t += chrono::Duration::minutes(1);
        }
        // A week later the wall clock has them again (CEST, UTC+2).
        assert!(w.active_at(utc("2026-04-05T00:20:00Z")));
        // A window around the gap follows the wall clock: 01:30-03:30 local is one hour long.
        let around = weekly(&["sun"], "01:30", "03:30", "Europe/Berlin");
        assert!(around.active_at(utc("2026-03-29T00:30:00Z")), "01:30 CET");
        assert!(around.active_at(utc("2026-03-29T01:29:00Z")), "03:29 CEST");
        assert!(!around.active_at(utc("2026-03-29T01:30:00Z")), "03:30 CEST");
    }

    #[test]
    fn fall_back_repeats_a_window_inside_the_doubled_hour() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00-03:00 happens twice.
        let w = weekly(&["sun"], "02:15", "02:45", "Europe/Berlin");
        assert!(w.active_at(utc("2026-10-25T00:20:00Z")), "02:20 CEST");
        assert!(!w.active_at(utc("2026-10-25T00:50:00Z")), "02:50 CEST");
        assert!(w.active_at(utc("2026-10-25T01:20:00Z")), "02:20 CET, the second time");
        assert!(!w.active_at(utc("2026-10-25T01:45:00Z")), "02:45 CET");
    }

    #[test]
    fn local_midnight_in_a_zone_is_not_utc_midnight() {
        let w = weekly(&["sat", "sun"], "00:00", "23:59", "Asia/Tokyo");
        let fri_evening_utc = Utc.with_ymd_and_hms(2026, 12, 11, 15, 30, 0).unwrap(); // Sat 00:30 JST
        assert!(w.active_at(fri_evening_utc));
        assert!(!w.active_at(Utc.with_ymd_and_hms(2026, 12, 13, 15, 30, 0).unwrap()), "Monday 00:30 JST");
    }

    #[test]
    fn bad_rules_are_named() {
        let days = vec!["sat".to_string()];
        assert_eq!(Schedule::recurring(&[], "00:00", "01:00", "UTC"), Err(FreezeError::NoDays));
        assert_eq!(Schedule::recurring(&days, "25:00", "01:00", "UTC"), Err(FreezeError::BadTime("25:00".into())));
        assert_eq!(Schedule::recurring(&days, "01:00", "01:00", "UTC"), Err(FreezeError::SameTimes));
        assert_eq!(
            Schedule::recurring(&days, "00:00", "01:00", "Mars/Olympus"),
            Err(FreezeError::BadZone("Mars/Olympus".into()))
        );
        assert_eq!(
            Schedule::recurring(&["caturday".into()], "00:00", "01:00", "UTC"),
            Err(FreezeError::BadDay("caturday".into()))
        );
        assert_eq!(
            weekly(&["sat", "sun"], "00:00", "06:00", "Europe/Berlin").describe(),
            "sat, sun 00:00-06:00 Europe/Berlin"
        );
    }
}
