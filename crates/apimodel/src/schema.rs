//! JSON Schema inference from parsed bodies: one [`Node`] per schema position, merged with every
//! observed value. A node keeps types and property names only — never values — plus counts that
//! make `required` (present in every observed object) and a string `format` that every observed
//! string matched.
//!
//! Bounds: at most [`MAX_PROPERTIES`] properties per object, [`MAX_DEPTH`] levels and
//! [`MAX_UNION`] types per node; beyond them the node is marked truncated and stops growing, so a
//! hostile body costs bounded memory.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};
use telemetry::value::Value;

/// Most properties kept per object node.
pub const MAX_PROPERTIES: usize = 64;
/// Most nesting levels inferred; deeper values only mark their parent truncated.
pub const MAX_DEPTH: usize = 8;
/// Most distinct types one node may hold before it is marked truncated (any type).
pub const MAX_UNION: u32 = 4;
/// The extension keyword marking a schema cut by a cap.
pub const TRUNCATED_MARKER: &str = "x-waygate-truncated";

const T_NULL: u8 = 1;
const T_BOOL: u8 = 2;
const T_INT: u8 = 4;
const T_NUM: u8 = 8;
const T_STR: u8 = 16;
const T_ARR: u8 = 32;
const T_OBJ: u8 = 64;
const TYPE_NAMES: [(u8, &str); 7] = [
    (T_NULL, "null"),
    (T_BOOL, "boolean"),
    (T_INT, "integer"),
    (T_NUM, "number"),
    (T_STR, "string"),
    (T_ARR, "array"),
    (T_OBJ, "object"),
];

/// A string format, recorded only while every observed string of the node matched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    /// No string observed yet.
    Unset,
    /// RFC 3339 date-time.
    DateTime,
    /// RFC 4122 textual UUID.
    Uuid,
    /// A plain `local@domain.tld` address.
    Email,
    /// An absolute `http(s)://` URI.
    Uri,
    /// Strings with no common format.
    None,
}

impl Format {
    fn name(self) -> Option<&'static str> {
        match self {
            Format::DateTime => Some("date-time"),
            Format::Uuid => Some("uuid"),
            Format::Email => Some("email"),
            Format::Uri => Some("uri"),
            Format::Unset | Format::None => None,
        }
    }
}

/// The format `s` unambiguously has, if any.
pub fn detect_format(s: &[u8]) -> Format {
    if is_uuid(s) {
        Format::Uuid
    } else if is_date_time(s) {
        Format::DateTime
    } else if is_email(s) {
        Format::Email
    } else if is_uri(s) {
        Format::Uri
    } else {
        Format::None
    }
}

fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn is_date_time(s: &[u8]) -> bool {
    // YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)
    let digits =
        |r: std::ops::Range<usize>| s.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if s.len() < 20
        || !digits(0..4)
        || s[4] != b'-'
        || !digits(5..7)
        || s[7] != b'-'
        || !digits(8..10)
        || !matches!(s[10], b'T' | b't')
        || !digits(11..13)
        || s[13] != b':'
        || !digits(14..16)
        || s[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

fn is_email(s: &[u8]) -> bool {
    let Some(at) = s.iter().position(|&b| b == b'@') else {
        return false;
    };
    let (local, domain) = (&s[..at], &s[at + 1..]);
    !local.is_empty()
        && local.len() <= 64
        && domain.len() >= 3
        && domain.contains(&b'.')
        && !domain.starts_with(b".")
        && !domain.ends_with(b".")
        && s.iter().all(|&b| b.is_ascii_graphic())
        && !domain.contains(&b'@')
}

fn is_uri(s: &[u8]) -> bool {
    let rest = s
        .strip_prefix(b"https://")
        .or_else(|| s.strip_prefix(b"http://"));
    rest.is_some_and(|r| !r.is_empty() && r[0] != b'/') && s.iter().all(|&b| b.is_ascii_graphic())
}

/// The type and format of a scalar seen as text (a query or path parameter): integers, numbers
/// and booleans by their literal form, else a string with its format.
pub fn text_kind(s: &[u8]) -> (u8, Format) {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
        return (T_INT, Format::Unset);
    }
    if s == b"true" || s == b"false" {
        return (T_BOOL, Format::Unset);
    }
    (T_STR, detect_format(s))
}

/// One schema position.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    types: u8,
    format: Format,
    /// Objects merged at this node (the denominator of `required`).
    objects: u64,
    /// Properties sorted by key bytes, with the number of objects that had each.
    props: Vec<(Box<[u8]>, u64, Node)>,
    items: Option<Box<Node>>,
    truncated: bool,
    /// The union cap was exceeded: any type.
    any: bool,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            types: 0,
            format: Format::Unset,
            objects: 0,
            props: Vec::new(),
            items: None,
            truncated: false,
            any: false,
        }
    }
}

