//! Turning a dependency's error into the failure Temporal acts on, in one place for every
//! activity: a transient error is retried with the step's backoff (or after the delay the
//! dependency asked for); a permanent one fails the step at once, whatever its retry policy.
//!
//! Note that `?` on any error would make it a *retryable* `ActivityError` (the SDK converts
//! every error so); activities call [`Classify::classify`] instead, so a missing turn or a
//! refused request is not retried for minutes.

use std::time::Duration;

use temporalio_common::error::ApplicationFailure;
use temporalio_sdk::activities::ActivityError;

use soma_core::store::StoreError;

/// An error that knows whether trying again may help.
pub trait Failure: std::error::Error + Send + Sync + Sized + 'static {
    fn is_transient(&self) -> bool;

    /// How long the dependency asked to be left alone (an HTTP 429's `Retry-After`).
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// The activity failure for `err`, named after its type so operators can tell them apart.
pub fn step_failure<E: Failure>(err: E) -> ActivityError {
    let type_name = std::any::type_name::<E>().rsplit("::").next().unwrap_or("Error").to_string();
    let non_retryable = !err.is_transient();
    let next_retry_delay = err.retry_after();
    ActivityError::application(
        ApplicationFailure::builder(err)
            .type_name(type_name)
            .non_retryable(non_retryable)
            .maybe_next_retry_delay(next_retry_delay)
            .build(),
    )
}

/// `result.classify()?` in an activity: the error becomes a retryable or permanent failure.
pub trait Classify<T> {
    fn classify(self) -> Result<T, ActivityError>;
}

impl<T, E: Failure> Classify<T> for Result<T, E> {
    fn classify(self) -> Result<T, ActivityError> {
        self.map_err(step_failure)
    }
}

impl Failure for StoreError {
    fn is_transient(&self) -> bool {
        StoreError::is_transient(self)
    }
}

/// Calls to Temporal itself (cancelling a workflow, say): the server being away is transient,
/// a payload it cannot read is not.
impl Failure for temporalio_client::errors::WorkflowInteractionError {
    fn is_transient(&self) -> bool {
        !matches!(self, Self::PayloadConversion(_))
    }
}

/// Starting a workflow: the server being away is transient, a payload it cannot read is not.
impl Failure for temporalio_client::errors::WorkflowStartError {
    fn is_transient(&self) -> bool {
        !matches!(self, Self::PayloadConversion(_))
    }
}

/// The memory backend says itself whether it may answer later (and when).
impl Failure for soma_core::memory::MemoryError {
    fn is_transient(&self) -> bool {
        soma_core::memory::MemoryError::is_transient(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        soma_core::memory::MemoryError::retry_after(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn application(err: ActivityError) -> Box<ApplicationFailure> {
        match err {
            ActivityError::Application(failure) => failure,
            other => panic!("not an application failure: {other:?}"),
        }
    }

    #[test]
    fn a_missing_row_is_permanent_and_a_database_failure_is_retried() {
        let missing = application(step_failure(StoreError::TurnNotFound));
        assert!(missing.is_non_retryable());
        assert_eq!(missing.type_name(), Some("StoreError"));
        let down = application(step_failure(StoreError::Database(sqlx::Error::PoolTimedOut)));
        assert!(!down.is_non_retryable());
    }
}
