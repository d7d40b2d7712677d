//! Responses written as chunks over a real loopback socket: the bytes arrive in order and
//! whole, file regions go through sendfile (counted) or, with the switch off, a copy.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use sluice_protocol::{Chunk, ChunkWriter, FileChunk, WriteStats};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_arrive_in_order_by_sendfile_or_copy() {
    let mut file = tempfile::tempfile().unwrap();
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    file.write_all(&content).unwrap();
    let file = Arc::new(file);
    let region = FileChunk {
        file: Arc::clone(&file),
        position: 1234,
        length: 2_500_000,
    };
    let chunks = vec![
        Chunk::Bytes(Bytes::from_static(b"head")),
        Chunk::File(region.clone()),
        Chunk::Bytes(Bytes::from_static(b"tail")),
    ];
    let mut expected = b"head".to_vec();
    expected.extend_from_slice(&content[1234..1234 + 2_500_000]);
    expected.extend_from_slice(b"tail");

    for use_sendfile in [true, false] {
        let (mut writer, mut reader) = pair().await;
        let stats = WriteStats::default();
        let len = expected.len();
        let read = tokio::spawn(async move {
            let mut got = vec![0u8; len];
            reader.read_exact(&mut got).await.unwrap();
            got
        });
        ChunkWriter::new(use_sendfile)
            .write(&mut writer, &chunks, &stats)
            .await
            .unwrap();
        assert!(read.await.unwrap() == expected, "sendfile={use_sendfile}");
        assert_eq!(stats.bytes_written.load(Ordering::Relaxed), len as u64);
        if use_sendfile {
            assert_eq!(stats.sendfile_bytes.load(Ordering::Relaxed), 2_500_000);
            assert!(stats.sendfile_calls.load(Ordering::Relaxed) >= 1);
            assert_eq!(stats.copied_file_bytes.load(Ordering::Relaxed), 0);
        } else {
            assert_eq!(stats.sendfile_bytes.load(Ordering::Relaxed), 0);
            assert_eq!(stats.copied_file_bytes.load(Ordering::Relaxed), 2_500_000);
        }
    }
}

#[tokio::test]
async fn a_region_past_the_end_of_the_file_is_an_error() {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(b"short").unwrap();
    let chunk = Chunk::File(FileChunk {
        file: Arc::new(file),
        position: 2,
        length: 100,
    });
    for use_sendfile in [true, false] {
        let (mut writer, _reader) = pair().await;
        let stats = WriteStats::default();
        assert!(ChunkWriter::new(use_sendfile)
            .write(&mut writer, std::slice::from_ref(&chunk), &stats)
            .await
            .is_err());
    }
}