/// One structural change found while merging a value into a learned node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `add` (a new property), `remove` (a property that was always present is missing) or
    /// `type` (a new type at an existing position).
    pub op: &'static str,
    /// JSON Pointer of the position within the body.
    pub path: String,
    /// For `type`: the types before and after.
    pub types: Option<(String, String)>,
}

impl Change {
    /// The change as a short JSON Patch-like object (names and types only).
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        m.insert("op".into(), Json::from(self.op));
        m.insert("path".into(), Json::from(self.path.as_str()));
        if let Some((was, now)) = &self.types {
            m.insert("was".into(), Json::from(was.as_str()));
            m.insert("now".into(), Json::from(now.as_str()));
        }
        Json::Object(m)
    }
}

/// State of one merge: whether changes are reported, the path so far, and bytes added.
#[derive(Debug, Default)]
pub struct Merge<'v> {
    /// Collect [`Change`]s (the node is learned).
    pub report: bool,
    /// Changes found (only when `report`).
    pub changes: Vec<Change>,
    /// Approximate heap bytes added to the model.
    pub added_bytes: usize,
    /// Most bytes this merge may add; beyond, new positions are not created (marked truncated).
    pub budget: usize,
    path: Vec<&'v [u8]>,
}

/// Most changes collected from one merge (the rest are counted in the line as `more`).
pub const MAX_CHANGES: usize = 16;

impl<'v> Merge<'v> {
    /// A merge that reports changes when `report`.
    pub fn new(report: bool, budget: usize) -> Self {
        Self {
            report,
            budget,
            ..Self::default()
        }
    }

    /// Enters a position; the path is kept only when changes are reported (it is only needed
    /// to name them), so a merge of a known shape allocates nothing.
    fn enter(&mut self, seg: &'v [u8]) {
        if self.report {
            self.path.push(seg);
        }
    }

    fn leave(&mut self) {
        if self.report {
            self.path.pop();
        }
    }

    /// Takes `bytes` from the budget; false when they do not fit.
    fn take(&mut self, bytes: usize) -> bool {
        if self.added_bytes.saturating_add(bytes) > self.budget {
            return false;
        }
        self.added_bytes += bytes;
        true
    }

    fn pointer(&self, last: Option<&[u8]>) -> String {
        let mut s = String::new();
        for seg in self.path.iter().copied().chain(last) {
            s.push('/');
            for c in String::from_utf8_lossy(seg).chars() {
                match c {
                    '~' => s.push_str("~0"),
                    '/' => s.push_str("~1"),
                    c => s.push(c),
                }
            }
        }
        s
    }

    fn change(&mut self, op: &'static str, last: Option<&[u8]>, types: Option<(u8, u8)>) {
        if !self.report {
            return;
        }
        let path = self.pointer(last);
        self.changes.push(Change {
            op,
            path,
            types: types.map(|(a, b)| (type_list(a), type_list(b))),
        });
    }
}

fn type_list(types: u8) -> String {
    let mut s = String::new();
    for (bit, name) in TYPE_NAMES {
        if types & bit != 0 {
            if !s.is_empty() {
                s.push('|');
            }
            s.push_str(name);
        }
    }
    s
}

const NODE_BYTES: usize = std::mem::size_of::<Node>();
const PROP_BYTES: usize = std::mem::size_of::<(Box<[u8]>, u64, Node)>();

fn value_type(v: &Value<'_>) -> u8 {
    match v {
        Value::Null => T_NULL,
        Value::Bool(_) => T_BOOL,
        Value::Number(n) => {
            if n.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                T_NUM
            } else {
                T_INT
            }
        }
        Value::Str(_) => T_STR,
        Value::Array(_) => T_ARR,
        Value::Object(_) => T_OBJ,
    }
}

impl Node {
    /// True before any value was merged.
    pub fn is_empty(&self) -> bool {
        self.types == 0
    }

    /// Merges a scalar seen as text (see [`text_kind`]).
    pub fn merge_text(&mut self, s: &[u8]) {
        let (t, f) = text_kind(s);
        self.types |= t;
        if t == T_STR {
            self.merge_format(f);
        }
    }

