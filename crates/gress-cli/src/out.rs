//! Output: tables or JSON, byte strings shown safely, progress bars.

use std::time::Duration;

use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Prints a line on standard output; if the reader went away (`| head`),
/// stops the process quietly instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::out::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// [`say!`] without the newline.
macro_rules! say_raw {
    ($($arg:tt)*) => {
        $crate::out::write_stdout(format_args!($($arg)*))
    };
}

pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if out.write_fmt(args).is_err() {
        std::process::exit(i32::from(crate::exit::FAILED));
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    pub(crate) json: bool,
}

impl Out {
    /// Prints `doc` as JSON when `--json`, else `human()`.
    pub(crate) fn emit(&self, doc: &Value, human: impl FnOnce()) {
        if self.json {
            say!(
                "{}",
                serde_json::to_string_pretty(doc).unwrap_or_else(|_| doc.to_string())
            );
        } else {
            human();
        }
    }

    /// A progress bar of `len` steps on standard error (hidden when that
    /// is not a terminal, and with `--json`).
    pub(crate) fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let bar = if self.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(len)
        };
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len} ({elapsed})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        bar
    }

    /// A spinner for work of unknown length.
    pub(crate) fn spinner(&self, what: &str) -> ProgressBar {
        let bar = if self.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}

/// How byte strings are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Encoding {
    /// Printable ASCII as is, other bytes as `\xNN`.
    Escape,
    /// Base64 (standard alphabet).
    Base64,
    /// Lowercase hex.
    Hex,
}

impl Encoding {
    pub(crate) fn show(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Escape => escape(bytes),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
            Encoding::Hex => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Reads a key given on the command line in this encoding.
    pub(crate) fn parse(self, text: &str) -> anyhow::Result<Vec<u8>> {
        match self {
            Encoding::Escape => unescape(text),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| anyhow::anyhow!("`{text}` is not base64: {e}")),
            Encoding::Hex => {
                if !text.len().is_multiple_of(2) {
                    anyhow::bail!("`{text}` is not hex: odd length");
                }
                (0..text.len())
                    .step_by(2)
                    .map(|i| {
                        text.get(i..i + 2)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .ok_or_else(|| anyhow::anyhow!("`{text}` is not hex"))
                    })
                    .collect()
            }
        }
    }
}

/// Printable ASCII as is (backslash doubled), other bytes as `\xNN`.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// The inverse of [`escape`].
pub(crate) fn unescape(text: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(b'x') => {
                let hex = text
                    .get(i + 2..i + 4)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| anyhow::anyhow!("bad escape at byte {i} of `{text}`"))?;
                out.push(hex);
                i += 4;
            }
            _ => anyhow::bail!("bad escape at byte {i} of `{text}` (use \\\\ or \\xNN)"),
        }
    }
    Ok(out)
}

/// Bytes as `12.3 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// ms since the UNIX epoch as `2026-11-27T06:00:00.000Z`.
pub(crate) fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Now, in ms since the UNIX epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_every_byte() -> anyhow::Result<()> {
        let all: Vec<u8> = (0..=255).collect();
        for enc in [Encoding::Escape, Encoding::Base64, Encoding::Hex] {
            assert_eq!(enc.parse(&enc.show(&all))?, all, "{enc:?}");
        }
        assert!(unescape("\\q").is_err());
        assert!(Encoding::Hex.parse("abc").is_err());
        Ok(())
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_795_740_173_123), "2026-11-27T00:42:53.123Z");
    }
}
