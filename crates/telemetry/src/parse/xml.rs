//! XML bodies mapped to a JSON-like object the way cwproxy's Go code maps `encoding/xml` tokens.
//!
//! `{root: value}` where an element's value is its text, `{}` when empty, or an object with
//! `@attr` keys, child elements by local name (repeats collected into an array in document
//! order) and `#text`. Strict: mismatched tags, undefined entities (so no entity expansion and no
//! billion-laughs), non-UTF-8 encodings and nesting deeper than 64 are errors.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::value::{Parsed, Value};

/// Deepest element nesting accepted (cwproxy's `maxXMLParseDepth`).
pub const MAX_DEPTH: usize = 64;

/// Why a body is not mappable XML (it is then logged as raw text).
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// Malformed XML as reported by the tokenizer.
    #[error("xml: {0}")]
    Syntax(String),
    /// An entity other than the five predefined ones and character references.
    #[error("xml: invalid character entity &{0};")]
    Entity(String),
    /// Declared encoding other than UTF-8.
    #[error("xml: encoding {0:?} declared but no charset reader")]
    Encoding(String),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("xml nesting depth exceeded")]
    TooDeep,
    /// Input ended before the root element was closed (or had none).
    #[error("unexpected EOF")]
    Eof,
}

struct Element {
    name: Vec<u8>,
    /// Attributes, sorted by key, later duplicates dropped.
    fields: Vec<(Cow<'static, [u8]>, Value<'static>)>,
    /// Child elements in document order; grouped by name only in `close`, so an element with
    /// many distinct children costs O(n log n), not a scan of every earlier child per child.
    children: Vec<(Vec<u8>, Value<'static>)>,
    text: Vec<String>,
    run: String,
}

impl Element {
    fn open(start: &BytesStart<'_>) -> Result<Self, XmlError> {
        let mut fields = Vec::new();
        let mut attrs = start.attributes();
        attrs.with_checks(false);
        for attr in attrs {
            let attr = attr.map_err(|e| XmlError::Syntax(e.to_string()))?;
            let value = attr
                .unescape_value()
                .map_err(|e| XmlError::Syntax(e.to_string()))?;
            let mut key = Vec::with_capacity(attr.key.local_name().as_ref().len() + 1);
            key.push(b'@');
            key.extend_from_slice(attr.key.local_name().as_ref());
            fields.push((
                Cow::Owned(key),
                Value::Str(Cow::Owned(value.into_owned().into_bytes())),
            ));
        }
        // Later duplicates win, as with Go's map assignment.
        let fields = match Value::object_from(fields) {
            Value::Object(f) => f,
            _ => Vec::new(),
        };
        Ok(Self {
            name: start.local_name().as_ref().to_vec(),
            fields,
            children: Vec::new(),
            text: Vec::new(),
            run: String::new(),
        })
    }

    /// Ends a run of character data: Go delivers text between two markup tokens as one piece.
    fn flush_text(&mut self) {
        let trimmed = self.run.trim();
        if !trimmed.is_empty() {
            self.text.push(trimmed.to_owned());
        }
        self.run.clear();
    }

    fn add_child(&mut self, name: Vec<u8>, value: Value<'static>) {
        self.children.push((name, value));
    }

    fn close(mut self) -> (Vec<u8>, Value<'static>) {
        self.flush_text();
        let text = self.text.join(" ");
        if !self.children.is_empty() {
            // A stable sort keeps repeated names in document order inside their array.
            self.children.sort_by(|a, b| a.0.cmp(&b.0));
            let mut iter = std::mem::take(&mut self.children).into_iter().peekable();
            while let Some((name, value)) = iter.next() {
                if iter.peek().is_some_and(|(n, _)| *n == name) {
                    let mut items = vec![value];
                    while let Some((_, v)) = iter.next_if(|(n, _)| *n == name) {
                        items.push(v);
                    }
                    self.fields.push((Cow::Owned(name), Value::Array(items)));
                } else {
                    self.fields.push((Cow::Owned(name), value));
                }
            }
            // Attribute keys start with `@`, which no element name can, so keys stay unique.
            self.fields.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let value = if self.fields.is_empty() {
            if text.is_empty() {
                Value::Object(Vec::new())
            } else {
                Value::Str(Cow::Owned(text.into_bytes()))
            }
        } else {
            if !text.is_empty() {
                let key: &'static [u8] = b"#text";
                let at = self.fields.partition_point(|(k, _)| k.as_ref() < key);
                self.fields.insert(
                    at,
                    (
                        Cow::Borrowed(key),
                        Value::Str(Cow::Owned(text.into_bytes())),
                    ),
                );
            }
            Value::Object(self.fields)
        };
        (self.name, value)
    }
}

fn resolve_entity(name: &[u8]) -> Option<char> {
    Some(match name {
        b"lt" => '<',
        b"gt" => '>',
        b"amp" => '&',
        b"apos" => '\'',
        b"quot" => '"',
        _ => return None,
    })
}

/// Maps the first root element of `src`.
pub fn parse(src: &[u8]) -> Result<Parsed<'static>, XmlError> {
    let mut reader = Reader::from_reader(src);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = true;
    config.check_comments = true;
    let syntax = |e: quick_xml::Error| XmlError::Syntax(e.to_string());

