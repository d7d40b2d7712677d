//! Size-prefixed frames: a big-endian `i32` length, then that many bytes.
//!
//! The length is checked against the limit before a byte of the body is allocated, so a
//! client claiming 2 GiB costs nothing; a bad frame is an error that ends the connection
//! (Kafka closes it too), never a panic.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame size {size} is negative")]
    NegativeSize { size: i32 },
    #[error("frame of {size} bytes exceeds socket.request.max.bytes ({max_bytes})")]
    TooLarge { size: usize, max_bytes: usize },
    #[error("connection closed inside a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame. `Ok(None)` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_bytes: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut size_bytes = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(&mut size_bytes[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated { got, expected: 4 })
            };
        }
        got += n;
    }
    let size = i32::from_be_bytes(size_bytes);
    if size < 0 {
        return Err(FrameError::NegativeSize { size });
    }
    let size = size as usize;
    if size > max_bytes {
        return Err(FrameError::TooLarge { size, max_bytes });
    }
    match read_exactly(reader, size).await? {
        Ok(body) => Ok(Some(body.freeze())),
        Err(got) => Err(FrameError::Truncated {
            got,
            expected: size,
        }),
    }
}

/// Reads exactly `size` bytes into a fresh buffer, straight into the allocation (no
/// zero-filling first: that cost as much CPU as the copy itself on every request and
/// every follower fetch). `Err(got)` if the stream ended after `got` bytes.
pub(crate) async fn read_exactly<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
) -> std::io::Result<Result<BytesMut, usize>> {
    let mut body = BytesMut::with_capacity(size);
    while body.len() < size {
        let want = (size - body.len()) as u64;
        if (&mut *reader).take(want).read_buf(&mut body).await? == 0 {
            return Ok(Err(body.len()));
        }
    }
    Ok(Ok(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8], max: usize) -> Result<Option<Bytes>, FrameError> {
        let mut r = bytes;
        read_frame(&mut r, max).await
    }

    #[tokio::test]
    async fn frames_and_their_failures() {
        let mut two = Vec::new();
        two.extend_from_slice(&3i32.to_be_bytes());
        two.extend_from_slice(b"abc");
        two.extend_from_slice(&0i32.to_be_bytes());
        let mut r = &two[..];
        assert_eq!(read_frame(&mut r, 10).await.unwrap().unwrap(), &b"abc"[..]);
        assert_eq!(read_frame(&mut r, 10).await.unwrap().unwrap().len(), 0);
        assert!(read_frame(&mut r, 10).await.unwrap().is_none());

        assert!(matches!(
            read(&[0, 0], 10).await,
            Err(FrameError::Truncated {
                got: 2,
                expected: 4
            })
        ));
        assert!(matches!(
            read(&[0, 0, 0, 5, 1], 10).await,
            Err(FrameError::Truncated {
                got: 1,
                expected: 5
            })
        ));
        assert!(matches!(
            read(&(-1i32).to_be_bytes(), 10).await,
            Err(FrameError::NegativeSize { size: -1 })
        ));
        // 2 GiB claimed: refused before allocating
        let huge = i32::MAX.to_be_bytes();
        assert!(matches!(
            read(&huge, 100 << 20).await,
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            read(&11i32.to_be_bytes(), 10).await,
            Err(FrameError::TooLarge {
                size: 11,
                max_bytes: 10
            })
        ));
    }
}
