//! Structural signatures and their 6-character hashes (`queries_hash`, `body_hash`, `global_hash`).
//!
//! A signature describes the shape of a value, never its scalars, so requests that differ only in
//! values share a hash. The grammar and the 24-bit SHA-256 prefix are byte-compatible with the Go
//! cwproxy, including its known weaknesses (keys are not escaped, so `:`/`;` in keys can collide;
//! 24 bits collide often across thousands of shapes).

use sha2::{Digest, Sha256};

use crate::value::Value;

/// Containers at this depth or deeper (root = 0) are written as `x` instead of being expanded.
pub const MAX_SIGNATURE_DEPTH: usize = 32;

/// Appends the structural signature of `value` to `out`.
pub fn signature(value: &Value<'_>, out: &mut Vec<u8>) {
    sig(value, 0, out);
}

fn sig(value: &Value<'_>, depth: usize, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(b'n'),
        Value::Bool(_) | Value::Number(_) | Value::Str(_) => out.push(b'v'),
        Value::Object(_) | Value::Array(_) if depth >= MAX_SIGNATURE_DEPTH => out.push(b'x'),
        Value::Object(members) => {
            out.extend_from_slice(b"o{");
            for (key, child) in members {
                out.extend_from_slice(key);
                out.push(b':');
                sig(child, depth + 1, out);
                out.push(b';');
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.extend_from_slice(b"a[");
            if items.iter().all(is_scalar) {
                // The common case needs no per-child buffers: every child is `n` or `v`.
                let has_null = items.iter().any(|v| matches!(v, Value::Null));
                let has_scalar = items.iter().any(|v| !matches!(v, Value::Null));
                if has_null {
                    out.extend_from_slice(b"n,");
                }
                if has_scalar {
                    out.extend_from_slice(b"v,");
                }
            } else {
                let mut children: Vec<Vec<u8>> = items
                    .iter()
                    .map(|item| {
                        let mut s = Vec::new();
                        sig(item, depth + 1, &mut s);
                        s
                    })
                    .collect();
                children.sort();
                children.dedup();
                for child in children {
                    out.extend_from_slice(&child);
                    out.push(b',');
                }
            }
            out.push(b']');
        }
    }
}

fn is_scalar(v: &Value<'_>) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

/// The first three bytes of SHA-256 of `signature`, as six lowercase hex characters.
pub fn short_hash(signature: &[u8]) -> [u8; 6] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(signature);
    let mut out = [0u8; 6];
    for (i, byte) in digest.iter().take(3).enumerate() {
        out[2 * i] = HEX[usize::from(byte >> 4)];
        out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    out
}

/// Most signatures remembered by a [`HashCache`].
const CACHE_SLOTS: usize = 256;
/// Longer signatures are hashed every time rather than cached, bounding the cache's memory.
const CACHE_MAX_SIGNATURE: usize = 1024;

/// A remembered signature and its hash.
type CacheSlot = Option<(Box<[u8]>, [u8; 6])>;

/// A small direct-mapped memo of signature → hash.
///
/// Traffic repeats a handful of shapes per endpoint, so most SHA-256 computations repeat too;
/// the cache holds at most 256 signatures of at most 1 KiB each.
#[derive(Debug, Default)]
pub struct HashCache {
    slots: Vec<CacheSlot>,
    enabled: bool,
}

impl HashCache {
    /// An enabled, empty cache.
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            enabled: true,
        }
    }

    /// A cache that never remembers (for measuring the uncached cost).
    pub fn disabled() -> Self {
        Self {
            slots: Vec::new(),
            enabled: false,
        }
    }

    /// `short_hash(signature)`, from the cache when possible.
    pub fn hash(&mut self, signature: &[u8]) -> [u8; 6] {
        if !self.enabled || signature.len() > CACHE_MAX_SIGNATURE {
            return short_hash(signature);
        }
        // FNV-1a picks the slot; a hit still compares the whole signature.
        let slot = signature.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let slot = (slot % CACHE_SLOTS as u64) as usize;
        if self.slots.is_empty() {
            self.slots.resize_with(CACHE_SLOTS, || None);
        }
        if let Some((sig, hash)) = &self.slots[slot] {
            if sig.as_ref() == signature {
                return *hash;
            }
        }
        let hash = short_hash(signature);
        self.slots[slot] = Some((signature.into(), hash));
        hash
    }
}

