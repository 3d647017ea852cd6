//! Logging in one place: human-readable by default, one JSON object per line with
//! `--log-json`. The same subscriber is handed to the Temporal runtime, which otherwise logs
//! nothing (TEMPORAL_NOTES.md) and would hide workflow-task failures.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};

use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt};

use crate::config::LogFormat;

pub type SharedSubscriber = Arc<dyn Subscriber + Send + Sync>;

static GLOBAL: OnceLock<SharedSubscriber> = OnceLock::new();

/// Installs the process-wide subscriber (once; later calls return the first one) and returns
/// it for the Temporal runtime's telemetry options.
pub fn init_telemetry(format: LogFormat, filter: &str) -> SharedSubscriber {
    GLOBAL
        .get_or_init(|| {
            let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(filter));
            let subscriber: SharedSubscriber = match format {
                LogFormat::Human => Arc::new(
                    tracing_subscriber::registry()
                        .with(filter)
                        .with(fmt::layer().with_target(true).with_ansi(std::io::stdout().is_terminal())),
                ),
                LogFormat::Json => Arc::new(
                    tracing_subscriber::registry()
                        .with(filter)
                        .with(fmt::layer().json().flatten_event(true).with_current_span(true)),
                ),
            };
            let _ = tracing::subscriber::set_global_default(subscriber.clone());
            subscriber
        })
        .clone()
}
