//! How each kind of step runs: timeouts, retries, heartbeats and cancellation, named for what
//! the step does so a workflow reads like the design's table. Every workflow takes its
//! activity options from here.

use std::time::Duration;

use temporalio_common::RetryPolicy;
use temporalio_sdk::{
    ActivityCancellationType, ActivityCloseTimeouts, ActivityExecutionError, ActivityOptions, LocalActivityOptions, WorkflowCancellationToken,
};

/// Exponential backoff (coefficient 2) from `initial` to `max` between attempts; `attempts`
/// caps the tries (0: retry until the step's schedule-to-close timeout, if any).
fn backoff(initial: Duration, max: Duration, attempts: u32) -> RetryPolicy {
    RetryPolicy::builder().initial_interval(initial).maximum_interval(max).maximum_attempts(attempts).build()
}

/// Postgres steps back off from 1 s to 20 s, so a database restart of a few minutes delays a
/// turn rather than failing it.
fn database_retry(attempts: u32) -> RetryPolicy {
    backoff(Duration::from_secs(1), Duration::from_secs(20), attempts)
}

const DATABASE_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A short Postgres step.
pub fn database() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(DATABASE_STEP_TIMEOUT).retry_policy(database_retry(20)).build()
}

/// A short Postgres step run by the workflow's own worker, with no server round trip before
/// it: for steps on the way to the first token. Retried like [`database`], bounded by time
/// (a local activity's attempts all happen inside one schedule-to-close window).
pub fn local_database() -> LocalActivityOptions {
    LocalActivityOptions::builder()
        .start_to_close_timeout(DATABASE_STEP_TIMEOUT)
        .schedule_to_close_timeout(Duration::from_secs(600))
        .retry_policy(database_retry(0))
        .build()
}

/// [`database`], detached from the workflow's cancellation: the steps that record how a
/// cancelled workflow ended must still run.
pub fn database_after_cancel() -> ActivityOptions {
    let mut options = database();
    options.cancellation_token = Some(WorkflowCancellationToken::new());
    options
}

/// [`local_database`], detached from the workflow's cancellation like [`database_after_cancel`].
pub fn local_database_after_cancel() -> LocalActivityOptions {
    let mut options = local_database();
    options.cancellation_token = Some(WorkflowCancellationToken::new());
    options
}

/// Waiting on something else (earlier turns of the session) for as long as it takes;
/// heartbeats tell a dead worker from a long wait.
pub fn wait() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(24 * 3600))
        .heartbeat_timeout(Duration::from_secs(10))
        .cancellation_type(ActivityCancellationType::TryCancel)
        .retry_policy(backoff(Duration::from_secs(1), Duration::from_secs(10), 0))
        .build()
}

/// The provider call: heartbeats every few hundred ms, so a dead worker or a stalled provider
/// is noticed within the heartbeat timeout and a cancel request reaches the stream quickly.
/// The workflow waits for the activity to stop, so the partial reply is complete before it is
/// stored. Five attempts; a refusal (bad key, bad request) is not retried at all.
pub fn llm_stream() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(600))
        .heartbeat_timeout(Duration::from_secs(3))
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .retry_policy(backoff(Duration::from_secs(1), Duration::from_secs(10), 5))
        .build()
}

/// A tool's execution, within its catalog profile: its own timeout per attempt, its own number
/// of attempts, heartbeats so a dead worker or a cancel request is noticed within seconds.
pub fn tool(timeout: Duration, max_attempts: u32) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(timeout)
        .heartbeat_timeout(Duration::from_secs(5))
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .retry_policy(backoff(Duration::from_secs(1), Duration::from_secs(10), max_attempts.max(1)))
        .build()
}

/// A memory write: each attempt may take SomaBrain's 30 s; attempts back off exponentially
/// from 1 s to `max_interval` for `budget` in all (the write then becomes a dead letter). A
/// refusal (auth, validation) is not retried at all; a 429's `Retry-After` is honoured.
pub fn memory_write(max_interval: Duration, budget: Duration) -> ActivityOptions {
    let timeouts =
        ActivityCloseTimeouts::ScheduleAndStartToClose { schedule_to_close: budget, start_to_close: Duration::from_secs(40) };
    ActivityOptions::with_close_timeouts(timeouts).retry_policy(backoff(Duration::from_secs(1), max_interval, 0)).build()
}

/// How long a file may wait for clamd or S3 before its scan gives up (it is then `failed`).
const UPLOAD_STEP_BUDGET: Duration = Duration::from_secs(24 * 3600);

/// A step of an uploaded file's scan that reads or writes the whole file (the scan, storing it
/// in S3): heartbeats with its progress, so a dead worker is noticed within seconds whatever
/// the file's size; retried every 10 s at most while clamd or S3 is away, so the file is
/// scanned within seconds of their return, for a day.
pub fn whole_file() -> ActivityOptions {
    let timeouts = ActivityCloseTimeouts::ScheduleAndStartToClose {
        schedule_to_close: UPLOAD_STEP_BUDGET,
        start_to_close: Duration::from_secs(3600),
    };
    ActivityOptions::with_close_timeouts(timeouts)
        .heartbeat_timeout(Duration::from_secs(20))
        .retry_policy(backoff(Duration::from_secs(1), Duration::from_secs(10), 0))
        .build()
}

/// An instant tool (see `ToolProfile::instant`) as a local activity: the same timeout and
/// attempts as [`tool`], no heartbeats (it calls nothing that could stall).
pub fn instant_tool(timeout: Duration, max_attempts: u32) -> LocalActivityOptions {
    LocalActivityOptions::builder()
        .start_to_close_timeout(timeout)
        .retry_policy(backoff(Duration::from_secs(1), Duration::from_secs(10), max_attempts.max(1)))
        .build()
}

/// Why a step failed, in the words of its deepest cause: the activity's own error ("LLM
/// provider rejected the request: HTTP 401 …") or the timeout that ended it, rather than the
/// wrapper's "Activity task failed". This is what users read in `error` and `tool.result`.
pub fn failure_reason(err: &ActivityExecutionError) -> String {
    let mut failure = err.failure();
    let mut deepest = None;
    while let Some(current) = failure {
        if !current.message.is_empty() {
            deepest = Some(current.message.clone());
        }
        failure = current.cause.as_deref();
    }
    deepest.unwrap_or_else(|| err.to_string())
}
