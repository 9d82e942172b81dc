//! Bounded AMF0 validation: walks peer bytes once, without recursion, and refuses nesting or
//! value counts a real client never sends before anything recursive (rml_amf0's decoder, the
//! recursive `Drop` of nested values) touches them.
//!
//! rml_amf0 decodes recursively with no depth limit: an object nested a few thousand levels
//! deep (12 KB of bytes) overflows a worker thread's stack and aborts the process. Every AMF0
//! body a hop decodes goes through [`check`] first; only bodies it accepts reach rml_amf0, so
//! rml_amf0 never recurses deeper than [`Amf0Limits::max_depth`].
//!
//! The walk follows the AMF0 grammar (AMF0 specification, section 2). Where rml_amf0 is more
//! lenient (an object-end marker at the top level or inside a strict array ends its list;
//! a truncated string is read short), it stops earlier on the same path than this walk, so it
//! never sees deeper nesting than the walk checked.

/// Limits on an AMF0 body from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amf0Limits {
    /// Deepest nesting of objects, ECMA arrays, strict arrays and typed objects. Real
    /// clients nest two or three levels; the stack holds thousands.
    pub max_depth: usize,
    /// Most values in one body, containers and object properties included. Each decoded
    /// value takes about 56 bytes, one byte on the wire can be one value, so this bounds what
    /// a body costs to decode.
    pub max_values: usize,
}

impl Default for Amf0Limits {
    fn default() -> Self {
        Amf0Limits {
            max_depth: 64,
            max_values: 8192,
        }
    }
}

/// Why an AMF0 body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Amf0Error {
    /// Nested deeper than the limit.
    #[error("amf0 values nested deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// More values than the limit.
    #[error("more than {limit} amf0 values in one message")]
    TooManyValues {
        /// The limit.
        limit: usize,
    },
    /// The body ends inside a value.
    #[error("amf0 value truncated at byte {offset}")]
    Truncated {
        /// Where the body ran out.
        offset: usize,
    },
    /// A marker the AMF0 grammar does not allow where it stands.
    #[error("amf0 marker 0x{marker:02x} not allowed at byte {offset}")]
    BadMarker {
        /// The marker.
        marker: u8,
        /// Where it stands.
        offset: usize,
    },
}

/// What a valid body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amf0Shape {
    /// Plain AMF0 throughout: rml_amf0 may decode it.
    Plain,
    /// An AMF3 value (marker 0x11) starts at this offset; AMF0 before it was valid. Such a
    /// body is forwarded untouched but not decoded.
    Amf3At(usize),
}

/// AMF0 type markers (AMF0 specification, section 2.1).
pub(crate) mod marker {
    pub const NUMBER: u8 = 0x00;
    pub const BOOLEAN: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const OBJECT: u8 = 0x03;
    pub const NULL: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const REFERENCE: u8 = 0x07;
    pub const ECMA_ARRAY: u8 = 0x08;
    pub const OBJECT_END: u8 = 0x09;
    pub const STRICT_ARRAY: u8 = 0x0a;
    pub const DATE: u8 = 0x0b;
    pub const LONG_STRING: u8 = 0x0c;
    pub const UNSUPPORTED: u8 = 0x0d;
    pub const XML_DOCUMENT: u8 = 0x0f;
    pub const TYPED_OBJECT: u8 = 0x10;
    pub const AVMPLUS: u8 = 0x11;
}

/// An open container on the walk's explicit stack.
#[derive(Debug, Clone, Copy)]
enum Open {
    /// Object, ECMA array or typed object: properties until an empty name and object-end.
    Properties,
    /// Strict array: this many values still to come.
    Values(u32),
}

struct Walk<'a> {
    body: &'a [u8],
    pos: usize,
}

