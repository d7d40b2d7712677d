//! Where groups are coordinated: the coordinator slots' brokers, a pure function of the
//! image. Slot `s` prefers the registered broker at `s % n` in id order (n registered
//! brokers), and falls to the next live one in that order; with no live broker it has none
//! (-1). The controller commits the moves (`MoveCoordinators`) in the same entry as the
//! liveness change that causes them, each moved slot's epoch one higher, so every broker
//! answers FindCoordinator the same way for the same image, and a returning broker gets
//! its preferred slots back (spreading groups evenly again).

use sluice_metadata::proto::metadata as pb;
use sluice_metadata::{MetadataImage, Record, COORDINATOR_SLOTS, NO_LEADER};

/// The broker each slot should have now.
fn preferred(image: &MetadataImage, slot: i32) -> i32 {
    let registered: Vec<i32> = image.brokers().map(|b| b.broker_id).collect();
    let live = image.live_broker_ids();
    if registered.is_empty() {
        return NO_LEADER;
    }
    let n = registered.len();
    (0..n)
        .map(|k| registered[(slot as usize + k) % n])
        .find(|b| live.contains(b))
        .unwrap_or(NO_LEADER)
}

/// The record that moves every slot whose broker is not the one it should have now (None
/// when every slot is where it should be).
pub fn moves(image: &MetadataImage) -> Option<Record> {
    let slots: Vec<pb::CoordinatorSlot> = (0..COORDINATOR_SLOTS)
        .filter_map(|slot| {
            let broker_id = preferred(image, slot);
            let current = image.coordinators().find(|c| c.slot == slot);
            match current {
                Some(c) if c.broker_id == broker_id => None,
                // never placed and nowhere to go: nothing to record
                None if broker_id == NO_LEADER => None,
                _ => Some(pb::CoordinatorSlot {
                    slot,
                    broker_id,
                    epoch: current.map_or(0, |c| c.epoch + 1),
                }),
            }
        })
        .collect();
    (!slots.is_empty()).then_some(Record::MoveCoordinators(pb::MoveCoordinators { slots }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition_election::tests::apply;
    use sluice_metadata::{MetadataBatch, MetadataRecord};

    fn set_live(image: &mut MetadataImage, id: i32, live: bool) {
        let epoch = image.broker(id).unwrap().broker_epoch;
        let record = if live {
            Record::UnfenceBroker(pb::UnfenceBroker {
                broker_id: id,
                broker_epoch: epoch,
            })
        } else {
            Record::FenceBroker(pb::FenceBroker {
                broker_id: id,
                broker_epoch: epoch,
            })
        };
        apply(image, vec![record]);
        if let Some(m) = moves(image) {
            apply(image, vec![m]);
        }
    }

    fn owners(image: &MetadataImage) -> Vec<(i32, i32)> {
        image
            .coordinators()
            .map(|c| (c.broker_id, c.epoch))
            .collect()
    }

    #[test]
    fn slots_spread_over_live_brokers_move_on_fencing_and_come_back() {
        let mut image = MetadataImage::new("c");
        assert!(moves(&image).is_none(), "no broker: nothing placed");
        for id in 1..=3 {
            apply(
                &mut image,
                vec![Record::RegisterBroker(pb::RegisterBroker {
                    broker_id: id,
                    incarnation_id: format!("i{id}"),
                    ..Default::default()
                })],
            );
        }
        assert!(
            moves(&image).is_none(),
            "registered but fenced: nothing placed"
        );
        set_live(&mut image, 1, true);
        assert!(owners(&image).iter().all(|&(b, e)| (b, e) == (1, 0)));
        set_live(&mut image, 2, true);
        set_live(&mut image, 3, true);
        let count =
            |image: &MetadataImage, id| image.coordinators().filter(|c| c.broker_id == id).count();
        // evenly spread: 50 slots over 3 brokers
        assert_eq!(
            (count(&image, 1), count(&image, 2), count(&image, 3)),
            (17, 17, 16)
        );
        assert!(moves(&image).is_none(), "stable");
        // broker 2 goes: its slots move to the next live broker, one epoch up
        let before = owners(&image);
        set_live(&mut image, 2, false);
        assert_eq!(count(&image, 2), 0);
        for (slot, (&(b0, e0), &(b1, e1))) in before.iter().zip(&owners(&image)).enumerate() {
            if b0 == 2 {
                assert_eq!((b1, e1), (3, e0 + 1), "slot {slot}");
            } else {
                assert_eq!((b1, e1), (b0, e0), "slot {slot}");
            }
        }
        // it returns: its slots come back
        set_live(&mut image, 2, true);
        assert_eq!(
            (count(&image, 1), count(&image, 2), count(&image, 3)),
            (17, 17, 16)
        );
        // every broker gone: no coordinator
        for id in 1..=3 {
            set_live(&mut image, id, false);
        }
        assert!(image.coordinators().all(|c| c.broker_id == NO_LEADER));
        // a move to a fenced broker is refused by the image
        let bad = Record::MoveCoordinators(pb::MoveCoordinators {
            slots: vec![pb::CoordinatorSlot {
                slot: 0,
                broker_id: 1,
                epoch: image.coordinators().next().unwrap().epoch + 1,
            }],
        });
        let out = image.apply(
            image.applied_index() + 1,
            &MetadataBatch {
                records: vec![MetadataRecord { record: Some(bad) }],
            },
        );
        assert!(!out[0].is_ok());
    }
}
