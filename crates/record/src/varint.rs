//! Zig-zag varints (protobuf style) as RecordBatch v2 records use them.
//! Decoding never reads past the slice and rejects over-long encodings.

use crate::RecordError;

/// Decodes a zig-zag varint of at most 5 bytes; returns the value and the bytes used.
pub fn read_varint(buf: &[u8]) -> Result<(i32, usize), RecordError> {
    let (raw, used) = read_unsigned(buf, 5)?;
    let raw = u32::try_from(raw).map_err(|_| RecordError::CorruptRecord("varint overflow"))?;
    Ok((((raw >> 1) as i32) ^ -((raw & 1) as i32), used))
}

/// Decodes a zig-zag varlong of at most 10 bytes; returns the value and the bytes used.
pub fn read_varlong(buf: &[u8]) -> Result<(i64, usize), RecordError> {
    let (raw, used) = read_unsigned(buf, 10)?;
    Ok((((raw >> 1) as i64) ^ -((raw & 1) as i64), used))
}

fn read_unsigned(buf: &[u8], max_bytes: usize) -> Result<(u64, usize), RecordError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(max_bytes).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() < max_bytes {
        Err(RecordError::CorruptRecord("varint runs past the end"))
    } else {
        Err(RecordError::CorruptRecord("varint too long"))
    }
}

pub fn write_varint(out: &mut Vec<u8>, value: i32) {
    write_unsigned(out, ((value << 1) ^ (value >> 31)) as u32 as u64);
}

pub fn write_varlong(out: &mut Vec<u8>, value: i64) {
    write_unsigned(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn write_unsigned(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn varlong_size(value: i64) -> usize {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub fn varint_size(value: i32) -> usize {
    let mut v = ((value << 1) ^ (value >> 31)) as u32;
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edge_values() {
        for v in [0, 1, -1, 63, -64, 64, i32::MAX, i32::MIN] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(out.len(), varint_size(v));
            assert_eq!(read_varint(&out), Ok((v, out.len())));
        }
        for v in [0i64, -1, i64::MAX, i64::MIN, 1 << 40] {
            let mut out = Vec::new();
            write_varlong(&mut out, v);
            assert_eq!(out.len(), varlong_size(v));
            assert_eq!(read_varlong(&out), Ok((v, out.len())));
        }
    }

    #[test]
    fn rejects_truncated_and_overlong() {
        assert!(read_varint(&[0x80]).is_err());
        assert!(read_varint(&[]).is_err());
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
        assert!(read_varlong(&[0xff; 11]).is_err());
    }
}
