//! proxyview's head blocks as the agent (request) and the server (response) read them in place:
//! a block that parses re-encodes to one that parses to the same method, path, status and
//! fields (request names lowercased, as the encoder writes them).
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../crates/proxyview/src/protocol.rs"]
mod protocol;

use libfuzzer_sys::fuzz_target;
use protocol::{encode_request_head, encode_response_head, RawRequestHead, RawResponseHead};

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn owned<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>, lower: bool) -> Fields {
    fields
        .map(|(n, v)| {
            let mut n = n.to_vec();
            if lower {
                n.make_ascii_lowercase();
            }
            (n, v.to_vec())
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = RawRequestHead::parse(data) {
        let fields = owned(head.fields(), true);
        if let (Ok(method), Ok(path)) = (
            std::str::from_utf8(head.method),
            std::str::from_utf8(head.path),
        ) {
            let block = encode_request_head(
                method,
                path,
                fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
            );
            let again = RawRequestHead::parse(&block).expect("re-encoded request head parses");
            assert_eq!(again.method, head.method);
            assert_eq!(again.path, head.path);
            assert_eq!(owned(again.fields(), false), fields);
        }
    }
    if let Ok(head) = RawResponseHead::parse(data) {
        let fields = owned(head.fields(), false);
        let block = encode_response_head(
            head.status,
            fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        let again = RawResponseHead::parse(&block).expect("re-encoded response head parses");
        assert_eq!(again.status, head.status);
        assert_eq!(owned(again.fields(), false), fields);
    }
});
