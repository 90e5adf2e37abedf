//! The parsed form of a body, query or cookie map: a JSON-like tree that borrows from its source.
//!
//! Objects are kept sorted by key bytes with unique keys, which is both how Go encodes maps and
//! what the structural signature needs. Serialisation is iterative so that a 10 000-level body
//! (the deepest Go's decoder accepts) cannot overflow the stack.

use std::borrow::Cow;

use crate::json;

/// A parsed value. Strings are bytes because form values and raw text need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// JSON `null`.
    Null,
    /// JSON `true` / `false`.
    Bool(bool),
    /// A JSON number, kept as its literal text (Go's `UseNumber`).
    Number(&'a [u8]),
    /// A string; invalid UTF-8 is escaped as `\ufffd` when written.
    Str(Cow<'a, [u8]>),
    /// An array in source order.
    Array(Vec<Value<'a>>),
    /// An object sorted by key bytes, keys unique.
    Object(Vec<(Cow<'a, [u8]>, Value<'a>)>),
}

impl<'a> Value<'a> {
    /// Builds an object from members in source order: sorts by key and keeps the last value of a
    /// duplicated key, as decoding into a Go map does.
    pub fn object_from(mut members: Vec<(Cow<'a, [u8]>, Value<'a>)>) -> Self {
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(&mut later.1, &mut earlier.1);
                true
            } else {
                false
            }
        });
        Value::Object(members)
    }

    /// Writes the value as Go's encoder would, without recursion.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        enum Frame<'v, 'a> {
            Arr(std::slice::Iter<'v, Value<'a>>, bool),
            Obj(std::slice::Iter<'v, (Cow<'a, [u8]>, Value<'a>)>, bool),
        }
        let mut stack: Vec<Frame<'_, 'a>> = Vec::new();
        let mut next: Option<&Value<'a>> = Some(self);
        loop {
            if let Some(v) = next.take() {
                match v {
                    Value::Null => out.extend_from_slice(b"null"),
                    Value::Bool(true) => out.extend_from_slice(b"true"),
                    Value::Bool(false) => out.extend_from_slice(b"false"),
                    Value::Number(n) => out.extend_from_slice(n),
                    Value::Str(s) => json::write_str(out, s),
                    Value::Array(items) => {
                        out.push(b'[');
                        stack.push(Frame::Arr(items.iter(), true));
                    }
                    Value::Object(members) => {
                        out.push(b'{');
                        stack.push(Frame::Obj(members.iter(), true));
                    }
                }
            }
            let Some(top) = stack.last_mut() else { return };
            match top {
                Frame::Arr(iter, first) => match iter.next() {
                    Some(item) => {
                        if !*first {
                            out.push(b',');
                        }
                        *first = false;
                        next = Some(item);
                    }
                    None => {
                        out.push(b']');
                        stack.pop();
                    }
                },
                Frame::Obj(iter, first) => match iter.next() {
                    Some((k, item)) => {
                        if !*first {
                            out.push(b',');
                        }
                        *first = false;
                        json::write_key(out, k);
                        next = Some(item);
                    }
                    None => {
                        out.push(b'}');
                        stack.pop();
                    }
                },
            }
        }
    }

    /// Consumes the value without recursion, for trees too deep for the default recursive drop.
    pub fn drop_iteratively(self) {
        let mut stack = vec![self];
        while let Some(v) = stack.pop() {
            match v {
                Value::Array(items) => stack.extend(items),
                Value::Object(members) => stack.extend(members.into_iter().map(|(_, v)| v)),
                _ => {}
            }
        }
    }
}

/// A parsed body together with its nesting depth, so deep trees are freed without recursion.
#[derive(Debug)]
pub struct Parsed<'a> {
    value: Value<'a>,
    depth: usize,
}

/// Depth above which a tree is dropped iteratively (a recursive drop of a few hundred levels is
/// harmless; thousands on a 2 MiB worker stack are not).
const RECURSIVE_DROP_DEPTH: usize = 256;

impl<'a> Parsed<'a> {
    /// Wraps a value whose container nesting depth is `depth`.
    pub fn new(value: Value<'a>, depth: usize) -> Self {
        Self { value, depth }
    }

    /// The parsed value.
    pub fn value(&self) -> &Value<'a> {
        &self.value
    }

    /// The parsed value, for redaction in place.
    pub fn value_mut(&mut self) -> &mut Value<'a> {
        &mut self.value
    }
}

impl Drop for Parsed<'_> {
    fn drop(&mut self) {
        if self.depth > RECURSIVE_DROP_DEPTH {
            std::mem::replace(&mut self.value, Value::Null).drop_iteratively();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Cow<'_, [u8]> {
        Cow::Borrowed(s.as_bytes())
    }

    #[test]
    fn object_sorted_last_duplicate_wins() {
        let v = Value::object_from(vec![
            (b("b"), Value::Number(b"1")),
            (b("a"), Value::Number(b"2")),
            (b("b"), Value::Number(b"3")),
            (b("B"), Value::Null),
        ]);
        let mut out = Vec::new();
        v.write_json(&mut out);
        assert_eq!(out, br#"{"B":null,"a":2,"b":3}"#);
    }

    #[test]
    fn writes_nested() {
        let v = Value::Array(vec![
            Value::Bool(true),
            Value::Array(vec![]),
            Value::Object(vec![]),
            Value::object_from(vec![(b("<k>"), Value::Str(b("&")))]),
        ]);
        let mut out = Vec::new();
        v.write_json(&mut out);
        assert_eq!(out, br#"[true,[],{},{"\u003ck\u003e":"\u0026"}]"#);
    }

    #[test]
    fn deep_tree_writes_and_drops_without_recursion() {
        let mut v = Value::Null;
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        let mut out = Vec::new();
        v.write_json(&mut out);
        assert_eq!(out.len(), 100_000 * 2 + 4);
        drop(Parsed::new(v, 100_000));
    }
}
