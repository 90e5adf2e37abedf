//! proxyview's tunnel frames, decoded in a loop over the stream as the session reads them:
//! each frame re-encodes to bytes that decode to the same frame, and head blocks go through
//! the head parsers.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../crates/proxyview/src/protocol.rs"]
mod protocol;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use protocol::{Frame, RawRequestHead, RawResponseHead};

fuzz_target!(|data: &[u8]| {
    let mut buf = Bytes::copy_from_slice(data);
    while let Ok(Some(frame)) = Frame::decode(&mut buf) {
        let mut wire = BytesMut::new();
        frame.encode(&mut wire);
        let mut wire = wire.freeze();
        let again = Frame::decode(&mut wire).expect("re-encoded frame decodes");
        assert_eq!(again.as_ref(), Some(&frame));
        assert!(wire.is_empty(), "re-encoded frame left bytes");
        if let Frame::Head { block, .. } = &frame {
            let _ = RawRequestHead::parse(block);
            let _ = RawResponseHead::parse(block);
        }
    }
});
