//! proxygw's ctl packets: `PacketReader::next` over JSON lines and CBOR sequences, served by a
//! reader that returns 1 to 16 321 bytes per read (the first two input bytes pick the codec and
//! the read size), then every body type the ctl server decodes. Errors, never panics.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../crates/proxygw/src/config.rs"]
mod config;
#[allow(dead_code, unused_imports)]
#[path = "../../crates/proxygw/src/protocol.rs"]
mod protocol;

use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use protocol::{Codec, EmptyBody, ErrorBody, NameBody, PacketReader, StatusResponse};
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out `data` at most `step` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let [pick, step, rest @ ..] = data else {
        return;
    };
    let codec = if pick & 1 == 0 {
        Codec::Json
    } else {
        Codec::Cbor
    };
    let step = 1 + usize::from(*step) * 64;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut reader = PacketReader::new(Chunked { data: rest, step }, codec);
        while let Ok(Some(packet)) = reader.next().await {
            let _ = packet.body::<EmptyBody>();
            let _ = packet.body::<NameBody>();
            let _ = packet.body::<ErrorBody>();
            let _ = packet.body::<StatusResponse>();
        }
    });
});