    fn merge_format(&mut self, f: Format) {
        self.format = match self.format {
            Format::Unset => f,
            cur if cur == f => cur,
            _ => Format::None,
        };
    }

    /// Merges `v` at depth `depth`, recording changes in `m` when it reports.
    pub fn merge<'v>(&mut self, v: &'v Value<'_>, depth: usize, m: &mut Merge<'v>) {
        if self.any {
            return;
        }
        let t = value_type(v);
        if self.types & t == 0 {
            let widened = self.types | t;
            // An integer where numbers were seen is no new type.
            if self.types != 0 && !(t == T_INT && self.types & T_NUM != 0) {
                m.change("type", None, Some((self.types, widened)));
            }
            if widened.count_ones() > MAX_UNION {
                // Too wide to describe usefully: any type from now on, structure dropped.
                self.any = true;
                self.truncated = true;
                self.props = Vec::new();
                self.items = None;
                return;
            }
            self.types = widened;
        }
        match v {
            Value::Str(s) => {
                // Formats are detected on the first bytes only; long strings are plain strings.
                let f = if s.len() <= 320 {
                    detect_format(s)
                } else {
                    Format::None
                };
                if self.format != Format::None {
                    self.merge_format(f);
                }
            }
            Value::Array(items) => {
                if depth >= MAX_DEPTH {
                    self.truncated = true;
                    return;
                }
                if items.is_empty() {
                    return;
                }
                if self.items.is_none() {
                    if !m.take(NODE_BYTES) {
                        self.truncated = true;
                        return;
                    }
                    self.items = Some(Box::default());
                }
                let Some(node) = self.items.as_mut() else {
                    return;
                };
                m.enter(b"items");
                for item in items {
                    node.merge(item, depth + 1, m);
                }
                m.leave();
            }
            Value::Object(members) => {
                if depth >= MAX_DEPTH {
                    self.truncated = true;
                    return;
                }
                self.merge_object(members, depth, m);
            }
            _ => {}
        }
    }

    fn merge_object<'v>(
        &mut self,
        members: &'v [(std::borrow::Cow<'_, [u8]>, Value<'_>)],
        depth: usize,
        m: &mut Merge<'v>,
    ) {
        let before = self.objects;
        self.objects += 1;
        // Both lists are sorted by key bytes: a merge join, no allocation for known keys.
        let mut i = 0;
        for (key, value) in members {
            let key: &[u8] = key;
            while i < self.props.len() && &*self.props[i].0 < key {
                let (k, count, _) = &self.props[i];
                if *count == before && before > 0 {
                    m.change("remove", Some(k), None);
                }
                i += 1;
            }
            if i < self.props.len() && &*self.props[i].0 == key {
            } else if self.props.len() >= MAX_PROPERTIES || !m.take(PROP_BYTES + key.len()) {
                self.truncated = true;
                continue;
            } else {
                m.change("add", Some(key), None);
                self.props.insert(i, (key.into(), 0, Node::default()));
            }
            let prop = &mut self.props[i];
            prop.1 += 1;
            m.enter(key);
            prop.2.merge(value, depth + 1, m);
            m.leave();
            i += 1;
        }
        while i < self.props.len() {
            let (k, count, _) = &self.props[i];
            if *count == before && before > 0 {
                m.change("remove", Some(k), None);
            }
            i += 1;
        }
    }

    /// The JSON Schema (2020-12, as OpenAPI 3.1 uses) of this node.
    pub fn to_schema(&self) -> Json {
        let mut s = Map::new();
        let mut types = self.types;
        if types & T_NUM != 0 {
            types &= !T_INT;
        }
        let names: Vec<&str> = TYPE_NAMES
            .iter()
            .filter(|(bit, _)| types & bit != 0)
            .map(|(_, n)| *n)
            .collect();
        if !self.any {
            match names.as_slice() {
                [] => {}
                [one] => {
                    s.insert("type".into(), Json::from(*one));
                }
                many => {
                    s.insert("type".into(), json!(many));
                }
            }
        }
        if let Some(f) = self.format.name() {
            if types & T_STR != 0 {
                s.insert("format".into(), Json::from(f));
            }
        }
        if types & T_OBJ != 0 {
            let mut props = Map::new();
            let mut required = Vec::new();
            for (k, count, node) in &self.props {
                let name = String::from_utf8_lossy(k).into_owned();
                if *count == self.objects {
                    required.push(Json::from(name.as_str()));
                }
                props.insert(name, node.to_schema());
            }
            s.insert("properties".into(), Json::Object(props));
            if !required.is_empty() {
                s.insert("required".into(), Json::Array(required));
            }
        }
        if let Some(items) = &self.items {
            s.insert("items".into(), items.to_schema());
        }
        if self.truncated {
            s.insert(TRUNCATED_MARKER.into(), Json::Bool(true));
        }
        Json::Object(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry::parse::json::parse_first;

    fn merge_all(docs: &[&str], report_after: usize) -> (Node, Vec<Change>) {
        let mut node = Node::default();
        let mut changes = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            let parsed = parse_first(d.as_bytes()).expect("test json");
            let mut m = Merge::new(i >= report_after, usize::MAX);
            node.merge(parsed.value(), 0, &mut m);
            changes.extend(m.changes);
        }
        (node, changes)
    }

    #[test]
    fn infers_types_required_items_and_formats() {
        let (node, changes) = merge_all(
            &[
                r#"{"id":1,"email":"a@b.io","at":"2026-12-06T10:00:00Z","tags":[{"n":"x"}],"opt":true,"u":"https://x.io/a","k":"8c2b6f9e-3f4a-4b8a-9a65-1f2e3d4c5b6a"}"#,
                r#"{"id":2.5,"email":"c@d.org","at":"2026-12-06T10:00:00.5+01:00","tags":[],"u":"http://y","k":"00000000-0000-0000-0000-000000000000"}"#,
            ],
            usize::MAX,
        );
        assert!(changes.is_empty());
        let s = node.to_schema();
        assert_eq!(s["type"], "object");
        assert_eq!(s["properties"]["id"]["type"], "number");
        assert_eq!(s["properties"]["email"]["format"], "email");
        assert_eq!(s["properties"]["at"]["format"], "date-time");
        assert_eq!(s["properties"]["u"]["format"], "uri");
        assert_eq!(s["properties"]["k"]["format"], "uuid");
        assert_eq!(
            s["properties"]["tags"]["items"]["properties"]["n"]["type"],
            "string"
        );
        assert_eq!(
            s["required"],
            json!(["at", "email", "id", "k", "tags", "u"])
        );
    }

    #[test]
    fn mixed_formats_drop_the_format() {
        let (node, _) = merge_all(&[r#"{"a":"x@y.io"}"#, r#"{"a":"hello"}"#], usize::MAX);
        assert!(node.to_schema()["properties"]["a"].get("format").is_none());
    }

    #[test]
    fn reports_each_change_once_when_learned() {
        let docs = [
            r#"{"a":1,"b":"x"}"#,
            r#"{"a":2,"b":"y"}"#,
            r#"{"a":3,"b":"z","c":null}"#,
            r#"{"a":"s","c":null}"#,
            r#"{"a":"t","b":"w","c":1}"#,
            r#"{"a":"t","c":2}"#,
        ];
        let (_, changes) = merge_all(&docs, 2);
        let ops: Vec<(&str, &str)> = changes.iter().map(|c| (c.op, c.path.as_str())).collect();
        assert_eq!(
            ops,
            [
                ("add", "/c"),
                ("type", "/a"),
                ("remove", "/b"),
                ("type", "/c")
            ]
        );
        assert_eq!(
            changes[1].types,
            Some(("integer".to_owned(), "integer|string".to_owned()))
        );
    }

    #[test]
    fn caps_properties_and_depth_with_a_marker() {
        let wide: String = format!(
            "{{{}}}",
            (0..200)
                .map(|i| format!("\"k{i:03}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let (node, _) = merge_all(&[&wide], usize::MAX);
        let s = node.to_schema();
        assert_eq!(
            s["properties"].as_object().map(Map::len),
            Some(MAX_PROPERTIES)
        );
        assert_eq!(s[TRUNCATED_MARKER], true);
        let deep = "[".repeat(50) + &"]".repeat(50);
        let (node, _) = merge_all(&[&deep], usize::MAX);
        let text = node.to_schema().to_string();
        assert!(text.contains(TRUNCATED_MARKER), "{text}");
        assert!(text.matches("items").count() <= MAX_DEPTH, "{text}");
    }

    #[test]
    fn text_kinds() {
        assert_eq!(text_kind(b"42").0, T_INT);
        assert_eq!(text_kind(b"true").0, T_BOOL);
        assert_eq!(
            text_kind(b"8c2b6f9e-3f4a-4b8a-9a65-1f2e3d4c5b6a"),
            (T_STR, Format::Uuid)
        );
        assert_eq!(text_kind(b"abc"), (T_STR, Format::None));
    }
}