impl Walk<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Amf0Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.body.len())
            .ok_or(Amf0Error::Truncated {
                offset: self.body.len(),
            })?;
        let bytes = &self.body[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<usize, Amf0Error> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<u32, Amf0Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads one value's marker and skips what it holds but nested values.
    fn value(&mut self) -> Result<Value, Amf0Error> {
        let at = self.pos;
        Ok(match self.take(1)?[0] {
            marker::NUMBER => {
                self.take(8)?;
                Value::Scalar
            }
            marker::BOOLEAN => {
                self.take(1)?;
                Value::Scalar
            }
            marker::STRING => {
                let n = self.u16()?;
                self.take(n)?;
                Value::Scalar
            }
            marker::NULL | marker::UNDEFINED | marker::UNSUPPORTED => Value::Scalar,
            marker::REFERENCE => {
                self.u16()?;
                Value::Scalar
            }
            marker::DATE => {
                self.take(10)?;
                Value::Scalar
            }
            marker::LONG_STRING | marker::XML_DOCUMENT => {
                let n = self.u32()?;
                self.take(n as usize)?;
                Value::Scalar
            }
            marker::OBJECT => Value::Opens(Open::Properties),
            marker::ECMA_ARRAY => {
                self.u32()?;
                Value::Opens(Open::Properties)
            }
            marker::TYPED_OBJECT => {
                let n = self.u16()?;
                self.take(n)?;
                Value::Opens(Open::Properties)
            }
            marker::STRICT_ARRAY => Value::Opens(Open::Values(self.u32()?)),
            marker::AVMPLUS => Value::Amf3At(at),
            other => {
                return Err(Amf0Error::BadMarker {
                    marker: other,
                    offset: at,
                })
            }
        })
    }
}

/// One value read by [`Walk::value`].
enum Value {
    /// A value with nothing nested.
    Scalar,
    /// An object, array or strict array: what it holds follows.
    Opens(Open),
    /// An AVM+ marker at this offset: AMF3 from here on.
    Amf3At(usize),
}