/// Reusable buffers for rendering entries on one thread.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Signature buffer.
    pub signature: Vec<u8>,
    /// Signature → hash memo.
    pub cache: HashCache,
    /// EMF index buffers.
    pub emf: crate::emf::EmfScratch,
    /// Distinct `Endpoint` values seen by this renderer (the `ENDPOINT_LIMIT` cap).
    pub endpoints: crate::route::EndpointCap,
}

impl Scratch {
    /// Scratch space with the hash cache enabled.
    pub fn new() -> Self {
        Self {
            signature: Vec::with_capacity(1024),
            cache: HashCache::new(),
            emf: Default::default(),
            endpoints: Default::default(),
        }
    }
}

/// Signatures of one entry and the hashes derived from them, computed with one buffer.
#[derive(Debug, Default)]
pub struct EntryHashes {
    /// `queries_hash`, `None` when there are no query keys.
    pub queries: Option<[u8; 6]>,
    /// Request `body_hash`, `None` when the body is null.
    pub request_body: Option<[u8; 6]>,
    /// Response `body_hash`, `None` when the body is null.
    pub response_body: Option<[u8; 6]>,
    /// `global_hash`, always present.
    pub global: [u8; 6],
}

impl EntryHashes {
    /// Computes all hashes of an entry with one signature buffer (reused between calls) and the
    /// memo. `queries` appends the query map's signature; `has_queries` says whether it has keys.
    pub fn compute(
        queries: impl FnOnce(&mut Vec<u8>),
        has_queries: bool,
        request_body: &Value<'_>,
        response_body: &Value<'_>,
        scratch: &mut Vec<u8>,
        cache: &mut HashCache,
    ) -> Self {
        scratch.clear();
        scratch.extend_from_slice(b"queries:");
        let q = scratch.len();
        queries(scratch);
        let q_end = scratch.len();
        scratch.extend_from_slice(b"|request_body:");
        let rq = scratch.len();
        signature(request_body, scratch);
        let rq_end = scratch.len();
        scratch.extend_from_slice(b"|response_body:");
        let rs = scratch.len();
        signature(response_body, scratch);
        Self {
            queries: has_queries.then(|| cache.hash(&scratch[q..q_end])),
            request_body: (!matches!(request_body, Value::Null))
                .then(|| cache.hash(&scratch[rq..rq_end])),
            response_body: (!matches!(response_body, Value::Null))
                .then(|| cache.hash(&scratch[rs..])),
            global: cache.hash(scratch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::json::parse_first;
    use std::borrow::Cow;

    fn sig_of(json: &str) -> String {
        let parsed = parse_first(json.as_bytes()).expect("valid json");
        let mut out = Vec::new();
        signature(parsed.value(), &mut out);
        String::from_utf8(out).expect("utf8")
    }

    fn h(s: &str) -> String {
        String::from_utf8(short_hash(s.as_bytes()).to_vec()).expect("hex")
    }

    #[test]
    fn spec_table_6_3() {
        let cases: &[(&str, &str, &str)] = &[
            (r#"{"field":"value"}"#, "o{field:v;}", "20e4cb"),
            (r#"{"result":"ok"}"#, "o{result:v;}", "c5b6ee"),
            (r#"{"key":"value"}"#, "o{key:v;}", "c36728"),
            (
                r#"{"user":{"id":1,"name":"alice"}}"#,
                "o{user:o{id:v;name:v;};}",
                "9cb4bd",
            ),
            (
                r#"{"user":{"id":99,"name":"bob"}}"#,
                "o{user:o{id:v;name:v;};}",
                "9cb4bd",
            ),
            (r#"{"user":{"id":1}}"#, "o{user:o{id:v;};}", "c88147"),
            (
                r#"{"alpha":"1","beta":["x","y"]}"#,
                "o{alpha:v;beta:a[v,];}",
                "b51152",
            ),
            (
                r#"{"alpha":"999","beta":["a","b","c"]}"#,
                "o{alpha:v;beta:a[v,];}",
                "b51152",
            ),
            (r#"{"alpha":"1"}"#, "o{alpha:v;}", "56f46a"),
            (r#""any text""#, "v", "4c9448"),
            (r#"[1,"a",{"x":1}]"#, "a[o{x:v;},v,]", "5adda1"),
            ("{}", "o{}", "4a510c"),
            ("[]", "a[]", "1dbfdd"),
            (r#"{"a":null}"#, "o{a:n;}", "a760e4"),
            (
                r#"{"status":{"@code":"200","ok":"true"}}"#,
                "o{status:o{@code:v;ok:v;};}",
                "9074d7",
            ),
        ];
        for (json, want_sig, want_hash) in cases {
            let got = sig_of(json);
            assert_eq!(&got, want_sig, "signature of {json}");
            assert_eq!(&h(&got), want_hash, "hash of {json}");
        }
        // Entry-level signatures of the table.
        assert_eq!(
            h("queries:o{key:v;}|request_body:o{field:v;}|response_body:o{result:v;}"),
            "fe0adb"
        );
        assert_eq!(h("queries:o{}|request_body:n|response_body:n"), "185224");
        assert_eq!(h("queries:o{alpha:v;}|request_body:o{user:o{id:v;name:v;};}|response_body:o{result:v;}"), "b64cb5");
        assert_eq!(
            h("queries:o{beta:v;}|request_body:o{user:o{id:v;};}|response_body:o{result:v;}"),
            "e339a4"
        );
        assert_eq!(
            h("queries:o{}|request_body:n|response_body:o{status:v;}"),
            "dd8174"
        );
        assert_eq!(h("queries:o{}|request_body:n|response_body:v"), "05a213");
        // A self-referencing map cannot be built from parsed input (Rust values own their
        // children); the Go signature for it is pinned here for completeness.
        assert_eq!(h("o{self:c;}"), "81f3c3");
    }

    #[test]
    fn depth_cap_marks_x() {
        let json = "{\"child\":".repeat(36) + "{}" + &"}".repeat(36);
        let sig = sig_of(&json);
        assert_eq!(sig, "o{child:".repeat(32) + "x" + &";}".repeat(32));
        assert_eq!(h(&sig), "04fd67");
    }

    #[test]
    fn array_children_deduplicated_and_sorted() {
        assert_eq!(sig_of("[null,1,null,\"a\"]"), "a[n,v,]");
        assert_eq!(
            sig_of(r#"[{"b":1},[],{"a":1},{"b":2}]"#),
            "a[a[],o{a:v;},o{b:v;},]"
        );
        assert_eq!(sig_of("[[1],[2,3],[]]"), "a[a[],a[v,],]");
    }

    #[test]
    fn entry_hashes_reuse_one_buffer() {
        let q = Value::Object(vec![(
            Cow::Borrowed(&b"key"[..]),
            Value::Str(Cow::Borrowed(&b"value"[..])),
        )]);
        let req = parse_first(br#"{"field":"value"}"#).expect("json");
        let resp = parse_first(br#"{"result":"ok"}"#).expect("json");
        let mut scratch = Vec::new();
        let mut cache = HashCache::disabled();
        let hashes = EntryHashes::compute(
            |out| signature(&q, out),
            true,
            req.value(),
            resp.value(),
            &mut scratch,
            &mut cache,
        );
        assert_eq!(&hashes.global, b"fe0adb");
        assert_eq!(hashes.queries.as_ref(), Some(b"c36728"));
        assert_eq!(hashes.request_body.as_ref(), Some(b"20e4cb"));
        assert_eq!(hashes.response_body.as_ref(), Some(b"c5b6ee"));
        let empty = Value::Object(Vec::new());
        let none = EntryHashes::compute(
            |out| signature(&empty, out),
            false,
            &Value::Null,
            &Value::Null,
            &mut scratch,
            &mut cache,
        );
        assert_eq!(&none.global, b"185224");
        assert!(
            none.queries.is_none() && none.request_body.is_none() && none.response_body.is_none()
        );
    }
}
