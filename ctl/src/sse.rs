//! A reader of `text/event-stream` (Server-Sent Events), by hand: the format is a few lines of
//! `field: value` per event, and the crates that parse it wrap another reqwest version than ours.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Takes the stream's bytes as they arrive, in chunks cut anywhere, and yields whole events.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of the line not yet ended; kept as bytes so a chunk cut inside a UTF-8 character
    /// is joined before it is decoded.
    partial: Vec<u8>,
    current: Frame,
    has_data: bool,
}

impl Parser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for &byte in chunk {
            if byte == b'\n' {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(frame) = self.line(&String::from_utf8_lossy(&line)) {
                    frames.push(frame);
                }
            } else {
                self.partial.push(byte);
            }
        }
        frames
    }

    fn line(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            // A blank line dispatches the event; one without data is none (the spec says so).
            let frame = std::mem::take(&mut self.current);
            let had_data = std::mem::take(&mut self.has_data);
            return had_data.then_some(frame);
        }
        if line.starts_with(':') {
            return None; // a comment: the server's keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => self.current.id = Some(value.to_owned()),
            "event" => value.clone_into(&mut self.current.event),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {} // `retry` and unknown fields: nothing to do here
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_cut_anywhere_are_joined_and_comments_skipped() {
        let text = ": keep-alive\n\nid: 7\nevent: transition\ndata: {\"a\":\r\ndata: \"é\"}\n\nid:8\ndata:x\n\n";
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let mut parser = Parser::default();
            let mut frames = parser.push(&bytes[..cut]);
            frames.extend(parser.push(&bytes[cut..]));
            assert_eq!(
                frames,
                [
                    Frame {
                        id: Some("7".into()),
                        event: "transition".into(),
                        data: "{\"a\":\n\"é\"}".into(),
                    },
                    Frame {
                        id: Some("8".into()),
                        event: String::new(),
                        data: "x".into(),
                    },
                ],
                "cut at {cut}"
            );
        }
    }
}
