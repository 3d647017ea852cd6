//! The periodic jobs as Temporal Schedules: declared in the config ([`ScheduleConfig`]),
//! created or brought in line with it when a worker starts ([`ensure_schedules`]), read and
//! steered by the admin API and `soma schedules` ([`schedule_views`], [`trigger`],
//! [`set_paused`]). Temporal starts one run per tick whatever the number of workers:
//! the schedule, not a worker, owns the clock.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use temporalio_client::schedules::{
    CreateScheduleOptions, PauseScheduleOptions, ScheduleAction, ScheduleError, ScheduleOverlapPolicy, ScheduleSpec,
    TriggerScheduleOptions, UnpauseScheduleOptions,
};
use temporalio_client::tonic::Code;
use temporalio_client::Client;

use soma_contract::MaintenanceJob;
use soma_contract::api::{ScheduleRun, ScheduleView};

/// What to do when a tick comes while the previous run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Drop the tick (the default: a job that runs long is not piled up).
    #[default]
    Skip,
    BufferOne,
    BufferAll,
    CancelOther,
    TerminateOther,
    AllowAll,
}

impl From<Overlap> for ScheduleOverlapPolicy {
    fn from(overlap: Overlap) -> Self {
        match overlap {
            Overlap::Skip => ScheduleOverlapPolicy::Skip,
            Overlap::BufferOne => ScheduleOverlapPolicy::BufferOne,
            Overlap::BufferAll => ScheduleOverlapPolicy::BufferAll,
            Overlap::CancelOther => ScheduleOverlapPolicy::CancelOther,
            Overlap::TerminateOther => ScheduleOverlapPolicy::TerminateOther,
            Overlap::AllowAll => ScheduleOverlapPolicy::AllowAll,
        }
    }
}

fn default_catchup_window_secs() -> u64 {
    60
}

/// One periodic job: `[[schedules]]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// The schedule's ID in Temporal; its runs are `{id}-{time}`.
    pub id: String,
    pub job: MaintenanceJob,
    /// Run every this many seconds…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
    /// …or at the times of this cron expression (UTC), e.g. `"0 * * * *"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default)]
    pub overlap: Overlap,
    /// Ticks missed while Temporal was down are run late if no older than this.
    #[serde(default = "default_catchup_window_secs")]
    pub catchup_window_secs: u64,
    /// Created paused (a pause or unpause by an operator later stands across worker restarts).
    #[serde(default)]
    pub paused: bool,
}

impl ScheduleConfig {
    fn new(id: &str, job: MaintenanceJob, every: Duration) -> Self {
        Self {
            id: id.into(),
            job,
            every_secs: Some(every.as_secs()),
            cron: None,
            overlap: Overlap::Skip,
            catchup_window_secs: default_catchup_window_secs(),
            paused: false,
        }
    }

    /// When it runs, as Temporal takes it.
    pub fn spec(&self) -> ScheduleSpec {
        match (&self.cron, self.every_secs) {
            (Some(cron), _) => ScheduleSpec::builder().cron_strings(vec![cron.clone()]).build(),
            (None, every) => ScheduleSpec::from_interval(Duration::from_secs(every.unwrap_or(3600))),
        }
    }

    /// When it runs, for people: `every 60s` or the cron expression.
    pub fn describe_spec(&self) -> String {
        match (&self.cron, self.every_secs) {
            (Some(cron), _) => format!("cron {cron}"),
            (None, every) => format!("every {}s", every.unwrap_or(3600)),
        }
    }
}

/// The jobs a deployment runs unless its config says otherwise. Dead letters are not replayed
/// on their own by default: an operator turns that on (unpause) once they trust it.
pub fn default_schedules() -> Vec<ScheduleConfig> {
    let minute = Duration::from_secs(60);
    let hour = Duration::from_secs(3600);
    vec![
        ScheduleConfig::new("publish-metrics", MaintenanceJob::PublishMetrics, minute),
        ScheduleConfig::new("cleanup-sessions", MaintenanceJob::CleanupSessions, hour),
        ScheduleConfig::new("compact-deltas", MaintenanceJob::CompactDeltas, 10 * minute),
        ScheduleConfig::new("expire-uploads", MaintenanceJob::ExpireUploads, hour),
        ScheduleConfig { paused: true, ..ScheduleConfig::new("retry-dead-letters", MaintenanceJob::RetryDeadLetters, 15 * minute) },
    ]
}

