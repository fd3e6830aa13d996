//! Durations and sizes as a user writes them (`"2s"`, `"32MiB"`), and the TOML text
//! `check-config` prints for values: the inverse of the parsers here, so its output loads back.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Unexpected, Visitor};

const DURATION_EXPECTED: &str = r#"a duration like "2000ms", "2s", "5m", "1h" or "1d""#;
const SIZE_EXPECTED: &str = r#"a size in bytes like 1048576, "512KiB" or "32MiB""#;

/// A duration as written, `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`. Parsed
/// while figment extracts, so that a bare number (e.g. `DNS_PROXY_TIMEOUT=1500`) gets the same
/// clear reason as a malformed string. Bounds (more than zero, whole seconds) are the key's.
#[derive(Debug)]
pub(crate) struct RawDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<RawDuration, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = RawDuration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(DURATION_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<RawDuration, E> {
        parse_duration(text)
            .map(RawDuration)
            .ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))
    }
}

pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let factor = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    let millis = number.parse::<u64>().ok()?.checked_mul(factor)?;
    Some(Duration::from_millis(millis))
}

/// The largest unit that shows `duration` exactly, as a TOML string.
pub(crate) fn toml_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    match units
        .iter()
        .find(|(factor, _)| millis > 0 && millis.is_multiple_of(*factor))
    {
        Some((factor, unit)) => format!("\"{}{unit}\"", millis / factor),
        None => format!("\"{millis}ms\""),
    }
}

/// A size in bytes: an integer, or a string with a binary unit (`"512KiB"`, `"32MiB"`,
/// `"1GiB"`; `K`, `M`, `G` mean the same).
#[derive(Debug)]
pub(crate) struct RawSize(pub(crate) usize);

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<RawSize, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = RawSize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(SIZE_EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<RawSize, E> {
        usize::try_from(bytes)
            .map(RawSize)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(bytes), &self))
    }

    fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<RawSize, E> {
        u64::try_from(bytes)
            .map_err(|_| E::invalid_value(Unexpected::Signed(bytes), &self))
            .and_then(|bytes| self.visit_u64(bytes))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<RawSize, E> {
        parse_size(text)
            .map(RawSize)
            .ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))
    }
}

fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return None,
    };
    number.parse::<usize>().ok()?.checked_mul(1 << shift)
}

/// The largest binary unit that shows `bytes` exactly, as a TOML string.
pub(crate) fn toml_size(bytes: usize) -> String {
    let units = [(30, "GiB"), (20, "MiB"), (10, "KiB")];
    match units
        .iter()
        .find(|(shift, _)| bytes > 0 && bytes.is_multiple_of(1 << shift))
    {
        Some((shift, unit)) => format!("\"{}{unit}\"", bytes >> shift),
        None => bytes.to_string(),
    }
}

/// A TOML basic string.
pub(crate) fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings, one per item's text.
pub(crate) fn toml_list<T: ToString>(items: &[T]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|item| toml_string(&item.to_string()))
        .collect();
    format!("[{}]", items.join(", "))
}
