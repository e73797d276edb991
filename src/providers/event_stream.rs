//! Server-sent events as OpenAI-compatible APIs stream them: lines of
//! `data: <json>`, an empty line ending each event, `data: [DONE]` at the end.
//! Bytes arrive cut anywhere, so the decoder keeps the unfinished line.

/// Splits a byte stream into the `data` of each event, as the bytes arrive.
#[derive(Debug, Default)]
pub(super) struct EventDecoder {
    line: Vec<u8>,
    data: String,
    has_data: bool,
}

impl EventDecoder {
    /// Feeds the next bytes; pushes the data of every event they complete onto `out`.
    pub(super) fn feed(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(end);
            rest = &tail[1..];
            if self.line.is_empty() {
                self.take_line(head, out);
            } else {
                self.line.extend_from_slice(head);
                let line = std::mem::take(&mut self.line);
                self.take_line(&line, out);
            }
        }
        self.line.extend_from_slice(rest);
    }

    /// The data of an event the stream ended without its closing empty line.
    pub(super) fn finish(&mut self, out: &mut Vec<String>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.take_line(&line, out);
        }
        self.dispatch(out);
    }

    fn take_line(&mut self, line: &[u8], out: &mut Vec<String>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        // Comments (`: keep-alive`) and fields other than data are not ours to read.
        let Some(value) = line.strip_prefix(b"data:") else {
            return;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if self.has_data {
            self.data.push('\n');
        }
        self.data.push_str(&String::from_utf8_lossy(value));
        self.has_data = true;
    }

    fn dispatch(&mut self, out: &mut Vec<String>) {
        if self.has_data {
            out.push(std::mem::take(&mut self.data));
            self.has_data = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(parts: &[&[u8]]) -> Vec<String> {
        let mut decoder = EventDecoder::default();
        let mut out = Vec::new();
        for part in parts {
            decoder.feed(part, &mut out);
        }
        decoder.finish(&mut out);
        out
    }

    #[test]
    fn events_cut_anywhere_are_reassembled() {
        let whole =
            b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata: [DONE]\n\n";
        let expected = vec!["{\"a\":1}", "{\"b\":\n2}", "[DONE]"];
        assert_eq!(decode(&[whole]), expected);
        for cut in 1..whole.len() {
            let (a, b) = whole.split_at(cut);
            assert_eq!(decode(&[a, b]), expected, "cut at {cut}");
        }
    }

    #[test]
    fn a_last_event_without_its_empty_line_still_counts() {
        assert_eq!(decode(&[b"data:x"]), vec!["x"]);
        assert!(decode(&[b"event: ping\n\n"]).is_empty());
    }
}
