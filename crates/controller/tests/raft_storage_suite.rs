//! openraft's own storage conformance suite against the file-backed log store and the
//! metadata state machine (34 cases: log state, purge/truncate edges, vote, apply,
//! snapshots, re-apply after restart).

use openraft::testing::{StoreBuilder, Suite};
use sluice_controller::raft_log_store::RaftLogStore;
use sluice_controller::raft_types::{StorageError, TypeConfig};
use sluice_controller::state_machine::MetadataStateMachine;

struct Builder;

impl StoreBuilder<TypeConfig, RaftLogStore, MetadataStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, RaftLogStore, MetadataStateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = RaftLogStore::open(dir.path()).expect("open raft log");
        let sm =
            MetadataStateMachine::open(dir.path(), "test-cluster").expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("storage suite: {e}");
    }
}