/// Checks that `body` is a sequence of AMF0 values within `limits`, in one pass over the
/// bytes with an explicit stack (no recursion on anything the peer controls).
pub fn check(body: &[u8], limits: Amf0Limits) -> Result<Amf0Shape, Amf0Error> {
    let mut walk = Walk { body, pos: 0 };
    let mut stack: Vec<Open> = Vec::new();
    let mut values = 0usize;
    loop {
        // Where the next value comes from: the top level, a strict array, or a property.
        match stack.last_mut() {
            None => {
                if walk.pos == body.len() {
                    return Ok(Amf0Shape::Plain);
                }
            }
            Some(Open::Values(0)) => {
                stack.pop();
                continue;
            }
            Some(Open::Values(left)) => *left -= 1,
            Some(Open::Properties) => {
                let name_len = walk.u16()?;
                if name_len == 0 {
                    let at = walk.pos;
                    match walk.take(1)?[0] {
                        marker::OBJECT_END => {
                            stack.pop();
                            continue;
                        }
                        other => {
                            return Err(Amf0Error::BadMarker {
                                marker: other,
                                offset: at,
                            })
                        }
                    }
                }
                walk.take(name_len)?;
            }
        }
        values += 1;
        if values > limits.max_values {
            return Err(Amf0Error::TooManyValues {
                limit: limits.max_values,
            });
        }
        let opened = match walk.value()? {
            Value::Scalar => None,
            Value::Opens(open) => Some(open),
            Value::Amf3At(at) => return Ok(Amf0Shape::Amf3At(at)),
        };
        if let Some(open) = opened {
            if stack.len() >= limits.max_depth {
                return Err(Amf0Error::TooDeep {
                    limit: limits.max_depth,
                });
            }
            stack.push(open);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(container: &[u8], inner: &[u8], depth: usize) -> Vec<u8> {
        let mut body = vec![0x02, 0, 7];
        body.extend_from_slice(b"connect");
        body.push(0x00);
        body.extend_from_slice(&1f64.to_be_bytes());
        for _ in 0..depth {
            body.extend_from_slice(container);
            body.extend_from_slice(inner);
        }
        body.push(0x05);
        body
    }

    #[test]
    fn accepts_what_rml_amf0_writes() {
        use rml_amf0::Amf0Value;
        let mut props = std::collections::HashMap::new();
        props.insert("app".to_owned(), Amf0Value::Utf8String("live".into()));
        props.insert(
            "list".to_owned(),
            Amf0Value::StrictArray(vec![Amf0Value::Number(1.0), Amf0Value::Null]),
        );
        let values = vec![
            Amf0Value::Utf8String("connect".into()),
            Amf0Value::Number(1.0),
            Amf0Value::Object(props),
            Amf0Value::Boolean(true),
            Amf0Value::Undefined,
        ];
        let body = rml_amf0::serialize(&values).unwrap();
        assert_eq!(check(&body, Amf0Limits::default()), Ok(Amf0Shape::Plain));
        assert_eq!(check(&[], Amf0Limits::default()), Ok(Amf0Shape::Plain));
    }

    #[test]
    fn refuses_deep_nesting_of_every_container_kind() {
        let limits = Amf0Limits::default();
        let object = nested(&[0x03], &[0, 1, b'a'], 50_000);
        let ecma = nested(&[0x08, 0, 0, 0, 1], &[0, 1, b'a'], 50_000);
        let strict = nested(&[0x0a, 0, 0, 0, 1], &[], 50_000);
        let typed = nested(&[0x10, 0, 1, b'T'], &[0, 1, b'a'], 50_000);
        for body in [object, ecma, strict, typed] {
            assert_eq!(check(&body, limits), Err(Amf0Error::TooDeep { limit: 64 }));
        }
    }

    #[test]
    fn depth_at_the_limit_passes_and_one_more_fails() {
        let limits = Amf0Limits {
            max_depth: 4,
            max_values: 100,
        };
        // Strict arrays of one element each, closed properly by their counts.
        let ok = nested(&[0x0a, 0, 0, 0, 1], &[], 4);
        assert_eq!(check(&ok, limits), Ok(Amf0Shape::Plain));
        let deep = nested(&[0x0a, 0, 0, 0, 1], &[], 5);
        assert_eq!(check(&deep, limits), Err(Amf0Error::TooDeep { limit: 4 }));
    }

    #[test]
    fn refuses_too_many_values() {
        let mut body = vec![0x0a, 0, 1, 0, 0];
        body.extend(std::iter::repeat_n(0x05, 0x1_0000));
        assert_eq!(
            check(&body, Amf0Limits::default()),
            Err(Amf0Error::TooManyValues { limit: 8192 })
        );
    }

    #[test]
    fn refuses_truncation_and_bad_markers() {
        let limits = Amf0Limits::default();
        assert!(matches!(
            check(&[0x02, 0, 9, b'a'], limits),
            Err(Amf0Error::Truncated { .. })
        ));
        assert!(matches!(
            check(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x05], limits),
            Err(Amf0Error::Truncated { .. })
        ));
        assert_eq!(
            check(&[0x09], limits),
            Err(Amf0Error::BadMarker {
                marker: 0x09,
                offset: 0
            })
        );
        assert_eq!(
            check(&[0x05, 0x04], limits),
            Err(Amf0Error::BadMarker {
                marker: 0x04,
                offset: 1
            })
        );
        // An empty property name must be followed by object-end.
        assert!(matches!(
            check(&[0x03, 0, 0, 0x05], limits),
            Err(Amf0Error::BadMarker { marker: 0x05, .. })
        ));
    }

    #[test]
    fn stops_at_an_amf3_value() {
        assert_eq!(
            check(&[0x05, 0x11, 0x0a, 0x0b], Amf0Limits::default()),
            Ok(Amf0Shape::Amf3At(1))
        );
    }
}
