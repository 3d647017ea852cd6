//! The processes under measurement: spawning the api and worker binaries, and reading their
//! memory and CPU from /proc.

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Proc {
    pub name: &'static str,
    child: Child,
}

impl Proc {
    pub fn spawn(
        name: &'static str,
        binary: &Path,
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log = std::fs::File::create(log_dir.join(format!("bench-{name}.log")))?;
        let child = Command::new(binary)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        Ok(Proc { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// CPU time (user + system) in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Processes whose command line contains `needle`.
pub fn pids_matching(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Which processes make up a group.
#[derive(Clone)]
pub enum Members {
    Pids(Vec<u32>),
    /// Looked up at every sample: Postgres forks a process per new connection.
    CommandContains(&'static str),
}

/// CPU seconds used so far by each group of processes.
#[derive(Clone)]
pub struct CpuGroups {
    pub groups: Vec<(&'static str, Members)>,
}

impl CpuGroups {
    pub fn sample(&self) -> Vec<f64> {
        self.groups
            .iter()
            .map(|(_, members)| {
                let pids = match members {
                    Members::Pids(pids) => pids.clone(),
                    Members::CommandContains(needle) => pids_matching(needle),
                };
                pids.iter().map(|p| cpu_seconds(*p)).sum()
            })
            .collect()
    }

    /// The CPU the named groups used together between two samples `seconds` apart, in % of a
    /// core.
    pub fn percent_of(&self, names: &[&str], before: &[f64], after: &[f64], seconds: f64) -> f64 {
        self.groups
            .iter()
            .zip(before.iter().zip(after))
            .filter(|((name, _), _)| names.contains(name))
            .map(|(_, (b, a))| (a - b) / seconds * 100.0)
            .sum()
    }

    /// "api 12% · worker 30% · …" of one core, between two samples `seconds` apart.
    pub fn describe(&self, before: &[f64], after: &[f64], seconds: f64) -> String {
        self.groups
            .iter()
            .zip(before.iter().zip(after))
            .map(|((name, _), (b, a))| format!("{name} {:.0}%", (a - b) / seconds * 100.0))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}
