//! Gathers the offset commits of every group this broker coordinates into few controller
//! calls: while one `CommitOffsets` call is in flight, the commits that arrive queue up,
//! and the next call carries all of them (up to [`MAX_OFFSETS_PER_CALL`]) as one Raft
//! entry. Under load a commit costs a share of a Raft round trip, not one of its own;
//! alone, it costs exactly one.
//!
//! Each commit is its own record, fenced by the coordinator it was made under (the
//! broker and its epoch on the group's slot): a commit from a broker that no longer
//! coordinates the group is refused, the others in the entry still apply.
//!
//! Calls are numbered (per broker registration, one at a time in flight): a call that
//! timed out here may still reach the controller later (a TCP retransmission after a
//! partition heals, a forward from a follower controller), and the metadata image refuses
//! it once a later call of this broker applied. Without that, a consumer's older offsets
//! could overwrite newer ones acknowledged since.
//!
//! Invariants: commits reach the controller in the order they were handed in and apply
//! in that order (a member's later commit never lands before its earlier one, nor is
//! overwritten by it); each caller is answered only after the call carrying its offsets
//! returned, with its own record's outcome.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_metadata::error_code as ec;
use sluice_metadata::proto::controller as api;
use sluice_metadata::proto::metadata as pb;
use sluice_metadata::CommittedOffset;
use tokio::sync::{mpsc, oneshot};

use crate::controller_client::ControllerClients;

/// How many partition offsets one controller call carries at most (about 100 bytes each,
/// far below the controller's 8 MiB entry limit).
pub const MAX_OFFSETS_PER_CALL: usize = 20_000;
/// How long one call may wait for the controller quorum. One call is in flight at a time:
/// that keeps batches largest (four in flight measured no better, docs/benchmarks.md, the
/// quorum's own work being the limit), and numbered calls must apply in order.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a commit was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The committing broker no longer coordinates the group at the epoch it committed
    /// under (the group moved): nothing was committed.
    #[error("no longer the group's coordinator")]
    NotCoordinator,
    /// The controller answered with an error: nothing was committed.
    #[error("the controller refused the commit: {0}")]
    Refused(String),
    /// No answer in time: the commit may or may not have been committed.
    #[error("the commit was not acknowledged: {0}")]
    NotAcknowledged(String),
}

/// The coordinator a commit is made under: applied only while `broker_id` still owns the
/// group's slot at `epoch`.
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    pub broker_id: i32,
    pub epoch: i32,
}

struct Pending {
    offsets: Vec<CommittedOffset>,
    fence: Fence,
    answer: oneshot::Sender<Result<(), CommitError>>,
}

/// The handle handlers commit through; its task ends when the handle is dropped.
pub struct OffsetCommitBatcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl OffsetCommitBatcher {
    /// Starts the batching task (call inside a tokio runtime); `broker_epoch` is this
    /// broker's registration (-1 while unregistered), which numbers its calls.
    pub fn start(controllers: ControllerClients, broker_epoch: Arc<AtomicI64>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(controllers, broker_epoch, rx));
        OffsetCommitBatcher { queue }
    }

    /// Commits `offsets` (of one group) in the quorum under `fence`; returns once they
    /// are committed (or not).
    pub async fn commit(
        &self,
        offsets: Vec<CommittedOffset>,
        fence: Fence,
    ) -> Result<(), CommitError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending {
                offsets,
                fence,
                answer,
            })
            .map_err(|_| CommitError::NotAcknowledged("the broker is stopping".into()))?;
        answered
            .await
            .map_err(|_| CommitError::NotAcknowledged("the broker is stopping".into()))?
    }
}

async fn run(
    controllers: ControllerClients,
    broker_epoch: Arc<AtomicI64>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    let mut carried: Option<Pending> = None;
    let mut call_sequence = 0i64;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut count = first.offsets.len();
        let mut batch = vec![first];
        while count < MAX_OFFSETS_PER_CALL {
            match queue.try_recv() {
                Ok(p) if count + p.offsets.len() > MAX_OFFSETS_PER_CALL => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    count += p.offsets.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        call_sequence += 1;
        let numbered = CallNumber {
            broker_epoch: broker_epoch.load(Ordering::Acquire),
            sequence: call_sequence,
        };
        call(&controllers, batch, count, numbered).await;
    }
}

/// Which call of which registration of this broker.
#[derive(Debug, Clone, Copy)]
struct CallNumber {
    broker_epoch: i64,
    sequence: i64,
}

/// One controller call carrying `batch` (`count` offsets), each commit its own fenced
/// record in one Raft entry; answers every caller in it.
async fn call(
    controllers: &ControllerClients,
    mut batch: Vec<Pending>,
    count: usize,
    number: CallNumber,
) {
    // the offsets move into the request: the callers only need their answers
    let commits: Vec<pb::CommitOffsets> = batch
        .iter_mut()
        .map(|p| pb::CommitOffsets {
            offsets: std::mem::take(&mut p.offsets),
            fenced: true,
            coordinator_broker_id: p.fence.broker_id,
            coordinator_epoch: p.fence.epoch,
            // (unregistered, -1: refused, as no registration has that epoch)
            committer_broker_epoch: number.broker_epoch,
            call_sequence: number.sequence,
        })
        .collect();
    let outcome = controllers
        .call(CONTROLLER_TIMEOUT, |mut c| {
            let request = api::CommitOffsetsRequest {
                offsets: Vec::new(),
                commits: commits.clone(),
            };
            async move { c.commit_offsets(request).await }
        })
        .await;
    tracing::trace!(
        commits = batch.len(),
        offsets = count,
        "offset commit batch"
    );
    match outcome {
        Ok(r) if r.error_codes.len() == batch.len() => {
            for (p, code) in batch.into_iter().zip(r.error_codes) {
                let result = match code as i16 {
                    ec::NONE => Ok(()),
                    ec::NOT_COORDINATOR => Err(CommitError::NotCoordinator),
                    other => Err(CommitError::Refused(format!("error {other}"))),
                };
                // a caller that went away (its connection closed) needs no answer
                let _ = p.answer.send(result);
            }
        }
        Ok(r) => {
            let why = format!(
                "{} answers for {} commits: {}",
                r.error_codes.len(),
                batch.len(),
                r.error_message
            );
            for p in batch {
                let _ = p.answer.send(Err(CommitError::Refused(why.clone())));
            }
        }
        Err(status) => {
            for p in batch {
                let _ = p
                    .answer
                    .send(Err(CommitError::NotAcknowledged(status.to_string())));
            }
        }
    }
}
