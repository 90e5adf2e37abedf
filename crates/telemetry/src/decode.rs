//! Decoding of `Content-Encoding` gzip, deflate, br and zstd bodies for logging only: the bytes
//! forwarded are never touched, this works on the captured copy.
//!
//! Output is bounded twice: at most `limit` bytes (the capture limit) and at most
//! [`MAX_RATIO`] times the compressed input, so a decompression bomb costs bounded memory and
//! CPU. A stream that exceeds the ratio, is corrupt, or uses an unknown or stacked encoding is
//! not decoded (the caller logs the captured bytes as they are). All decoders are pure Rust.

use std::io::Read;

/// Most output bytes per input byte before a stream is treated as a bomb and not decoded.
/// Text and JSON compress about 3–20×; highly repetitive payloads reach a few hundred.
pub const MAX_RATIO: usize = 200;

/// Output bytes decoded at least, whatever the ratio (tiny inputs of valid data may expand a
/// lot, e.g. a 20-byte gzip of a 2 KiB repeated string).
const MIN_BUDGET: usize = 64 << 10;

/// A decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The decoded bytes (at most the limit).
    pub bytes: Vec<u8>,
    /// True when output was cut at the limit, or the compressed capture itself was cut.
    pub truncated: bool,
}

/// The supported encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `gzip`, `x-gzip`.
    Gzip,
    /// `deflate` (zlib-wrapped, as RFC 9110 says; raw deflate is accepted too).
    Deflate,
    /// `br`.
    Brotli,
    /// `zstd`.
    Zstd,
}

impl Encoding {
    /// The encoding named by a `Content-Encoding` value; `None` for identity, unknown or
    /// stacked encodings.
    pub fn from_header(value: &[u8]) -> Option<Self> {
        let v = trim(value);
        Some(match v {
            _ if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") => {
                Encoding::Gzip
            }
            _ if v.eq_ignore_ascii_case(b"deflate") => Encoding::Deflate,
            _ if v.eq_ignore_ascii_case(b"br") => Encoding::Brotli,
            _ if v.eq_ignore_ascii_case(b"zstd") => Encoding::Zstd,
            _ => return None,
        })
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Decodes `input` (the captured, possibly `input_truncated`, compressed body). `None` when the
/// stream is corrupt, expands more than [`MAX_RATIO`], or yields nothing.
pub fn decode(
    encoding: Encoding,
    input: &[u8],
    input_truncated: bool,
    limit: usize,
) -> Option<Decoded> {
    if input.is_empty() {
        return None;
    }
    let ratio_budget = input.len().saturating_mul(MAX_RATIO).max(MIN_BUDGET);
    let budget = limit.min(ratio_budget);
    let result = match encoding {
        Encoding::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(input), budget),
        Encoding::Deflate => {
            let zlib = read_bounded(flate2::read::ZlibDecoder::new(input), budget);
            if zlib.is_err() {
                read_bounded(flate2::read::DeflateDecoder::new(input), budget)
            } else {
                zlib
            }
        }
        Encoding::Brotli => {
            read_bounded(brotli_decompressor::Decompressor::new(input, 4096), budget)
        }
        Encoding::Zstd => match ruzstd::decoding::StreamingDecoder::new(input) {
            Ok(d) => read_bounded(d, budget),
            Err(_) => Err(Vec::new()),
        },
    };
    let (bytes, more) = match result {
        Ok(ok) => ok,
        // A cut capture ends mid-stream: what decoded before the cut is still worth logging.
        Err(partial) if input_truncated && !partial.is_empty() => (partial, false),
        Err(_) => return None,
    };
    if more && budget < limit {
        // Stopped by the ratio, not the limit: a bomb.
        return None;
    }
    if bytes.is_empty() {
        return None;
    }
    Some(Decoded {
        bytes,
        truncated: more || input_truncated,
    })
}

/// Reads at most `budget` bytes; `Ok((bytes, more))` where `more` says output continued past the
/// budget, `Err(partial)` on a stream error.
fn read_bounded(mut r: impl Read, budget: usize) -> Result<(Vec<u8>, bool), Vec<u8>> {
    let mut out = Vec::with_capacity(budget.min(16 << 10));
    let mut chunk = [0u8; 8192];
    loop {
        let room = budget - out.len();
        let want = chunk.len().min(room + 1);
        match r.read(&mut chunk[..want]) {
            Ok(0) => return Ok((out, false)),
            Ok(n) => {
                if n > room {
                    out.extend_from_slice(&chunk[..room]);
                    return Ok((out, true));
                }
                out.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    #[test]
    fn gzip_deflate_zstd_round_trip() {
        let body = br#"{"hello":"world","n":[1,2,3]}"#;
        let g = decode(Encoding::Gzip, &gzip(body), false, 1 << 16).expect("gzip");
        assert_eq!(g.bytes, body);
        assert!(!g.truncated);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(body).expect("write");
        let z = z.finish().expect("finish");
        assert_eq!(
            decode(Encoding::Deflate, &z, false, 1 << 16)
                .expect("zlib")
                .bytes,
            body
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(body).expect("write");
        let raw = raw.finish().expect("finish");
        assert_eq!(
            decode(Encoding::Deflate, &raw, false, 1 << 16)
                .expect("raw")
                .bytes,
            body
        );
        let zs = ruzstd::encoding::compress_to_vec(
            &body[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(
            decode(Encoding::Zstd, &zs, false, 1 << 16)
                .expect("zstd")
                .bytes,
            body
        );
    }

    #[test]
    fn limit_ratio_corrupt_and_cut() {
        let big = vec![b'a'; 1 << 20];
        let g = gzip(&big);
        // Within the ratio, cut at the limit.
        let d = decode(Encoding::Gzip, &g, false, 1000).expect("decoded");
        assert_eq!(d.bytes.len(), 1000);
        assert!(d.truncated);
        // 1 MiB of one byte compresses ~1000×: beyond the ratio once the limit allows it.
        assert!(g.len() * MAX_RATIO < big.len());
        assert_eq!(decode(Encoding::Gzip, &g, false, 1 << 20), None);
        // Corrupt.
        let mut bad = gzip(b"some text that is long enough to matter");
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        bad[n / 2 + 1] ^= 0xff;
        assert_eq!(decode(Encoding::Gzip, &bad, false, 1 << 16), None);
        assert_eq!(
            decode(Encoding::Gzip, b"\x1f\x8bnot gzip at all", false, 1 << 16),
            None
        );
        assert_eq!(
            decode(Encoding::Brotli, b"\xff\xff\xff\xff", false, 1 << 16),
            None
        );
        assert_eq!(decode(Encoding::Zstd, b"nope", false, 1 << 16), None);
        // A capture cut mid-stream: the decoded prefix, marked truncated.
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| i.to_string().into_bytes())
            .collect();
        let g = gzip(&text);
        let d = decode(Encoding::Gzip, &g[..g.len() / 2], true, 1 << 20).expect("prefix");
        assert!(d.truncated);
        assert!(text.starts_with(&d.bytes));
    }

    #[test]
    fn header_names() {
        assert_eq!(Encoding::from_header(b" GZIP "), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_header(b"x-gzip"), Some(Encoding::Gzip));
        assert_eq!(Encoding::from_header(b"br"), Some(Encoding::Brotli));
        assert_eq!(Encoding::from_header(b"gzip, br"), None);
        assert_eq!(Encoding::from_header(b"identity"), None);
    }
}