    let mut stack: Vec<Element> = Vec::new();
    loop {
        let event = reader.read_event().map_err(syntax)?;
        match event {
            Event::Decl(decl) => {
                if let Some(enc) = decl.encoding() {
                    let enc = enc.map_err(|e| XmlError::Syntax(e.to_string()))?;
                    if !enc.eq_ignore_ascii_case(b"utf-8") {
                        return Err(XmlError::Encoding(
                            String::from_utf8_lossy(&enc).into_owned(),
                        ));
                    }
                }
            }
            Event::Start(start) => {
                if let Some(parent) = stack.last_mut() {
                    parent.flush_text();
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                stack.push(Element::open(&start)?);
            }
            Event::End(_) => {
                let Some(done) = stack.pop() else {
                    return Err(XmlError::Syntax("unexpected end element".into()));
                };
                let (name, value) = done.close();
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, value),
                    None => {
                        let root = Value::Object(vec![(Cow::Owned(name), value)]);
                        return Ok(Parsed::new(root, MAX_DEPTH + 1));
                    }
                }
            }
            Event::Text(text) => {
                if let Some(el) = stack.last_mut() {
                    let s = text
                        .xml_content()
                        .map_err(|e| XmlError::Syntax(e.to_string()))?;
                    el.run.push_str(&s);
                }
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref().map_err(syntax)? {
                    Some(ch) => ch,
                    None => resolve_entity(&r).ok_or_else(|| {
                        XmlError::Entity(String::from_utf8_lossy(&r).into_owned())
                    })?,
                };
                if let Some(el) = stack.last_mut() {
                    el.run.push(ch);
                }
            }
            Event::CData(data) => {
                if let Some(el) = stack.last_mut() {
                    el.flush_text();
                    let s =
                        std::str::from_utf8(&data).map_err(|e| XmlError::Syntax(e.to_string()))?;
                    el.run.push_str(s);
                    el.flush_text();
                }
            }
            Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {
                if let Some(el) = stack.last_mut() {
                    el.flush_text();
                }
            }
            Event::Empty(_) => return Err(XmlError::Syntax("unexpanded empty element".into())),
            Event::Eof => return Err(XmlError::Eof),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(src: &str) -> Result<String, XmlError> {
        let parsed = parse(src.as_bytes())?;
        let mut out = Vec::new();
        parsed.value().write_json(&mut out);
        Ok(String::from_utf8(out).expect("utf8"))
    }

    #[test]
    fn spec_example() {
        assert_eq!(
            json(r#"<status code="200"><ok>true</ok></status>"#).expect("parses"),
            r#"{"status":{"@code":"200","ok":"true"}}"#
        );
    }

    #[test]
    fn mapping_rules() {
        assert_eq!(
            json("<?xml version=\"1.0\"?><!-- c --><a/>").expect("ok"),
            r#"{"a":{}}"#
        );
        assert_eq!(json("<a> hi </a>").expect("ok"), r#"{"a":"hi"}"#);
        assert_eq!(
            json("<a><b>1</b><c/><b>2</b></a>").expect("ok"),
            r#"{"a":{"b":["1","2"],"c":{}}}"#
        );
        assert_eq!(
            json("<a x=\"1\">t <b/> u</a>").expect("ok"),
            r##"{"a":{"#text":"t u","@x":"1","b":{}}}"##
        );
        assert_eq!(
            json("<a>AT&amp;T &#60;&#x3e;</a>").expect("ok"),
            r#"{"a":"AT\u0026T \u003c\u003e"}"#
        );
        assert_eq!(
            json("<a>x<![CDATA[ <y> ]]>z</a>").expect("ok"),
            r#"{"a":"x \u003cy\u003e z"}"#
        );
        assert_eq!(
            json(r#"<p:a xmlns:p="urn:x" xmlns="urn:d" p:k="v"/>"#).expect("ok"),
            r#"{"a":{"@k":"v","@p":"urn:x","@xmlns":"urn:d"}}"#
        );
        assert_eq!(json("<a/>trailing <junk").expect("ok"), r#"{"a":{}}"#);
    }

    #[test]
    fn strictness() {
        for bad in [
            "<broken>",
            "",
            "just text",
            "<a></b>",
            "<a>&nbsp;</a>",
            "<a b=c/>",
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?} should fail");
        }
        assert!(parse(b"<a>\xff</a>").is_err());
    }

    #[test]
    fn depth_limit() {
        let ok = "<a>".repeat(MAX_DEPTH) + &"</a>".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(matches!(parse(deep.as_bytes()), Err(XmlError::TooDeep)));
    }

    #[test]
    fn billion_laughs_not_expanded() {
        let bomb = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<lolz>&lol3;</lolz>"#;
        assert!(matches!(parse(bomb.as_bytes()), Err(XmlError::Entity(_))));
    }
}
