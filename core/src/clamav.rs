//! ClamAV's clamd over TCP: `zINSTREAM`, the stream scan. INSTREAM sends the file
//! as chunks, each prefixed by its length (4 bytes, big-endian), ended by a zero length; clamd
//! then answers `stream: OK`, `stream: <signature> FOUND`, or `… ERROR`. A stream longer than
//! clamd's `StreamMaxLength` is cut off with `INSTREAM size limit exceeded. ERROR`: that file
//! was not scanned, so it is never reported clean.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What clamd said about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// The signature it matched.
    Infected(String),
    /// Beyond what clamd scans (its stream or file limits): not scanned, so not clean.
    TooLarge,
}

impl Verdict {
    /// What a quarantined file's `verdict` says for a file too large to scan.
    pub const TOO_LARGE: &'static str = "too large to scan";
}

#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    /// Could not connect, or the connection broke: clamd is down or restarting. Worth retrying.
    #[error("clamd at {address} is unreachable: {reason}")]
    Unreachable { address: String, reason: String },
    /// clamd answered, with an error about this stream or something we do not understand.
    #[error("clamd answered {0:?}")]
    Refused(String),
}

/// A clamd server.
#[derive(Debug, Clone)]
pub struct Clamd {
    address: String,
    /// Connecting and each write; the verdict may take longer (see [`Scan::finish`]).
    io_timeout: Duration,
}

/// The longest wait for the verdict once the whole stream is sent: clamd scans a large
/// archive for a while.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(600);

impl Clamd {
    pub fn new(address: impl Into<String>) -> Self {
        Self { address: address.into(), io_timeout: Duration::from_secs(10) }
    }

    /// Starts an INSTREAM scan: send the file with [`Scan::send`], then [`Scan::finish`].
    pub async fn scan(&self) -> Result<Scan<'_>, ClamdError> {
        let mut stream = self.connect().await?;
        self.io(stream.write_all(b"zINSTREAM\0")).await?;
        Ok(Scan { clamd: self, stream, cut_off: false })
    }

    /// Whether clamd answers `PING` with `PONG` (readiness).
    pub async fn ping(&self) -> Result<(), ClamdError> {
        let mut stream = self.connect().await?;
        self.io(stream.write_all(b"zPING\0")).await?;
        match self.reply(&mut stream, self.io_timeout).await?.as_str() {
            "PONG" => Ok(()),
            other => Err(self.unreachable(format!("answered PING with {other:?}"))),
        }
    }

    async fn connect(&self) -> Result<TcpStream, ClamdError> {
        let stream = self.io(TcpStream::connect(&self.address)).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Runs an I/O step within the timeout; a failure means clamd is unreachable.
    async fn io<T>(&self, step: impl Future<Output = std::io::Result<T>>) -> Result<T, ClamdError> {
        match tokio::time::timeout(self.io_timeout, step).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(self.unreachable(err.to_string())),
            Err(_) => Err(self.unreachable(format!("no answer within {:?}", self.io_timeout))),
        }
    }

    fn unreachable(&self, reason: String) -> ClamdError {
        ClamdError::Unreachable { address: self.address.clone(), reason }
    }

    /// Reads clamd's NUL-terminated reply (z-commands end their reply with NUL).
    async fn reply(&self, stream: &mut TcpStream, timeout: Duration) -> Result<String, ClamdError> {
        let mut reply = Vec::new();
        let read = async {
            let mut buf = [0u8; 512];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                reply.extend_from_slice(&buf[..n]);
                if reply.ends_with(b"\0") || reply.len() > 4096 {
                    break;
                }
            }
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(self.unreachable(err.to_string())),
            Err(_) => return Err(self.unreachable(format!("no verdict within {timeout:?}"))),
        }
        let text = String::from_utf8_lossy(&reply).trim_end_matches(['\0', '\n']).to_string();
        if text.is_empty() {
            return Err(self.unreachable("the connection closed without a reply".into()));
        }
        Ok(text)
    }
}

/// An INSTREAM scan in progress.
pub struct Scan<'a> {
    clamd: &'a Clamd,
    stream: TcpStream,
    /// clamd closed the stream early (it does so past its size limit): the rest is not sent.
    cut_off: bool,
}

impl Scan<'_> {
    /// Sends the next bytes of the file.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ClamdError> {
        if self.cut_off || data.is_empty() {
            return Ok(());
        }
        let length = u32::try_from(data.len()).map_err(|_| ClamdError::Refused("chunk over 4 GiB".into()))?;
        let sent = async {
            self.stream.write_all(&length.to_be_bytes()).await?;
            self.stream.write_all(data).await
        };
        match tokio::time::timeout(self.clamd.io_timeout, sent).await {
            Ok(Ok(())) => Ok(()),
            // clamd stops reading past its limit and closes: its reply says why.
            Ok(Err(err)) if is_closed_by_peer(&err) => {
                self.cut_off = true;
                Ok(())
            }
            Ok(Err(err)) => Err(self.clamd.unreachable(err.to_string())),
            Err(_) => Err(self.clamd.unreachable("clamd stopped reading the stream".into())),
        }
    }

    /// Ends the stream and reads the verdict.
    pub async fn finish(mut self) -> Result<Verdict, ClamdError> {
        if !self.cut_off {
            let ended = self.stream.write_all(&0u32.to_be_bytes()).await;
            if let Err(err) = ended
                && !is_closed_by_peer(&err)
            {
                return Err(self.clamd.unreachable(err.to_string()));
            }
        }
        let reply = self.clamd.reply(&mut self.stream, VERDICT_TIMEOUT).await?;
        parse_verdict(&reply)
    }
}

fn is_closed_by_peer(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(err.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
}

/// Reads clamd's answer to an INSTREAM scan.
pub fn parse_verdict(reply: &str) -> Result<Verdict, ClamdError> {
    if reply.contains("size limit exceeded") {
        return Ok(Verdict::TooLarge);
    }
    let Some(result) = reply.strip_prefix("stream: ") else {
        return Err(ClamdError::Refused(reply.to_string()));
    };
    if result == "OK" {
        return Ok(Verdict::Clean);
    }
    match result.strip_suffix(" FOUND") {
        // With `AlertExceedsMax`, a file beyond the scan limits is reported as this heuristic.
        Some(signature) if signature.starts_with("Heuristics.Limits.Exceeded") => Ok(Verdict::TooLarge),
        Some(signature) => Ok(Verdict::Infected(signature.to_string())),
        None => Err(ClamdError::Refused(reply.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_as_clamd_writes_them() {
        assert_eq!(parse_verdict("stream: OK").unwrap(), Verdict::Clean);
        assert_eq!(parse_verdict("stream: Soma.Test.EICAR-Body.UNOFFICIAL FOUND").unwrap(), Verdict::Infected("Soma.Test.EICAR-Body.UNOFFICIAL".into()));
        assert_eq!(parse_verdict("INSTREAM size limit exceeded. ERROR").unwrap(), Verdict::TooLarge);
        assert_eq!(parse_verdict("stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND").unwrap(), Verdict::TooLarge);
        assert!(parse_verdict("stream: lstat() failed. ERROR").is_err());
        assert!(parse_verdict("UNKNOWN COMMAND").is_err());
    }
}
