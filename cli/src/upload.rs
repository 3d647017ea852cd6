//! `soma upload FILE…`: each file over tus with a progress bar (bytes, rate, ETA), resumed
//! from the server's offset when a request breaks and, after an interrupted run, by running
//! the same command again (the upload's URL is kept in a small state file until it is done);
//! then the scan's verdict.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use soma_client::{Client, ClientError, TusUpload, UploadProgress};
use soma_contract::AttachmentStatus;
use soma_contract::api::Attachment;

use crate::Outcome;
use crate::output::Output;

/// How long `soma upload` waits for a verdict before saying the file is still pending.
const VERDICT_WAIT: Duration = Duration::from_secs(600);

/// Uploads begun and not finished, so that running the command again resumes them: keyed by
/// the API, the file's path, size and modification time (a changed file starts afresh).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Unfinished {
    uploads: BTreeMap<String, String>,
}

fn state_file() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("soma").join("uploads.json")
}

impl Unfinished {
    fn load() -> Self {
        std::fs::read(state_file()).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    fn save(&self) {
        let path = state_file();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(path, serde_json::to_vec_pretty(self).unwrap_or_default());
    }

    fn key(client: &Client, path: &Path) -> Option<String> {
        let absolute = std::fs::canonicalize(path).ok()?;
        let metadata = std::fs::metadata(&absolute).ok()?;
        let modified = metadata.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
        Some(format!("{} {} {} {modified}", client.base_url(), absolute.display(), metadata.len()))
    }
}

/// Uploads each file and prints its verdict. Ends `Done` when every file is clean.
pub async fn run(client: &Client, files: &[PathBuf], session: Option<Uuid>, out: &Output) -> Result<Outcome, ClientError> {
    let mut outcome = Outcome::Done;
    let mut results = Vec::new();
    for path in files {
        let attachment = upload_one(client, path, session, out).await?;
        if !out.json {
            match attachment.status {
                AttachmentStatus::Clean => println!("{}  clean  {}  {}", attachment.id, path.display(), attachment.url),
                AttachmentStatus::Pending | AttachmentStatus::Uploading => {
                    println!("{}  still pending its scan  {}  (soma upload checks again when run)", attachment.id, path.display())
                }
                status => println!(
                    "{}  {status}  {}  {}",
                    attachment.id,
                    path.display(),
                    attachment.verdict.as_deref().unwrap_or_default()
                ),
            }
        }
        if matches!(attachment.status, AttachmentStatus::Quarantined | AttachmentStatus::Failed) {
            outcome = Outcome::Rejected;
        }
        results.push(attachment);
    }
    out.json_or(&results, || {});
    Ok(outcome)
}

async fn upload_one(client: &Client, path: &Path, session: Option<Uuid>, out: &Output) -> Result<Attachment, ClientError> {
    let mut unfinished = Unfinished::load();
    let key = Unfinished::key(client, path)
        .ok_or_else(|| ClientError::Decode(format!("{}: no such file", path.display())))?;
    let resume = match unfinished.uploads.get(&key) {
        Some(location) => {
            let upload = TusUpload { location: location.clone(), length: 0 };
            match client.tus_offset(&upload).await {
                Ok(offset) => {
                    out.note(&format!("resuming {} from byte {offset}", path.display()));
                    Some(upload)
                }
                // Expired or gone: start again.
                Err(err) if err.is_permanent() => None,
                Err(err) => return Err(err),
            }
        }
        None => None,
    };
    let upload = match resume {
        Some(upload) => upload,
        None => {
            let upload = client.tus_create_for_file(path, session).await?;
            // Kept until the verdict, so a run cut short resumes where it stopped.
            unfinished.uploads.insert(key.clone(), upload.location.clone());
            unfinished.save();
            upload
        }
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("upload").to_string();
    let mut bar = ProgressBar::new(name, out.json);
    let uploaded = client.upload_file(path, session, Some(upload), |progress| bar.show(progress)).await;
    bar.finish();
    let upload = uploaded?;
    let attachment = client.wait_for_scan(upload.id()?, VERDICT_WAIT).await?;
    unfinished.uploads.remove(&key);
    unfinished.save();
    Ok(attachment)
}

/// One line on standard error, redrawn: `name  [#####     ]  12.0/100.0 MiB  35.2 MiB/s  ETA 3s`.
struct ProgressBar {
    name: String,
    started: Instant,
    first_sent: Option<u64>,
    quiet: bool,
}

impl ProgressBar {
    fn new(name: String, quiet: bool) -> Self {
        Self { name, started: Instant::now(), first_sent: None, quiet }
    }

    fn show(&mut self, progress: UploadProgress) {
        if self.quiet {
            return;
        }
        let first = *self.first_sent.get_or_insert(progress.sent);
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (progress.sent - first) as f64 / elapsed;
        let left = progress.length.saturating_sub(progress.sent) as f64;
        let eta = if rate > 0.0 { format!("ETA {:.0}s", left / rate) } else { "ETA -".into() };
        let fraction = if progress.length == 0 { 1.0 } else { progress.sent as f64 / progress.length as f64 };
        let filled = (fraction * 24.0).round() as usize;
        let resumed = if progress.resumed > 0 { format!("  resumed {}x", progress.resumed) } else { String::new() };
        let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
        eprint!(
            "\r{}  [{}{}]  {:.1}/{:.1} MiB  {:.1} MiB/s  {eta}{resumed}   ",
            self.name,
            "#".repeat(filled),
            " ".repeat(24 - filled.min(24)),
            mib(progress.sent as f64),
            mib(progress.length as f64),
            mib(rate),
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&self) {
        if !self.quiet {
            eprintln!();
        }
    }
}
