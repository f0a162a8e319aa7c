//! The runner: every `poll_ms` it takes up the running batches no other gateway holds (a lease
//! in the store, renewed while it works), runs the lines of those it runs itself through a
//! bounded worker pool, and polls the upstream of forwarded ones. What a line answered is kept
//! as it comes, so a restarted gateway runs only the lines left.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{BY_GATEWAY, errors_of, validate};
use crate::auth::Caller;
use crate::state::AppState;
use crate::store::{BatchRecord, BatchResult, FileRecord, StoreError, now_ms};

/// The running runner, stopped at shutdown.
pub struct Runner {
    /// Cancelled at shutdown: no new line starts.
    closing: CancellationToken,
    /// Cancelled when the drain time is over: lines still in flight are cut off.
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Runner {
    /// Lets lines in flight finish for at most `drain`, then cuts them off; leases are let go.
    pub async fn stop(self, drain: Duration) {
        self.closing.cancel();
        let stop = self.stop.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            stop.cancel();
        });
        let _ = self.task.await;
        timer.abort();
    }
}

struct Shared {
    state: Arc<AppState>,
    /// This process's name in the store's leases.
    me: String,
    workers: Arc<Semaphore>,
    closing: CancellationToken,
    stop: CancellationToken,
    /// Batches this process has a task for.
    busy: Mutex<HashSet<String>>,
}

pub fn start(state: Arc<AppState>) -> Runner {
    let (closing, stop) = (CancellationToken::new(), CancellationToken::new());
    let shared = Arc::new(Shared {
        workers: Arc::new(Semaphore::new(state.config.batch.workers.max(1))),
        me: uuid::Uuid::new_v4().to_string(),
        state,
        closing: closing.clone(),
        stop: stop.clone(),
        busy: Mutex::new(HashSet::new()),
    });
    let task = tokio::spawn(run(shared));
    Runner {
        closing,
        stop,
        task,
    }
}

