//! What a producer does with a partition's error in a Produce response, and what it may
//! tell the application about the records: retry (after a metadata refresh or not), and
//! whether the records were written — no, maybe, or yes. A wrong "no" is the worst
//! answer a client can give (the application may treat a written record as lost, and the
//! chaos suite counts it as an aborted read), so anything that may have been appended is
//! "maybe". The table follows Kafka's retriable flags and librdkafka's persistence
//! statuses (`rd_kafka_handle_Produce_error`), with one deliberate difference:
//! NOT_LEADER_OR_FOLLOWER is "maybe" when the request could have been appended before the
//! leader lost its leadership — Kafka answers a deposed leader's parked acks=all requests
//! with it (Sluice answers REQUEST_TIMED_OUT; see docs/reliability.md), and this client
//! talks to both.
//!
//! Invariant: only an answer that proves the broker refused the batch before appending
//! it says "not written".

use kafka_protocol::ResponseError;

/// Whether a failed batch's records may be in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// Refused before the append: not in the log.
    No,
    /// Appended, or perhaps: a reader may see them.
    Maybe,
    /// Written (a duplicate of a batch the broker already has).
    Yes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorAction {
    pub retriable: bool,
    /// The error says the client's metadata is stale (leader moved, topic unknown).
    pub refresh_metadata: bool,
    pub persisted: Persisted,
}

/// What to do with a partition's error `code` in a Produce response (0, no error: the
/// batch is written); `acks_all` says whether the request waited for the ISR (a deposed
/// leader may have appended it).
pub fn produce_error_action(code: i16, acks_all: bool) -> ErrorAction {
    use ResponseError as E;
    let Some(error) = ResponseError::try_from_code(code) else {
        return ErrorAction {
            retriable: false,
            refresh_metadata: false,
            persisted: Persisted::Yes,
        };
    };
    let (refresh_metadata, persisted) = match error {
        // answered before the append
        E::UnknownTopicOrPartition | E::LeaderNotAvailable => (true, Persisted::No),
        E::NotLeaderOrFollower if !acks_all => (true, Persisted::No),
        // a deposed leader answering a parked acks=all request (Kafka does)
        E::NotLeaderOrFollower => (true, Persisted::Maybe),
        E::KafkaStorageError => (true, Persisted::No),
        E::NotEnoughReplicas => (false, Persisted::No),
        // appended, not (yet) committed
        E::NotEnoughReplicasAfterAppend | E::RequestTimedOut => (false, Persisted::Maybe),
        // the broker has the batch already (an idempotent retry)
        E::DuplicateSequenceNumber => (false, Persisted::Yes),
        // sequence trouble, or a code this client does not know: no proof of a refusal
        E::OutOfOrderSequenceNumber | E::Unknown(_) => (false, Persisted::Maybe),
        // refused outright: bad input, too large, not allowed
        _ => (false, Persisted::No),
    };
    let retriable = match error {
        E::DuplicateSequenceNumber | E::OutOfOrderSequenceNumber => false,
        other => other.is_retriable(),
    };
    ErrorAction {
        retriable,
        refresh_metadata,
        persisted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResponseError as E;

    fn action(e: ResponseError, acks_all: bool) -> ErrorAction {
        produce_error_action(e.code(), acks_all)
    }

    #[test]
    fn a_leader_change_refreshes_metadata_and_retries() {
        for acks_all in [false, true] {
            let a = action(E::NotLeaderOrFollower, acks_all);
            assert!(a.retriable && a.refresh_metadata);
        }
        assert_eq!(
            action(E::NotLeaderOrFollower, false).persisted,
            Persisted::No
        );
        let a = action(E::UnknownTopicOrPartition, true);
        assert!(a.retriable && a.refresh_metadata && a.persisted == Persisted::No);
    }

    #[test]
    fn whatever_may_have_been_appended_is_never_reported_not_written() {
        // the answers a leader gives after appending: the chaos suite's aborted read
        for e in [
            E::RequestTimedOut,
            E::NotEnoughReplicasAfterAppend,
            E::NotLeaderOrFollower,
        ] {
            let a = action(e, true);
            assert_eq!(a.persisted, Persisted::Maybe, "{e:?}");
            assert!(a.retriable, "{e:?}");
        }
        // refused before the append
        let a = action(E::NotEnoughReplicas, true);
        assert_eq!((a.retriable, a.persisted), (true, Persisted::No));
    }

    #[test]
    fn bad_input_fails_at_once_and_duplicates_count_as_written() {
        // (Kafka calls CORRUPT_MESSAGE retriable: the bytes may have been damaged on the way)
        let a = action(E::CorruptMessage, true);
        assert_eq!((a.retriable, a.persisted), (true, Persisted::No));
        for e in [E::MessageTooLarge, E::InvalidRecord, E::RecordListTooLarge] {
            let a = action(e, true);
            assert!(!a.retriable, "{e:?}");
            assert_eq!(a.persisted, Persisted::No, "{e:?}");
        }
        let a = action(E::DuplicateSequenceNumber, true);
        assert_eq!((a.retriable, a.persisted), (false, Persisted::Yes));
        // a code this client does not know proves nothing
        assert_eq!(produce_error_action(999, true).persisted, Persisted::Maybe);
    }
}
