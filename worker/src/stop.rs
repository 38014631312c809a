//! Stop strings over streamed text: what may be sent now, what must wait because it may be
//! the start of a stop string, and where the text ends once one occurs.

/// The text streamed so far, against the request's stop strings. Text that may still grow
/// into a stop string is held back, so nothing sent is ever taken back.
pub struct StopStrings<'a> {
    stops: &'a [String],
    /// Text received and not yet sent: the longest end of it that begins a stop string.
    pending: String,
}

/// What one piece of text gives.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// The text that may be sent now.
    pub text: String,
    /// A stop string occurred: `text` ends just before it, and generation ends.
    pub stopped: bool,
}

impl<'a> StopStrings<'a> {
    pub fn new(stops: &'a [String]) -> Self {
        Self {
            stops,
            pending: String::new(),
        }
    }

    /// Adds `piece`; with `last`, nothing is held back.
    pub fn push(&mut self, piece: &str, last: bool) -> Released {
        self.pending.push_str(piece);
        // Every stop string begins within `pending`: text that might begin one is never sent.
        let first = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min();
        if let Some(at) = first {
            self.pending.truncate(at);
            return Released {
                text: std::mem::take(&mut self.pending),
                stopped: true,
            };
        }
        let keep = if last { 0 } else { self.prefix_len() };
        let text = self.pending[..self.pending.len() - keep].to_string();
        self.pending.drain(..self.pending.len() - keep);
        Released {
            text,
            stopped: false,
        }
    }

    /// The length of the longest end of `pending` that is the start of a stop string.
    fn prefix_len(&self) -> usize {
        let pending = self.pending.as_str();
        pending
            .char_indices()
            .map(|(at, _)| &pending[at..])
            .find(|end| self.stops.iter().any(|stop| stop.starts_with(end)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces sent for `pieces` (the last one marked last), and whether a stop occurred.
    fn stream(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut matcher = StopStrings::new(&stops);
        let mut sent = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let released = matcher.push(piece, i + 1 == pieces.len());
            sent.push(released.text);
            if released.stopped {
                return (sent, true);
            }
        }
        (sent, false)
    }

    #[test]
    fn a_stop_string_over_several_pieces_is_held_back_and_never_sent() {
        let (sent, stopped) = stream(&["END"], &["one E", "N", "D two"]);
        assert_eq!(sent, ["one ", "", ""]);
        assert!(stopped);
    }

    #[test]
    fn held_back_text_that_does_not_become_a_stop_string_is_sent_later() {
        let (sent, stopped) = stream(&["END"], &["one E", "Nx", " two"]);
        assert_eq!(sent, ["one ", "ENx", " two"]);
        assert!(!stopped);
    }

    #[test]
    fn the_last_piece_releases_what_was_held_back() {
        let (sent, stopped) = stream(&["END"], &["one E", "N"]);
        assert_eq!(sent, ["one ", "EN"]);
        assert!(!stopped);
    }

    #[test]
    fn a_multi_byte_stop_string_is_matched_at_character_boundaries() {
        let (sent, stopped) = stream(&["→é"], &["a →", "é b"]);
        assert_eq!(sent, ["a ", ""]);
        assert!(stopped);
        let (sent, stopped) = stream(&["é"], &["caf", "e é"]);
        assert_eq!(sent, ["caf", "e "]);
        assert!(stopped);
    }

    #[test]
    fn the_earliest_of_several_stop_strings_ends_the_text() {
        let (sent, stopped) = stream(&["two", "on"], &["zero one two"]);
        assert_eq!(sent, ["zero "]);
        assert!(stopped);
    }

    #[test]
    fn a_stop_string_that_never_occurs_holds_back_nothing_unrelated() {
        let (sent, stopped) = stream(&["###"], &["a", "b", "c"]);
        assert_eq!(sent, ["a", "b", "c"]);
        assert!(!stopped);
    }

    #[test]
    fn without_stop_strings_every_piece_passes_as_is() {
        let (sent, stopped) = stream(&[], &["a", "", "b"]);
        assert_eq!(sent, ["a", "", "b"]);
        assert!(!stopped);
    }
}