/// Unique IDs, each with exactly one of `every_secs` (positive) and `cron`.
pub fn validate(schedules: &[ScheduleConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for schedule in schedules {
        if schedule.id.trim().is_empty() || !seen.insert(schedule.id.as_str()) {
            return Err(format!("schedules: the id {:?} is blank or repeated", schedule.id));
        }
        match (&schedule.cron, schedule.every_secs) {
            (Some(cron), None) if !cron.trim().is_empty() => {}
            (None, Some(every)) if every > 0 => {}
            _ => return Err(format!("schedule {:?}: give exactly one of every_secs (> 0) and cron", schedule.id)),
        }
    }
    Ok(())
}

fn is(err: &ScheduleError, code: Code) -> bool {
    matches!(err, ScheduleError::Rpc(status) if status.code() == code)
}

/// Makes each configured schedule exist with its spec, action, overlap policy and catch-up
/// window. Safe to run from any number of workers at once: creating one that another worker
/// has just created is a no-op, and the update writes the same definition. Paused state is
/// only set at creation, so an operator's pause outlives worker restarts.
pub async fn ensure_schedules(
    client: &Client,
    schedules: &[ScheduleConfig],
    action: impl Fn(&ScheduleConfig) -> ScheduleAction,
) -> Result<(), ScheduleError> {
    for schedule in schedules {
        let handle = client.get_schedule_handle(&schedule.id);
        match handle.describe(Default::default()).await {
            Ok(_) => {}
            Err(err) if is(&err, Code::NotFound) => {
                let options = CreateScheduleOptions::builder()
                    .action(action(schedule))
                    .spec(schedule.spec())
                    .overlap_policy(schedule.overlap.into())
                    .paused(schedule.paused)
                    .note(if schedule.paused { "created paused by the config" } else { "" })
                    .build();
                match client.create_schedule(&schedule.id, options).await {
                    Ok(_) => tracing::info!(schedule = %schedule.id, spec = %schedule.describe_spec(), "schedule created"),
                    Err(err) if is(&err, Code::AlreadyExists) => {}
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(err),
        }
        let (spec, action) = (schedule.spec(), action(schedule));
        let (overlap, catchup) = (schedule.overlap.into(), Duration::from_secs(schedule.catchup_window_secs));
        handle
            .update(
                move |update| {
                    update.set_spec(spec).set_action(action).set_overlap_policy(overlap).set_catchup_window(catchup);
                },
                Default::default(),
            )
            .await?;
    }
    Ok(())
}

fn utc(time: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(time)
}

/// The configured schedules as Temporal has them (those not created yet are left out).
pub async fn schedule_views(client: &Client, schedules: &[ScheduleConfig]) -> Result<Vec<ScheduleView>, ScheduleError> {
    let mut views = Vec::new();
    for schedule in schedules {
        views.extend(schedule_view(client, schedule).await?);
    }
    Ok(views)
}

/// One configured schedule as Temporal has it; none if it is not created yet.
async fn schedule_view(client: &Client, schedule: &ScheduleConfig) -> Result<Option<ScheduleView>, ScheduleError> {
    let description = match client.get_schedule_handle(&schedule.id).describe(Default::default()).await {
        Ok(description) => description,
        Err(err) if is(&err, Code::NotFound) => return Ok(None),
        Err(err) => return Err(err),
    };
    Ok(Some(ScheduleView {
            id: schedule.id.clone(),
            job: schedule.job,
            spec: schedule.describe_spec(),
            paused: description.paused(),
            note: description.note().filter(|note| !note.is_empty()).map(str::to_string),
            next_runs: if description.paused() {
                Vec::new()
            } else {
                description.future_action_times().into_iter().take(3).map(utc).collect()
            },
            recent_runs: description
                .recent_actions()
                .into_iter()
                .map(|run| ScheduleRun { workflow_id: run.workflow_id, started_at: run.actual_time.map(utc) })
                .collect(),
        runs: description.action_count(),
    }))
}

/// Why a steering request failed: the schedule is not one of ours, or Temporal said no.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("no such schedule")]
    NotFound,
    #[error(transparent)]
    Temporal(#[from] ScheduleError),
}

/// The schedule `id` of the config, as Temporal has it now.
pub async fn describe(client: &Client, schedules: &[ScheduleConfig], id: &str) -> Result<ScheduleView, SteerError> {
    schedule_view(client, configured(schedules, id)?).await?.ok_or(SteerError::NotFound)
}

fn configured<'a>(schedules: &'a [ScheduleConfig], id: &str) -> Result<&'a ScheduleConfig, SteerError> {
    schedules.iter().find(|s| s.id == id).ok_or(SteerError::NotFound)
}

fn not_found_is_ours(err: ScheduleError) -> SteerError {
    if is(&err, Code::NotFound) { SteerError::NotFound } else { SteerError::Temporal(err) }
}

/// Runs the job now, once, whatever the schedule's overlap policy says about a running one.
pub async fn trigger(client: &Client, schedules: &[ScheduleConfig], id: &str) -> Result<(), SteerError> {
    let schedule = configured(schedules, id)?;
    client
        .get_schedule_handle(&schedule.id)
        .trigger(ScheduleOverlapPolicy::AllowAll, TriggerScheduleOptions::default())
        .await
        .map_err(not_found_is_ours)
}

/// Stops the schedule's ticks (`paused`) or starts them again; `note` says why (the Temporal UI
/// shows it).
pub async fn set_paused(
    client: &Client,
    schedules: &[ScheduleConfig],
    id: &str,
    paused: bool,
    note: String,
) -> Result<(), SteerError> {
    let handle = client.get_schedule_handle(&configured(schedules, id)?.id);
    let done = if paused {
        handle.pause(Some(note), PauseScheduleOptions::default()).await
    } else {
        handle.unpause(Some(note), UnpauseScheduleOptions::default()).await
    };
    done.map_err(not_found_is_ours)
}
