//! Files for the upload figures and drills: a large file of bytes that do not compress, with
//! its SHA-256, and what the same bytes cost without us (a raw transfer, a raw `clamdscan`).

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `len` pseudo-random bytes (they do not compress, like most uploads) to `path`;
/// returns their SHA-256 (hex).
pub fn random_file(path: &Path, len: usize, seed: u64) -> std::io::Result<String> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hash = Sha256::new();
    let mut state = seed | 1;
    let mut block = vec![0u8; 1024 * 1024];
    let mut left = len;
    while left > 0 {
        for byte in block.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let take = left.min(block.len());
        file.write_all(&block[..take])?;
        hash.update(&block[..take]);
        left -= take;
    }
    file.flush()?;
    Ok(hex::encode(hash.finalize()))
}

/// The SHA-256 (hex) of a stream of bytes.
pub async fn sha256_of(mut bytes: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin) -> anyhow::Result<String> {
    use futures::StreamExt;
    let mut hash = Sha256::new();
    while let Some(chunk) = bytes.next().await {
        hash.update(chunk?);
    }
    Ok(hex::encode(hash.finalize()))
}

/// The raw transfer: the file sent over a loopback TCP connection to a reader that writes it
/// to disk and syncs it, as any upload must at least do.
pub async fn raw_transfer(path: &Path, sink_dir: &Path) -> anyhow::Result<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let target = sink_dir.join("raw-transfer.bin");
    let t0 = Instant::now();
    let receiver = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut file = tokio::fs::File::create(&target).await?;
        let mut buffer = vec![0u8; 1024 * 1024];
        loop {
            let n = socket.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n]).await?;
        }
        file.sync_all().await?;
        tokio::fs::remove_file(&target).await?;
        anyhow::Ok(())
    });
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let mut file = tokio::fs::File::open(path).await?;
    tokio::io::copy(&mut file, &mut socket).await?;
    socket.shutdown().await?;
    receiver.await??;
    Ok(t0.elapsed())
}

/// A raw `clamdscan --stream` of the file against the same clamd (`host:port`).
pub async fn raw_clamdscan(path: &Path, clamd_address: &str, config_dir: &Path) -> anyhow::Result<Duration> {
    let (host, port) = clamd_address.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("clamd address {clamd_address} is not host:port"))?;
    let config = config_dir.join("clamdscan.conf");
    std::fs::write(&config, format!("TCPSocket {port}\nTCPAddr {host}\n"))?;
    let t0 = Instant::now();
    let output = tokio::process::Command::new("clamdscan")
        .arg(format!("--config-file={}", config.display()))
        .args(["--stream", "--no-summary"])
        .arg(path)
        .output()
        .await?;
    let took = t0.elapsed();
    anyhow::ensure!(output.status.success(), "clamdscan: {}", String::from_utf8_lossy(&output.stdout));
    Ok(took)
}
