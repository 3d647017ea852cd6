//! `soma-record-histories`: adds to `tests/histories/` the histories of a namespace's closed
//! workflows that cover a step no recorded history covers yet, for every workflow type (see
//! `soma_tests::histories`). `ops/record-histories` runs it against what `ops/test` left in
//! its namespace; the replay suite then checks every recorded history on each test run.
//!
//! Usage: `soma-record-histories [NAMESPACE [DIR]]` (defaults: `SOMA_TEMPORAL_NAMESPACE` or
//! `soma-test`, and `tests/histories`), with `TEMPORAL_ADDRESS` naming the server.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use temporalio_client::{WorkflowExecutionInfo, WorkflowFetchHistoryOptions, WorkflowListOptions};
use temporalio_common::protos::temporal::api::history::v1::History;
use soma_tests::histories;

/// Closed runs looked at per workflow type (the newest first).
const RUNS_PER_TYPE: usize = 300;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let namespace = args
        .next()
        .or_else(|| std::env::var("SOMA_TEMPORAL_NAMESPACE").ok())
        .unwrap_or_else(|| "soma-test".into());
    let dir = args.next().map(Into::into).unwrap_or_else(histories::default_dir);
    let config = soma_core::Config { temporal_namespace: namespace.clone(), ..soma_core::Config::load(None)? };
    let client = soma_core::temporal::connect(&config, Duration::from_secs(10)).await?;
    let recorded = histories::load(&dir)?;
    let replayer = histories::replayer();
    let mut added = 0;
    for workflow_type in soma_workflows::workflow_types() {
        let mut covered: BTreeSet<String> = recorded
            .iter()
            .filter(|r| r.workflow_type == workflow_type)
            .flat_map(|r| histories::steps(&r.history.events))
            .collect();
        let query = format!(
            "WorkflowType = '{workflow_type}' AND ExecutionStatus != 'Running' AND ExecutionStatus != 'Terminated'"
        );
        let mut candidates = Vec::new();
        let mut runs = client.list_workflows(query, WorkflowListOptions::default()).take(RUNS_PER_TYPE);
        while let Some(run) = runs.next().await {
            let run = run?;
            // This very run: a reused workflow ID (tools/refresh) has several.
            let handle = WorkflowExecutionInfo::builder()
                .namespace(namespace.clone())
                .workflow_id(run.id())
                .run_id(run.run_id().to_string())
                .build()
                .bind_untyped(client.clone());
            let events = handle.fetch_history(WorkflowFetchHistoryOptions::default()).into_events().await?;
            candidates.push((run.run_id().to_string(), events));
        }
        // Greedy cover: keep the run that adds the most uncovered steps, until none adds any.
        loop {
            let best = candidates
                .iter()
                .enumerate()
                .map(|(i, (_, events))| (histories::steps(events).difference(&covered).count(), i))
                .max();
            let Some((new_steps, i)) = best.filter(|(n, _)| *n > 0) else { break };
            let (run_id, events) = candidates.swap_remove(i);
            let history = History { events };
            // A history must replay against the code before it is kept as a reference.
            if let Err(err) = replayer.replay_workflow(history.clone().into()).await {
                eprintln!("{workflow_type} {run_id}: not recorded, it does not replay: {err}");
                continue;
            }
            covered.extend(histories::steps(&history.events));
            let path = dir.join(&workflow_type).join(format!("{run_id}.json"));
            std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
            std::fs::write(&path, serde_json::to_vec(&history)?)?;
            println!("{workflow_type}: recorded {} (+{new_steps} steps, {} events)", path.display(), history.events.len());
            added += 1;
        }
        if covered.is_empty() {
            eprintln!("{workflow_type}: no closed run in namespace {namespace} and none recorded");
        }
    }
    println!("{added} histories recorded in {}", dir.display());
    Ok(())
}
