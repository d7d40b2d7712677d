//! Responses as chunks: encoded bytes, and file regions that go from the page cache to the
//! socket with `sendfile(2)` — a Fetch response's record sets never pass through user
//! space. With `use_sendfile = false` (for transports that need the bytes, like TLS) file
//! regions are copied through one buffer per connection instead ([`ChunkWriter`]).
//!
//! Invariant: the bytes on the wire are exactly the chunks in order; a file chunk is sent
//! whole or the write fails (a short file is an error, not a short response).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ResponseHeader;
use kafka_protocol::protocol::Encodable;
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

/// Where a [`ChunkWriter`] writes: a TCP stream, or its write half (the other half reading
/// requests meanwhile). Bytes go through `AsyncWrite`, file regions by sendfile on the socket.
pub trait ResponseStream: AsyncWrite + Unpin {
    fn socket(&self) -> &TcpStream;
}

impl ResponseStream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl ResponseStream for OwnedWriteHalf {
    fn socket(&self) -> &TcpStream {
        self.as_ref()
    }
}

/// A byte range of an open file.
#[derive(Debug, Clone)]
pub struct FileChunk {
    pub file: Arc<File>,
    pub position: u64,
    pub length: u64,
}

#[derive(Debug, Clone)]
pub enum Chunk {
    Bytes(Bytes),
    File(FileChunk),
}

impl Chunk {
    pub fn len(&self) -> u64 {
        match self {
            Chunk::Bytes(b) => b.len() as u64,
            Chunk::File(f) => f.length,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters the connection writer bumps: how many bytes went out, and by which path.
#[derive(Debug, Default)]
pub struct WriteStats {
    pub bytes_written: AtomicU64,
    pub sendfile_bytes: AtomicU64,
    pub sendfile_calls: AtomicU64,
    pub copied_file_bytes: AtomicU64,
}

/// Encodes `[size][response header][body]` for a response with no file chunks.
pub fn encode_response<T: Encodable>(
    correlation_id: i32,
    header_version: i16,
    body: &T,
    api_version: i16,
) -> std::io::Result<Bytes> {
    // the crate's encode errors carry only a message
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_size = header
        .compute_size(header_version)
        .map_err(|e| invalid(e.to_string()))?;
    let body_size = body
        .compute_size(api_version)
        .map_err(|e| invalid(e.to_string()))?;
    let mut out = BytesMut::with_capacity(4 + header_size + body_size);
    out.put_i32((header_size + body_size) as i32);
    header
        .encode(&mut out, header_version)
        .map_err(|e| invalid(e.to_string()))?;
    body.encode(&mut out, api_version)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(out.freeze())
}

const COPY_BUFFER_BYTES: usize = 1024 * 1024;

/// Writes responses to one connection. The copy buffer (used only with sendfile off) is
/// allocated once per connection, on first need, and reused for every response after.
#[derive(Debug)]
pub struct ChunkWriter {
    use_sendfile: bool,
    copy_buffer: Vec<u8>,
}

impl ChunkWriter {
    pub fn new(use_sendfile: bool) -> Self {
        ChunkWriter {
            use_sendfile,
            copy_buffer: Vec::new(),
        }
    }

    /// Writes `chunks` in order to `stream`.
    pub async fn write(
        &mut self,
        stream: &mut impl ResponseStream,
        chunks: &[Chunk],
        stats: &WriteStats,
    ) -> std::io::Result<()> {
        for chunk in chunks {
            match chunk {
                Chunk::Bytes(b) => stream.write_all(b).await?,
                Chunk::File(f) if self.use_sendfile => {
                    sendfile_all(stream.socket(), f, stats).await?
                }
                Chunk::File(f) => {
                    if self.copy_buffer.is_empty() {
                        self.copy_buffer = vec![0u8; COPY_BUFFER_BYTES];
                    }
                    let buffer = &mut self.copy_buffer;
                    let mut position = f.position;
                    let end = f.position + f.length;
                    while position < end {
                        let n = ((end - position) as usize).min(buffer.len());
                        f.file.read_exact_at(&mut buffer[..n], position)?;
                        stream.write_all(&buffer[..n]).await?;
                        position += n as u64;
                    }
                    stats
                        .copied_file_bytes
                        .fetch_add(f.length, Ordering::Relaxed);
                }
            }
            stats
                .bytes_written
                .fetch_add(chunk.len(), Ordering::Relaxed);
        }
        Ok(())
    }
}

async fn sendfile_all(
    stream: &TcpStream,
    f: &FileChunk,
    stats: &WriteStats,
) -> std::io::Result<()> {
    let mut offset = f.position as i64;
    let end = (f.position + f.length) as i64;
    while offset < end {
        let count = (end - offset) as usize;
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(
                    stream.as_fd(),
                    f.file.as_fd(),
                    Some(&mut offset),
                    count,
                )
                .map_err(std::io::Error::from)
            })
            .await?;
        stats.sendfile_calls.fetch_add(1, Ordering::Relaxed);
        if sent == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file region is past the end of the file",
            ));
        }
        stats
            .sendfile_bytes
            .fetch_add(sent as u64, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use kafka_protocol::messages::ApiVersionsResponse;
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn encoded_responses_decode_back() {
        let body = ApiVersionsResponse::default()
            .with_error_code(35)
            .with_throttle_time_ms(0);
        for (header_version, api_version) in [(0, 0), (0, 3), (1, 3)] {
            let mut bytes = encode_response(77, header_version, &body, api_version).unwrap();
            let size = bytes.get_i32() as usize;
            assert_eq!(size, bytes.len());
            let header = ResponseHeader::decode(&mut bytes, header_version).unwrap();
            assert_eq!(header.correlation_id, 77);
            let decoded = ApiVersionsResponse::decode(&mut bytes, api_version).unwrap();
            assert_eq!(decoded.error_code, 35);
            assert!(bytes.is_empty());
        }
    }
}
