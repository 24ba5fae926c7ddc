//! How answers are shown: tables as kubectl prints them (no borders, columns three spaces apart,
//! no trailing spaces), times and ages, and `-o json|yaml` as the API returned them.

use std::io::Write;

use comfy_table::{Cell, Table, presets};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::client::CtlError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table of the main columns.
    Table,
    /// A table with more columns.
    Wide,
    /// Exactly what the API returned.
    Json,
    /// What the API returned, as YAML.
    Yaml,
}

impl Format {
    pub fn is_raw(self) -> bool {
        matches!(self, Format::Json | Format::Yaml)
    }
}

/// Prints an answer's exact text (`json`) or the same document as YAML, keys in the API's order.
/// A list answer's `items` for a table, or `None` when it was written out already: as it came
/// (JSON or YAML), or as "No <what> found." on stderr when it is empty.
pub fn items(
    io: &mut crate::Io<'_>,
    format: Format,
    answer: &crate::client::Answer,
    what: &str,
) -> Result<Option<Vec<Value>>, CtlError> {
    if format.is_raw() {
        raw(io.out, format, &answer.text)?;
        return Ok(None);
    }
    let items = answer.value["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if items.is_empty() {
        writeln!(io.err, "No {what} found.")?;
        return Ok(None);
    }
    Ok(Some(items))
}

pub fn raw(out: &mut dyn Write, format: Format, text: &str) -> Result<(), CtlError> {
    match format {
        Format::Yaml => {
            // serde_yaml_ng's mapping keeps insertion order, so the keys stay as the API sent them.
            let value: serde_yaml_ng::Value = serde_json::from_str(text)
                .map_err(|e| CtlError::Protocol(format!("not JSON: {e}")))?;
            let yaml = serde_yaml_ng::to_string(&value)
                .map_err(|e| CtlError::Protocol(format!("cannot render YAML: {e}")))?;
            write!(out, "{yaml}")?;
        }
        _ => writeln!(out, "{}", text.trim_end())?,
    }
    Ok(())
}

/// A borderless table: header in capitals, columns three spaces apart, lines trimmed.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(header.iter().map(Cell::new).collect::<Vec<_>>());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    let mut text = table.trim_fmt();
    text.push('\n');
    text
}

/// A string field, or `fallback` when absent, null or empty.
pub fn text<'a>(value: &'a Value, fallback: &'a str) -> &'a str {
    value.as_str().filter(|s| !s.is_empty()).unwrap_or(fallback)
}

/// An integer field as text, or `fallback`.
pub fn number(value: &Value, fallback: &str) -> String {
    value
        .as_i64()
        .map_or_else(|| fallback.to_owned(), |n| n.to_string())
}

pub fn parse_time(value: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value.as_str()?, &Rfc3339).ok()
}

/// An RFC 3339 time to the second (the API gives nanoseconds; people read seconds).
pub fn timestamp(value: &Value) -> String {
    match parse_time(value) {
        Some(at) => {
            let at = at.replace_nanosecond(0).unwrap_or(at);
            at.format(&Rfc3339).unwrap_or_default()
        }
        None => "-".to_owned(),
    }
}

/// How long ago, in one unit as kubectl does: `42s`, `5m`, `3h`, `12d`.
pub fn age(value: &Value, now: OffsetDateTime) -> String {
    let Some(at) = parse_time(value) else {
        return "-".to_owned();
    };
    let seconds = (now - at).whole_seconds().max(0);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7_200 => format!("{}m", seconds / 60),
        7_200..172_800 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// Labels as `k=v,k2=v2`, or `<none>`.
pub fn labels(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".to_owned(),
    }
}

/// The outcomes a rollout can report, in the order they are shown.
pub const OUTCOMES: [&str; 11] = [
    "pending",
    "configuring",
    "upgrading",
    "waiting",
    "applied",
    "failed",
    "incompatible",
    "skipped",
    "unsupported",
    "replaced",
    "removed",
];

/// A rollout's non-zero outcome counts: `applied 4, failed 2, pending 2`.
pub fn progress(rollout: &Value) -> String {
    let counts: Vec<String> = OUTCOMES
        .iter()
        .filter_map(|o| {
            let n = rollout["progress"][*o].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{o} {n}"))
        })
        .collect();
    if counts.is_empty() {
        "no collectors".to_owned()
    } else {
        counts.join(", ")
    }
}

/// What a rollout carries, in a few words: `configuration gateway v2` or `package otelcol 0.2.0`.
pub fn payload(rollout: &Value) -> String {
    match rollout["kind"].as_str() {
        Some("package") => format!(
            "package {} {}",
            text(&rollout["package"]["name"], "?"),
            text(&rollout["package"]["version"], "?")
        ),
        _ => format!(
            "configuration {} v{}",
            text(&rollout["configuration"], "?"),
            number(&rollout["version"], "?")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_are_aligned_without_borders_or_trailing_spaces() {
        let text = table(
            &["ID", "STATE"],
            vec![
                vec!["a".into(), "connected".into()],
                vec!["longer-id".into(), "error".into()],
            ],
        );
        assert_eq!(
            text,
            "ID          STATE\na           connected\nlonger-id   error\n"
        );
    }

    #[test]
    fn ages_use_one_unit() {
        let now = OffsetDateTime::parse("2026-01-03T00:00:00Z", &Rfc3339)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let at = |t: &str| age(&json!(t), now);
        assert_eq!(at("2026-01-02T23:59:18.5Z"), "41s");
        assert_eq!(at("2026-01-02T23:55:00Z"), "5m");
        assert_eq!(at("2026-01-02T21:00:00Z"), "3h");
        assert_eq!(at("2025-12-20T00:00:00Z"), "14d");
        assert_eq!(age(&Value::Null, now), "-");
        assert_eq!(
            timestamp(&json!("2026-01-02T23:59:18.123456789Z")),
            "2026-01-02T23:59:18Z"
        );
    }

    #[test]
    fn yaml_keeps_the_apis_key_order() {
        let mut out = Vec::new();
        raw(
            &mut out,
            Format::Yaml,
            r#"{"z": 1, "a": {"y": [true], "b": null}}"#,
        )
        .unwrap_or(());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "z: 1\na:\n  y:\n  - true\n  b: null\n"
        );
    }
}
