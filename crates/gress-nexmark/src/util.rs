//! The SQL functions the queries use, on UTC time.

use chrono::{DateTime, Timelike};

/// `DATE_FORMAT(t, 'yyyy-MM-dd')`.
pub fn day(t: u64) -> String {
    fmt(t, "%Y-%m-%d")
}

/// `DATE_FORMAT(t, 'HH:mm')`.
pub fn hour_minute(t: u64) -> String {
    fmt(t, "%H:%M")
}

/// `HOUR(t)`.
pub fn hour(t: u64) -> u32 {
    i64::try_from(t)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map_or(0, |d| d.hour())
}

fn fmt(t: u64, f: &str) -> String {
    match i64::try_from(t)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
    {
        Some(d) => d.format(f).to_string(),
        None => String::new(),
    }
}

/// `REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2)`: the value of the
/// first `channel_id=` at the start of `url` or after a `&`.
pub fn channel_id(url: &str) -> Option<&str> {
    const NEEDLE: &str = "channel_id=";
    let mut from = 0;
    while let Some(at) = url[from..].find(NEEDLE) {
        let at = from + at;
        if at == 0 || url.as_bytes()[at - 1] == b'&' {
            let value = &url[at + NEEDLE.len()..];
            return Some(value.split('&').next().unwrap_or(""));
        }
        from = at + 1;
    }
    None
}

/// `SPLIT_INDEX(s, '/', i)`: the `i`th field (from 0) of `s` split at `/`.
pub fn split_index(s: &str, i: usize) -> Option<&str> {
    s.split('/').nth(i)
}

/// `count_char(s, c)`: how many times `c` occurs in `s`.
pub fn count_char(s: &str, c: char) -> u64 {
    s.chars().filter(|&x| x == c).count() as u64
}

/// A day's string, computed once per day rather than per record.
#[derive(Debug, Default, Clone)]
pub struct DayCache {
    last: Option<(u64, String)>,
}

impl DayCache {
    /// `day(t)`.
    pub fn day(&mut self, t: u64) -> String {
        let d = t / 86_400_000;
        match &self.last {
            Some((cached, s)) if *cached == d => s.clone(),
            _ => {
                let s = day(t);
                self.last = Some((d, s.clone()));
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_functions_read_as_flink_does() {
        assert_eq!(day(1_767_225_600_000), "2026-01-01");
        assert_eq!(hour_minute(1_767_225_600_000 + 3_660_000), "01:01");
        assert_eq!(hour(1_767_225_600_000 + 3 * 3_600_000), 3);
        assert_eq!(channel_id("https://x/a?channel_id=12&b=1"), None);
        assert_eq!(channel_id("a=1&channel_id=12&b=1"), Some("12"));
        assert_eq!(channel_id("channel_id=7"), Some("7"));
        assert_eq!(channel_id("xchannel_id=7&channel_id=8"), Some("8"));
        assert_eq!(
            split_index("https://www.nexmark.com/a/b/c/item.htm", 3),
            Some("a")
        );
        assert_eq!(split_index("a/b", 5), None);
        assert_eq!(count_char("abcabc", 'c'), 2);
    }
}
