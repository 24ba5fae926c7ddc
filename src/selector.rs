//! Label selectors (`env=prod,region!=eu,tier in (a,b),gpu,!legacy`): parsed once, then matched
//! against a collector's labels in memory or turned into SQL by the store.

use std::collections::BTreeMap;
use std::fmt;

/// One comma-separated part of a selector.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Requirement {
    Equals(String, String),
    /// Also true when the label is absent, as in Kubernetes.
    NotEquals(String, String),
    In(String, Vec<String>),
    /// Also true when the label is absent.
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selector(pub Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector at {position}: {reason}")]
pub struct SelectorError {
    /// Byte offset into the selector text.
    pub position: usize,
    pub reason: String,
}

/// Label keys and values: letters, digits and `._-/`, at most 253 characters. Narrow on purpose:
/// such text is safe in any database's JSON path and in a URL.
pub fn valid_label_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

/// Splits on commas outside parentheses, keeping each part's offset.
fn parts(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push((start, &text[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push((start, &text[start..]));
    out
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        parts(text)
            .into_iter()
            .map(|(offset, part)| {
                requirement(part).map_err(|(at, reason)| SelectorError {
                    position: offset + at,
                    reason,
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

type PartError = (usize, String);

/// `text`, trimmed, if it is a valid label key or value (`what` says which, for the error).
fn label(text: &str, at: usize, what: &str) -> Result<String, PartError> {
    let trimmed = text.trim();
    if valid_label_text(trimmed) {
        Ok(trimmed.to_owned())
    } else {
        Err((
            at,
            format!("{trimmed:?} is not a label {what} (letters, digits, ._-/)"),
        ))
    }
}

fn key(text: &str, at: usize) -> Result<String, PartError> {
    label(text, at, "key")
}

fn value(text: &str, at: usize) -> Result<String, PartError> {
    label(text, at, "value")
}

fn requirement(part: &str) -> Result<Requirement, PartError> {
    let lead = part.len() - part.trim_start().len();
    let body = part.trim();
    if body.is_empty() {
        return Err((lead, "empty requirement".into()));
    }
    if let Some((k, v)) = body.split_once("!=") {
        return Ok(Requirement::NotEquals(
            key(k, lead)?,
            value(v, lead + k.len() + 2)?,
        ));
    }
    if let Some((k, v)) = body.split_once("==").or_else(|| body.split_once('=')) {
        let skip = if body.contains("==") { 2 } else { 1 };
        return Ok(Requirement::Equals(
            key(k, lead)?,
            value(v, lead + k.len() + skip)?,
        ));
    }
    for (word, negated) in [(" notin ", true), (" in ", false)] {
        if let Some(at) = body.find(word) {
            let k = key(&body[..at], lead)?;
            let rest = body[at + word.len()..].trim();
            let list_at = lead + at + word.len();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| (list_at, "expected a list in parentheses".to_owned()))?;
            let values = inner
                .split(',')
                .map(|v| value(v, list_at))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if negated {
                Requirement::NotIn(k, values)
            } else {
                Requirement::In(k, values)
            });
        }
    }
    if let Some(k) = body.strip_prefix('!') {
        return Ok(Requirement::Absent(key(k, lead + 1)?));
    }
    Ok(Requirement::Exists(key(body, lead)?))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::Absent(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_form_parses_and_matches() {
        let s = Selector::parse(
            "env=prod, region!=eu,tier in (gold, silver),gpu,!legacy,zone notin (a)",
        )
        .unwrap();
        assert_eq!(s.0.len(), 6);
        let good = labels(&[
            ("env", "prod"),
            ("tier", "gold"),
            ("gpu", "yes"),
            ("zone", "b"),
        ]);
        assert!(s.matches(&good));
        let mut eu = good.clone();
        eu.insert("region".into(), "eu".into());
        assert!(!s.matches(&eu));
        let mut legacy = good.clone();
        legacy.insert("legacy".into(), "1".into());
        assert!(!s.matches(&legacy));
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
        assert!(Selector::parse("").unwrap().matches(&BTreeMap::new()));
    }

    #[test]
    fn bad_selectors_name_the_position() {
        for (text, position) in [
            ("env=", 4),
            ("env=prod,,x", 9),
            ("a in b", 5),
            ("k\"=v", 0),
            ("x=y,=z", 4),
        ] {
            let err = Selector::parse(text).unwrap_err();
            assert_eq!(err.position, position, "{text}: {err}");
        }
    }
}
