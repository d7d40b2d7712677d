//! Expiry of committed offsets (`offsets.retention.minutes`, KIP-211's rules), computed by
//! the controller leader over its image and committed as ordinary records, so every
//! replica of the metadata log drops the same offsets:
//! - a group that used the group protocol (its coordinator stored a state) keeps all its
//!   offsets while it has members; once it is empty, they expire together when the
//!   retention has passed since it became empty and since its last commit — the group
//!   goes with them (`DeleteGroups`);
//! - offsets committed outside the group protocol (no stored state: a consumer assigning
//!   its own partitions) expire one by one, each the retention after its own commit
//!   (`DeleteOffsets`; the group goes once none is left).

use sluice_metadata::proto::metadata as pb;
use sluice_metadata::{MetadataImage, Record};

/// The records that expire what `retention_ms` says is due at `now_ms`.
pub fn expired(image: &MetadataImage, now_ms: i64, retention_ms: i64) -> Vec<Record> {
    let due = |at_ms: i64| at_ms.saturating_add(retention_ms) < now_ms;
    let mut whole_groups = Vec::new();
    let mut records = Vec::new();
    for group in image.group_ids() {
        let offsets = image.committed_offsets(&group, &[]);
        let newest_commit_ms = offsets
            .iter()
            .map(|o| o.commit_timestamp_ms)
            .max()
            .unwrap_or(i64::MIN);
        match image.stored_group(&group) {
            Some(stored) if !stored.members.is_empty() => {}
            Some(stored) => {
                if due(stored.state_timestamp_ms.max(newest_commit_ms)) {
                    whole_groups.push(group);
                }
            }
            None => {
                let gone: Vec<pb::OffsetPartition> = offsets
                    .iter()
                    .filter(|o| due(o.commit_timestamp_ms))
                    .map(|o| pb::OffsetPartition {
                        topic: o.topic.clone(),
                        partition: o.partition,
                    })
                    .collect();
                if gone.len() == offsets.len() {
                    whole_groups.push(group);
                } else if !gone.is_empty() {
                    records.push(Record::DeleteOffsets(pb::DeleteOffsets {
                        group,
                        partitions: gone,
                    }));
                }
            }
        }
    }
    if !whole_groups.is_empty() {
        records.push(Record::DeleteGroups(pb::DeleteGroups {
            group_ids: whole_groups,
        }));
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition_election::tests::apply;
    use sluice_metadata::{CommittedOffset, StoredGroupMember};

    const RETENTION_MS: i64 = 1000;

    fn commit(group: &str, partition: i32, at_ms: i64) -> Record {
        Record::CommitOffsets(pb::CommitOffsets {
            offsets: vec![CommittedOffset {
                group: group.into(),
                topic: "t".into(),
                partition,
                offset: 10,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: at_ms,
            }],
            ..Default::default()
        })
    }

    /// An image with one live broker (1) owning every coordinator slot at epoch 0.
    fn image() -> MetadataImage {
        let mut image = MetadataImage::new("c");
        apply(
            &mut image,
            vec![Record::RegisterBroker(pb::RegisterBroker {
                broker_id: 1,
                incarnation_id: "i1".into(),
                ..Default::default()
            })],
        );
        let epoch = image.broker(1).map(|b| b.broker_epoch).unwrap_or_default();
        apply(
            &mut image,
            vec![Record::UnfenceBroker(pb::UnfenceBroker {
                broker_id: 1,
                broker_epoch: epoch,
            })],
        );
        if let Some(moves) = crate::coordinator_placement::moves(&image) {
            apply(&mut image, vec![moves]);
        }
        image
    }

    fn store(group: &str, members: usize, at_ms: i64) -> Record {
        Record::StoreGroup(pb::StoreGroup {
            group: Some(pb::StoredGroup {
                group_id: group.into(),
                protocol_type: "consumer".into(),
                generation: 1,
                members: (0..members)
                    .map(|i| StoredGroupMember {
                        member_id: format!("m{i}"),
                        ..Default::default()
                    })
                    .collect(),
                coordinator_broker_id: 1,
                coordinator_epoch: 0,
                state_timestamp_ms: at_ms,
                ..Default::default()
            }),
        })
    }

    #[test]
    fn an_active_group_keeps_old_offsets_an_emptied_one_loses_them_after_the_retention() {
        let mut image = image();
        apply(
            &mut image,
            vec![commit("active", 0, 0), store("active", 2, 0)],
        );
        apply(
            &mut image,
            vec![commit("emptied", 0, 0), store("emptied", 0, 5000)],
        );
        // long after every commit: the active group keeps its offsets; the emptied one
        // only once the retention has passed since it became empty
        assert!(expired(&image, 5500, RETENTION_MS).is_empty());
        let records = expired(&image, 6500, RETENTION_MS);
        apply(&mut image, records);
        assert!(image.committed_offsets("emptied", &[]).is_empty());
        assert!(image.stored_group("emptied").is_none());
        assert_eq!(image.committed_offsets("active", &[]).len(), 1);
    }

    #[test]
    fn offsets_committed_outside_the_group_protocol_expire_one_by_one() {
        let mut image = image();
        apply(
            &mut image,
            vec![commit("standalone", 0, 0), commit("standalone", 1, 3000)],
        );
        let records = expired(&image, 2000, RETENTION_MS);
        apply(&mut image, records);
        let left: Vec<i32> = image
            .committed_offsets("standalone", &[])
            .iter()
            .map(|o| o.partition)
            .collect();
        assert_eq!(left, vec![1]);
        let records = expired(&image, 4500, RETENTION_MS);
        apply(&mut image, records);
        assert!(image.group_ids().is_empty());
    }
}
