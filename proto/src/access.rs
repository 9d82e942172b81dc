//! Who may publish or play what: stream patterns (`live/cam-*`) and the [`Rights`] an edge
//! identity holds. Pure data; the gateway decides which identity a connection is.

use crate::session::Direction;

/// Longest pattern or `app/stream` path judged; longer paths are never allowed (a peer's
/// stream name costs at most this much matching work).
pub const MAX_PATH_LEN: usize = 1024;

/// Why a pattern was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// Empty, or an empty segment (`live//x`, `/live`).
    #[error("stream pattern {0:?} has an empty segment")]
    EmptySegment(String),
    /// Longer than [`MAX_PATH_LEN`].
    #[error("stream pattern is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
}

/// An `app/stream` pattern: segments separated by `/`, where `*` matches any run of characters
/// within one segment (`live/cam-*` matches `live/cam-7`, not `live/cam-7/x` or `live2/cam-7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPattern {
    text: String,
}

impl StreamPattern {
    /// Parses a pattern as written in the config.
    pub fn parse(text: &str) -> Result<StreamPattern, PatternError> {
        if text.len() > MAX_PATH_LEN {
            return Err(PatternError::TooLong);
        }
        if text.split('/').any(str::is_empty) {
            return Err(PatternError::EmptySegment(text.to_owned()));
        }
        Ok(StreamPattern {
            text: text.to_owned(),
        })
    }

    /// Whether `path` (`app/stream`) matches: as many segments, each matching its own.
    pub fn matches(&self, path: &str) -> bool {
        if path.len() > MAX_PATH_LEN {
            return false;
        }
        let mut pattern = self.text.split('/');
        let mut path = path.split('/');
        loop {
            match (pattern.next(), path.next()) {
                (None, None) => return true,
                (Some(p), Some(s)) if segment_matches(p.as_bytes(), s.as_bytes()) => {}
                _ => return false,
            }
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Glob match of one segment where `*` matches any run of bytes: iterative, remembering only
/// the last `*` (no recursion; work at most pattern length × segment length).
fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more byte and try again from there.
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// What one edge identity may do: the streams it may publish and those it may play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    /// Who holds these rights (an `[[edge]]` name), for logs and metrics.
    pub identity: String,
    /// `None`: any stream (a gateway without `[[edge]]` tables).
    publish: Option<Vec<StreamPattern>>,
    play: Option<Vec<StreamPattern>>,
}

impl Rights {
    /// Anything, for `identity` (a gateway with no ACLs).
    pub fn everything(identity: impl Into<String>) -> Rights {
        Rights {
            identity: identity.into(),
            publish: None,
            play: None,
        }
    }

    /// Nothing, for `identity` (one no longer listed after a reload).
    pub fn nothing(identity: impl Into<String>) -> Rights {
        Rights::listed(identity, Vec::new(), Vec::new())
    }

    /// Exactly the streams the patterns match.
    pub fn listed(
        identity: impl Into<String>,
        publish: Vec<StreamPattern>,
        play: Vec<StreamPattern>,
    ) -> Rights {
        Rights {
            identity: identity.into(),
            publish: Some(publish),
            play: Some(play),
        }
    }

    /// Whether these rights allow less than everything (then every command that could reach
    /// the origin is judged as the origin reads it: [`crate::origin_command`]).
    pub fn restricts(&self) -> bool {
        self.publish.is_some() || self.play.is_some()
    }

    /// Whether `direction` on `app`/`stream` is allowed.
    pub fn allows(&self, direction: Direction, app: &str, stream: &str) -> bool {
        let patterns = match direction {
            Direction::Publish => &self.publish,
            Direction::Play => &self.play,
        };
        let Some(patterns) = patterns else {
            return true;
        };
        let path = format!("{app}/{stream}");
        patterns.iter().any(|p| p.matches(&path))
    }

    /// Why `direction` on `app`/`stream` is refused, or `None` when it is allowed.
    pub fn refusal(&self, direction: Direction, app: &str, stream: &str) -> Option<String> {
        if self.allows(direction, app, stream) {
            return None;
        }
        let verb = match direction {
            Direction::Publish => "publish",
            Direction::Play => "play",
        };
        Some(format!(
            "edge {:?} may not {verb} {app}/{stream} at this gateway",
            self.identity
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> StreamPattern {
        StreamPattern::parse(s).unwrap()
    }

    #[test]
    fn a_star_matches_within_one_segment_only() {
        let p = pattern("live/cam-*");
        assert!(p.matches("live/cam-1"));
        assert!(p.matches("live/cam-"));
        assert!(!p.matches("live/cam-1/x"));
        assert!(!p.matches("live2/cam-1"));
        assert!(!p.matches("live/cam"));
        assert!(!p.matches("live"));
        assert!(pattern("*/*").matches("any/thing"));
        assert!(!pattern("*/*").matches("any/thing/else"));
        assert!(pattern("live/*-hd-*").matches("live/a-hd-b"));
        assert!(!pattern("live/*-hd-*").matches("live/a-sd-b"));
        assert!(pattern("live/exact").matches("live/exact"));
        assert!(!pattern("live/exact").matches("live/exactly"));
        assert!(pattern("live/a*b*c").matches("live/aXbYbZc"));
        assert!(!pattern("live/a*b*c").matches("live/aXbYbZ"));
    }

    #[test]
    fn empty_segments_and_long_patterns_are_refused() {
        for bad in ["", "live/", "/live", "live//x"] {
            assert!(StreamPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            StreamPattern::parse(&"a".repeat(MAX_PATH_LEN + 1)),
            Err(PatternError::TooLong)
        );
    }

    #[test]
    fn many_stars_on_a_long_name_cost_bounded_work() {
        // The classic exponential case for recursive globbing.
        let p = pattern(&format!("live/{}b", "a*".repeat(100)));
        let name = format!("live/{}", "a".repeat(900));
        assert!(!p.matches(&name));
        assert!(!p.matches(&format!("live/{}", "a".repeat(MAX_PATH_LEN))));
    }

    #[test]
    fn rights_say_what_is_refused_and_why() {
        let r = Rights::listed(
            "cam-a",
            vec![pattern("live/cam-*")],
            vec![pattern("live/*")],
        );
        assert!(r.allows(Direction::Publish, "live", "cam-3"));
        assert!(!r.allows(Direction::Publish, "live", "studio"));
        assert!(r.allows(Direction::Play, "live", "studio"));
        assert!(!r.allows(Direction::Play, "vod", "studio"));
        let why = r.refusal(Direction::Publish, "live", "studio").unwrap();
        assert!(
            why.contains("\"cam-a\" may not publish live/studio"),
            "{why}"
        );
        assert!(Rights::everything("x").allows(Direction::Publish, "a", "b"));
        assert!(!Rights::nothing("x").allows(Direction::Play, "a", "b"));
    }
}