async fn run(shared: Arc<Shared>) {
    let poll = Duration::from_millis(shared.state.config.batch.poll_ms.max(10));
    let mut tasks = JoinSet::new();
    loop {
        if let Err(e) = take_up(&shared, &mut tasks).await {
            tracing::warn!(error = %e, "batches: store failed");
        }
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shared.closing.cancelled() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
    // Forwarded batches are held between polls too: a restarted gateway polls them at once.
    if let Err(e) = shared.state.store.release_batches(&shared.me).await {
        tracing::warn!(error = %e, "batches: leases not let go");
    }
}

fn lock(busy: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    busy.lock().unwrap_or_else(|p| p.into_inner())
}

async fn take_up(shared: &Arc<Shared>, tasks: &mut JoinSet<()>) -> Result<(), StoreError> {
    let store = &shared.state.store;
    let lease = i64::try_from(shared.state.config.batch.lease_ms).unwrap_or(i64::MAX / 2);
    for id in store.runnable_batches(&shared.me, now_ms()).await? {
        if lock(&shared.busy).contains(&id) {
            continue;
        }
        let now = now_ms();
        if !store.lease_batch(&id, &shared.me, now, now + lease).await? {
            continue;
        }
        lock(&shared.busy).insert(id.clone());
        let shared = shared.clone();
        tasks.spawn(async move {
            let outcome = work_on(&shared, &id).await;
            if let Err(e) = outcome {
                tracing::warn!(batch = %id, error = %e, "batches: store failed");
            }
            if shared.closing.is_cancelled() {
                // A restarted gateway takes it up at once, not after the lease runs out.
                let _ = shared.state.store.release_batch(&id, &shared.me).await;
            }
            lock(&shared.busy).remove(&id);
        });
    }
    Ok(())
}

async fn work_on(shared: &Arc<Shared>, id: &str) -> Result<(), StoreError> {
    let Some(batch) = shared.state.store.batch(id, None).await? else {
        return Ok(());
    };
    if batch.route == BY_GATEWAY {
        run_here(shared, batch).await
    } else {
        super::forward::step(&shared.state, batch).await
    }
}

/// Moves a batch to `status`, unless something else (a cancel) moved it first; `false` then.
pub(super) async fn settle(
    state: &AppState,
    batch: &mut BatchRecord,
    status: &str,
) -> Result<bool, StoreError> {
    let was = batch.status.clone();
    let now = Some(now_ms());
    batch.status = status.to_string();
    match status {
        "in_progress" => batch.in_progress_at = batch.in_progress_at.or(now),
        "finalizing" => batch.finalizing_at = batch.finalizing_at.or(now),
        "completed" => batch.completed_at = batch.completed_at.or(now),
        "failed" => batch.failed_at = batch.failed_at.or(now),
        "expired" => batch.expired_at = batch.expired_at.or(now),
        "cancelling" => batch.cancelling_at = batch.cancelling_at.or(now),
        "cancelled" => batch.cancelled_at = batch.cancelled_at.or(now),
        _ => {}
    }
    state.store.update_batch(batch, &was).await
}

/// Fails a batch as a whole, naming why.
async fn fail(
    state: &AppState,
    mut batch: BatchRecord,
    code: &str,
    message: &str,
) -> Result<(), StoreError> {
    tracing::warn!(batch = %batch.id, code, message, "batch failed");
    batch.errors = Some(errors_of(code, message));
    // Lines answered before (say, before a restart) still reach the client.
    let results = state.store.batch_results(&batch.id).await?;
    keep_results(state, &mut batch, &results).await?;
    settle(state, &mut batch, "failed").await.map(|_| ())
}

/// Keeps a result file as a gateway file of the batch's owner; its id.
pub(super) async fn keep_file(
    state: &AppState,
    owner: &str,
    filename: String,
    bytes: Bytes,
) -> Result<String, StoreError> {
    use sha2::Digest;
    let record = FileRecord {
        id: crate::files::new_id("batch"),
        owner: owner.to_string(),
        filename,
        purpose: "batch_output".into(),
        bytes: bytes.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        created_at: now_ms(),
    };
    if let Err(e) = state.files.put(&record.id, bytes).await {
        return Err(StoreError::Corrupt(format!("batch output not stored: {e}")));
    }
    state.store.add_file(&record).await?;
    Ok(record.id)
}

/// The key a batch acts for, as it is now (a key revoked since stops its batches).
pub(super) async fn caller_of(state: &AppState, batch: &BatchRecord) -> Option<Caller> {
    let hash: [u8; 32] = hex::decode(batch.key_hash.as_deref()?)
        .ok()?
        .try_into()
        .ok()?;
    state.auth.caller_by_hash(hash).await.ok()
}

async fn run_here(shared: &Arc<Shared>, mut batch: BatchRecord) -> Result<(), StoreError> {
    let state = &shared.state;
    if batch.status == "validating" && !settle(state, &mut batch, "in_progress").await? {
        return Ok(()); // cancelled meanwhile: the next round sees it
    }
    let Some(caller) = caller_of(state, &batch).await else {
        let message = "the key that made this batch is no longer usable";
        return fail(state, batch, "key_unusable", message).await;
    };
    let input = match state.files.get(&batch.input_file_id).await {
        Ok(bytes) => bytes,
        Err(e) => return fail(state, batch, "input_file_unreadable", &e.to_string()).await,
    };
    let lines = match validate::lines(&input, usize::MAX) {
        Ok(lines) => lines,
        Err(e) => return fail(state, batch, "invalid_input", &e.to_string()).await,
    };
    let done: HashSet<i64> = (state.store.batch_results(&batch.id).await?)
        .into_iter()
        .map(|r| r.line)
        .collect();
    let mut left = lines
        .into_iter()
        .filter(|l| !done.contains(&(l.number as i64)));
    let mut running = JoinSet::new();
    let poll = Duration::from_millis(state.config.batch.poll_ms.max(10));
    let lease = i64::try_from(state.config.batch.lease_ms).unwrap_or(i64::MAX / 2);
    let mut checked_at = tokio::time::Instant::now();
    let caller = Arc::new(caller);
    let mut stopped = batch.status != "in_progress";
    loop {
        // Now and then: renew the lease, and see whether the batch was cancelled or expired.
        if checked_at.elapsed() >= poll {
            checked_at = tokio::time::Instant::now();
            let now = now_ms();
            state
                .store
                .lease_batch(&batch.id, &shared.me, now, now + lease)
                .await?;
            let status = state.store.batch(&batch.id, None).await?.map(|b| b.status);
            if status.as_deref() != Some("in_progress") || now > batch.expires_at {
                stopped = true;
            }
        }
        if stopped || shared.closing.is_cancelled() {
            break;
        }
        let permit = tokio::select! {
            permit = shared.workers.clone().acquire_owned() => permit,
            _ = shared.closing.cancelled() => break,
            _ = tokio::time::sleep(poll) => continue,
        };
        let Ok(permit) = permit else { break };
        let Some(line) = left.next() else { break };
        let (state, caller, stop, id) = (
            state.clone(),
            caller.clone(),
            shared.stop.clone(),
            batch.id.clone(),
        );
        running.spawn(async move {
            state.batch_metrics.running(1);
            let result = super::line::run(&state, &caller, &id, &line, &stop).await;
            state.batch_metrics.running(-1);
            drop(permit);
            let Some(result) = result else { return Ok(()) };
            state
                .batch_metrics
                .lines(BY_GATEWAY, u64::from(result.ok), u64::from(!result.ok));
            state.store.add_batch_result(&id, &result).await
        });
        while let Some(kept) = running.try_join_next() {
            if let Ok(Err(e)) = kept {
                tracing::warn!(batch = %batch.id, error = %e, "batch result not kept");
            }
        }
    }
    while let Some(kept) = running.join_next().await {
        if let Ok(Err(e)) = kept {
            tracing::warn!(batch = %batch.id, error = %e, "batch result not kept");
        }
    }
    if shared.closing.is_cancelled() {
        return Ok(()); // the rest is for the next start
    }
    finish(state, batch).await
}

/// Writes the output and error files from what the lines answered and ends the batch:
/// `cancelled` if it was cancelled, `expired` past its window with lines left, else `completed`.
async fn finish(state: &AppState, mut batch: BatchRecord) -> Result<(), StoreError> {
    let Some(current) = state.store.batch(&batch.id, None).await? else {
        return Ok(());
    };
    batch = current;
    let results = state.store.batch_results(&batch.id).await?;
    let answered = results.len() as i64;
    let end = match batch.status.as_str() {
        "cancelling" => "cancelled",
        _ if answered < batch.total && now_ms() > batch.expires_at => "expired",
        "in_progress" if answered >= batch.total => "completed",
        // Lines left and nothing stopped it: another round runs them.
        _ => return Ok(()),
    };
    keep_results(state, &mut batch, &results).await?;
    settle(state, &mut batch, end).await?;
    Ok(())
}

/// Writes the output and error files of the lines answered, and the counts, into `batch`.
async fn keep_results(
    state: &AppState,
    batch: &mut BatchRecord,
    results: &[BatchResult],
) -> Result<(), StoreError> {
    let answered = results.len() as i64;
    let (mut output, mut errors) = (Vec::new(), Vec::new());
    for r in results {
        let file = if r.ok { &mut output } else { &mut errors };
        file.extend_from_slice(r.output.as_bytes());
        file.push(b'\n');
    }
    batch.completed = results.iter().filter(|r| r.ok).count() as i64;
    batch.failed = answered - batch.completed;
    if !output.is_empty() {
        let name = format!("{}_output.jsonl", batch.id);
        batch.output_file_id = Some(keep_file(state, &batch.owner, name, output.into()).await?);
    }
    if !errors.is_empty() {
        let name = format!("{}_error.jsonl", batch.id);
        batch.error_file_id = Some(keep_file(state, &batch.owner, name, errors.into()).await?);
    }
    batch.finalizing_at = Some(now_ms());
    Ok(())
}
