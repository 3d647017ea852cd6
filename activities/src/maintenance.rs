//! `MaintenanceActivities`: the periodic jobs' steps, holding the store and the S3 bucket.
//! Each handles one bounded batch and is safe to run again: claimed sessions stay claimed,
//! deleting an S3 object twice is fine, compaction and expiry skip what is done.

use std::sync::Arc;
use std::time::Duration;

use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use uuid::Uuid;

use soma_contract::api::MaintenanceBatch;
use soma_core::blobs::BlobStore;
use soma_core::store::{MAINTENANCE_ACTOR, Requester, SessionMemories, Store};
use soma_workflows::activities::defs;

use crate::failure::Classify;

/// What the jobs need from the deployment.
#[derive(Debug, Clone)]
pub struct MaintenanceSettings {
    pub session_retention: Duration,
    pub compact_deltas_after: Duration,
    pub batch_size: u32,
}

pub struct MaintenanceActivitiesImpl {
    store: Store,
    purger: SessionPurger,
    settings: MaintenanceSettings,
}

impl MaintenanceActivitiesImpl {
    pub fn new(store: Store, purger: SessionPurger, settings: MaintenanceSettings) -> Self {
        Self { store, purger, settings }
    }

    fn batch(&self, items: u64, summary: String) -> MaintenanceBatch {
        MaintenanceBatch { items, more: items >= u64::from(self.settings.batch_size), summary }
    }
}

/// What [`SessionPurger::purge`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Whether the session's rows were still there.
    pub session: bool,
    pub s3_objects: usize,
}

/// Removes sessions marked deleted with everything they own, the one way both a user's
/// deletion and the retention cleanup do it.
#[derive(Clone)]
pub struct SessionPurger {
    store: Store,
    blobs: BlobStore,
    memories: SessionMemories,
}

impl SessionPurger {
    pub fn new(store: Store, blobs: BlobStore, memories: SessionMemories) -> Self {
        Self { store, blobs, memories }
    }

    /// Its files' S3 objects first (so none is left without a row pointing at it), then its
    /// rows and, if configured, its memories (audited).
    pub async fn purge(&self, tenant_id: &str, session_id: Uuid, by: Requester<'_>) -> Result<Purged, ActivityError> {
        let keys = self.store.session_object_keys(tenant_id, session_id).await.classify()?;
        for key in &keys {
            self.blobs.delete(key).await.classify()?;
        }
        let session = self.store.purge_session(tenant_id, session_id, self.memories, by).await.classify()?;
        Ok(Purged { session, s3_objects: keys.len() })
    }
}

#[activities]
impl MaintenanceActivitiesImpl {
    #[activity(definition = defs::PublishGauges)]
    pub async fn publish_gauges(self: Arc<Self>, _ctx: ActivityContext) -> Result<MaintenanceBatch, ActivityError> {
        let gauges = self.store.publish_gauges().await.classify()?;
        let summary = gauges.iter().map(|g| format!("{}={}", g.name.trim_start_matches("soma_"), g.value)).collect::<Vec<_>>();
        Ok(MaintenanceBatch { items: gauges.len() as u64, more: false, summary: summary.join(" ") })
    }

    #[activity(definition = defs::DeleteExpiredSessions)]
    pub async fn delete_expired_sessions(self: Arc<Self>, ctx: ActivityContext) -> Result<MaintenanceBatch, ActivityError> {
        let claimed =
            self.store.claim_expired_sessions(self.settings.session_retention, self.settings.batch_size).await.classify()?;
        let request_id = ctx.info().workflow_id.clone().unwrap_or_default();
        let by = Requester { actor: MAINTENANCE_ACTOR, request_id: &request_id, trace_id: None };
        let mut objects = 0;
        for session in &claimed {
            objects += self.purger.purge(&session.tenant_id, session.session_id, by).await?.s3_objects;
        }
        let summary = format!("{} sessions deleted ({objects} S3 objects)", claimed.len());
        Ok(self.batch(claimed.len() as u64, summary))
    }

    #[activity(definition = defs::CompactTurnDeltas)]
    pub async fn compact_turn_deltas(self: Arc<Self>, _ctx: ActivityContext) -> Result<MaintenanceBatch, ActivityError> {
        let compacted =
            self.store.compact_deltas(self.settings.compact_deltas_after, self.settings.batch_size).await.classify()?;
        let summary = format!("{} turns compacted, {} llm.delta events removed", compacted.turns, compacted.events_removed);
        Ok(self.batch(compacted.turns, summary))
    }

    #[activity(definition = defs::RemoveExpiredUploads)]
    pub async fn remove_expired_uploads(self: Arc<Self>, _ctx: ActivityContext) -> Result<MaintenanceBatch, ActivityError> {
        let expired = self.store.expire_uploads(self.settings.batch_size).await.classify()?;
        Ok(self.batch(expired, format!("{expired} expired uploads removed")))
    }
}
