//! The five codecs Kafka batches use: none, gzip, snappy, lz4 (frame) and zstd.
//!
//! The broker never calls these on the produce path (batches are stored as sent); they
//! are for clients, tools and the rare server paths that must look inside a compressed
//! batch (ListOffsets by timestamp). Decompression is bounded by
//! [`crate::limits::MAX_DECOMPRESSED_BYTES`].
//!
//! Snappy: Java clients write xerial-framed snappy (`\x82SNAPPY\0` + 4-byte version +
//! 4-byte compatible version, then blocks of 4-byte length + raw snappy), librdkafka writes
//! a raw snappy block. Both are read; xerial framing is written, as Java does.

use std::borrow::Cow;
use std::io::{Read, Write};

use crate::limits::MAX_DECOMPRESSED_BYTES;
use crate::RecordError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The codec id in the low three bits of a batch's attributes.
    pub fn from_id(id: u8) -> Result<Compression, RecordError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(RecordError::UnknownCompression(other)),
        })
    }

    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// Kafka's name for the codec (`compression.type`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, RecordError> {
        let fail = |e: std::io::Error| RecordError::Compression {
            codec: self.name(),
            message: e.to_string(),
        };
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(data).map_err(fail)?;
                enc.finish().map_err(fail)
            }
            Compression::Snappy => {
                let mut out = Vec::with_capacity(XERIAL_HEADER_BYTES + data.len() / 2);
                out.extend_from_slice(XERIAL_MAGIC);
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                let mut encoder = snap::raw::Encoder::new();
                for block in data.chunks(XERIAL_BLOCK_BYTES) {
                    let compressed =
                        encoder
                            .compress_vec(block)
                            .map_err(|e| RecordError::Compression {
                                codec: "snappy",
                                message: e.to_string(),
                            })?;
                    out.extend_from_slice(&(compressed.len() as i32).to_be_bytes());
                    out.extend_from_slice(&compressed);
                }
                Ok(out)
            }
            Compression::Lz4 => {
                let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
                enc.write_all(data).map_err(fail)?;
                enc.finish().map_err(|e| RecordError::Compression {
                    codec: "lz4",
                    message: e.to_string(),
                })
            }
            Compression::Zstd => zstd::bulk::compress(data, 1).map_err(fail),
        }
    }

    /// Decompresses `data`; borrows it unchanged for [`Compression::None`].
    pub fn decompress(self, data: &[u8]) -> Result<Cow<'_, [u8]>, RecordError> {
        match self {
            Compression::None => Ok(Cow::Borrowed(data)),
            Compression::Gzip => read_bounded(self, flate2::read::MultiGzDecoder::new(data)),
            Compression::Snappy => decompress_snappy(data).map(Cow::Owned),
            Compression::Lz4 => read_bounded(self, lz4_flex::frame::FrameDecoder::new(data)),
            Compression::Zstd => {
                let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| {
                    RecordError::Decompression {
                        codec: "zstd",
                        message: e.to_string(),
                    }
                })?;
                read_bounded(self, decoder)
            }
        }
    }
}

fn read_bounded(codec: Compression, reader: impl Read) -> Result<Cow<'static, [u8]>, RecordError> {
    let mut out = Vec::new();
    reader
        .take(MAX_DECOMPRESSED_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RecordError::Decompression {
            codec: codec.name(),
            message: e.to_string(),
        })?;
    if out.len() > MAX_DECOMPRESSED_BYTES {
        return Err(RecordError::DecompressedTooLarge {
            limit: MAX_DECOMPRESSED_BYTES,
        });
    }
    Ok(Cow::Owned(out))
}

fn decompress_snappy(data: &[u8]) -> Result<Vec<u8>, RecordError> {
    let corrupt = |message: String| RecordError::Decompression {
        codec: "snappy",
        message,
    };
    let mut decoder = snap::raw::Decoder::new();
    let mut raw_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), RecordError> {
        let len = snap::raw::decompress_len(block).map_err(|e| corrupt(e.to_string()))?;
        if out.len() + len > MAX_DECOMPRESSED_BYTES {
            return Err(RecordError::DecompressedTooLarge {
                limit: MAX_DECOMPRESSED_BYTES,
            });
        }
        let start = out.len();
        out.resize(start + len, 0);
        decoder
            .decompress(block, &mut out[start..])
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(())
    };
    let mut out = Vec::new();
    if data.len() >= XERIAL_HEADER_BYTES && data.starts_with(XERIAL_MAGIC) {
        let mut rest = &data[XERIAL_HEADER_BYTES..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(corrupt("truncated xerial block length".into()));
            }
            let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let len = usize::try_from(len).map_err(|_| corrupt("negative block length".into()))?;
            let block = rest
                .get(4..4 + len)
                .ok_or_else(|| corrupt("xerial block runs past the end".into()))?;
            raw_block(block, &mut out)?;
            rest = &rest[4 + len..];
        }
    } else {
        raw_block(data, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in Compression::ALL {
            let compressed = codec.compress(&data).unwrap();
            assert_eq!(
                codec.decompress(&compressed).unwrap().as_ref(),
                &data[..],
                "{codec:?}"
            );
            assert_eq!(Compression::from_id(codec.id()), Ok(codec));
            assert_eq!(Compression::from_name(codec.name()), Some(codec));
        }
        assert_eq!(
            Compression::from_id(5),
            Err(RecordError::UnknownCompression(5))
        );
    }

    #[test]
    fn reads_raw_snappy_as_librdkafka_writes_it() {
        let data = b"hello hello hello hello snappy".repeat(100);
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(
            Compression::Snappy.decompress(&raw).unwrap().as_ref(),
            &data[..]
        );
    }

    #[test]
    fn garbage_fails_cleanly() {
        let garbage = [0x82u8, b'S', 1, 2, 3, 0xff, 0xff, 0xff, 0xff, 9, 9];
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            assert!(codec.decompress(&garbage).is_err(), "{codec:?}");
        }
    }

    #[test]
    fn decompression_is_bounded() {
        let zeros = vec![0u8; MAX_DECOMPRESSED_BYTES + 1];
        let bomb = Compression::Zstd.compress(&zeros).unwrap();
        assert_eq!(
            Compression::Zstd.decompress(&bomb).unwrap_err(),
            RecordError::DecompressedTooLarge {
                limit: MAX_DECOMPRESSED_BYTES
            }
        );
    }
}
