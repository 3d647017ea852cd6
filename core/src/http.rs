//! What an HTTP dependency's refusal says, read the same way for every client (the LLM
//! provider, the memory service): whether to try again, after how long, and why.

use std::time::Duration;

/// A refusal from an HTTP dependency.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: reqwest::StatusCode,
    /// The `Retry-After` it sent, in seconds (the HTTP-date form is not honoured).
    pub retry_after: Option<Duration>,
    /// `HTTP {status}: {the start of its body}`.
    pub message: String,
}

impl Refusal {
    /// Reads a non-success response (its body up to `body_chars` characters).
    pub async fn read(response: reqwest::Response, body_chars: usize) -> Refusal {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        let message = format!("HTTP {status}: {}", body.chars().take(body_chars).collect::<String>());
        Refusal { status, retry_after, message }
    }

    /// Whether asking again later may succeed: 429 and 5xx.
    pub fn is_transient(&self) -> bool {
        self.status == reqwest::StatusCode::TOO_MANY_REQUESTS || self.status.is_server_error()
    }
}
