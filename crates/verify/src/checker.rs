//! Checks a recorded history (`history.rs`) for the anomalies Jepsen's Kafka tests look
//! for. The final read — every record of every partition after the faults healed — is
//! the truth the rest is held against:
//!
//! - **lost**: acknowledged, yet in no partition at the end.
//! - **changed-ack**: acknowledged at an offset that holds another value at the end (the
//!   acknowledged copy was truncated, even if a retry's copy survived elsewhere).
//! - **inconsistent-offset**: one offset seen with two values (by consumers or the end).
//! - **duplicate**: a value at two offsets. A producer without idempotence may write a
//!   value twice by its client's own retries: such copies all lie between the records
//!   acknowledged before the send began and those sent after it ended, and are counted
//!   apart (`retry-duplicate`). Any other copy — or any copy at all with idempotence — is
//!   an anomaly.
//! - **aborted-read**: a send the client reported as not written, read.
//! - **nonmonotonic-poll** / **poll-skip**: within one assignment, a consumer's offsets on
//!   a partition went back, or jumped over records that exist.
//! - **commit-lost**: a consumer given a partition started below the offset the group had
//!   committed for it (the lowest commit acknowledged from the last one before the
//!   assignment to its first poll): an acknowledged commit was lost.
//! - **commit-reordered** (measured, never a failure): an acknowledged commit lower than
//!   one acknowledged before it. Kafka accepts any committed offset, and librdkafka's
//!   asynchronous commits and their retries complete out of order under faults.
//! - **unseen**: acknowledged and present at the end, yet never polled by the group's
//!   consumers, which keep polling until they reach the end.
//! - **final-read-gap** / **incomplete-final-read**: the end state itself is not whole.
//! - **watermark-regressed**: a partition's high watermark, as clients read it
//!   (ListOffsets), lower than one read before it: committed records unseen again.
//! - **epoch-regressed**: in the final read, a record written in an older leader epoch
//!   than a record below it (a log's epochs never decrease along its offsets).
//!
//! With acks=1 (or 0) a leader's failure may lose acknowledged records: lost, changed-ack,
//! inconsistent-offset and poll anomalies are then measured and reported, not failures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use crate::history::Event;

/// The anomalies of one kind: how many, and a few examples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anomalies {
    pub count: usize,
    pub examples: Vec<String>,
}

const EXAMPLES: usize = 5;

impl Anomalies {
    fn add(&mut self, example: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example());
        }
    }
}

/// What the checker found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub topic: String,
    pub acks: String,
    pub idempotent: bool,
    pub consumers: u32,
    pub sends: usize,
    pub acked: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Sends with no outcome at all (the run ended first).
    pub pending: usize,
    /// Records in the final read.
    pub read: usize,
    /// Sends of unknown outcome that were written.
    pub unknown_written: usize,
    pub polls: usize,
    pub commits: usize,
    /// Commits the client reported failed (some may still have been applied).
    pub commits_failed: usize,
    pub faults: usize,
    pub retry_duplicates: usize,
    /// Acknowledged records that did not survive (lost or changed-ack), grouped into
    /// windows: per partition, acknowledgements less than a second apart.
    pub loss_windows: Vec<LossWindow>,
    /// By kind, in a fixed order (see [`KINDS`]).
    pub anomalies: BTreeMap<&'static str, Anomalies>,
}

/// A run of acknowledged records of one partition that did not survive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossWindow {
    pub partition: i32,
    pub first_ack_ms: u64,
    pub last_ack_ms: u64,
    pub records: usize,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The fault it came with: the last one to start before the window ended.
    pub fault: Option<String>,
}

/// Acknowledgements further apart than this start a new loss window.
const LOSS_WINDOW_GAP_MS: u64 = 1000;

fn loss_windows(mut truncated: Vec<(i32, u64, i64)>) -> Vec<LossWindow> {
    truncated.sort();
    let mut windows: Vec<LossWindow> = Vec::new();
    for (partition, ack_ms, offset) in truncated {
        match windows.last_mut() {
            Some(w) if w.partition == partition && ack_ms <= w.last_ack_ms + LOSS_WINDOW_GAP_MS => {
                w.last_ack_ms = ack_ms;
                w.records += 1;
                w.first_offset = w.first_offset.min(offset);
                w.last_offset = w.last_offset.max(offset);
            }
            _ => windows.push(LossWindow {
                partition,
                first_ack_ms: ack_ms,
                last_ack_ms: ack_ms,
                records: 1,
                first_offset: offset,
                last_offset: offset,
                fault: None,
            }),
        }
    }
    windows
}

/// Every kind the checker reports, in the order of its table.
pub const KINDS: &[&str] = &[
    "lost",
    "changed-ack",
    "inconsistent-offset",
    "duplicate",
    "aborted-read",
    "nonmonotonic-poll",
    "poll-skip",
    "commit-lost",
    "commit-reordered",
    "unseen",
    "final-read-gap",
    "incomplete-final-read",
    "watermark-regressed",
    "epoch-regressed",
];

/// Kinds that acks=1 or acks=0 allow (a leader's failure may lose acknowledged records).
const LOSSY_WITHOUT_ACKS_ALL: &[&str] = &[
    "lost",
    "changed-ack",
    "inconsistent-offset",
    "nonmonotonic-poll",
    "poll-skip",
    "unseen",
];

impl Report {
    fn kind(&mut self, kind: &'static str) -> &mut Anomalies {
        self.anomalies.entry(kind).or_default()
    }

    pub fn count(&self, kind: &str) -> usize {
        self.anomalies.get(kind).map_or(0, |a| a.count)
    }

    /// Whether `kind` makes the run fail under this run's settings.
    pub fn is_failure(&self, kind: &str) -> bool {
        kind != "commit-reordered"
            && (self.acks == "all" || !LOSSY_WITHOUT_ACKS_ALL.contains(&kind))
    }

    /// True when no anomaly that counts as a failure was found.
    pub fn valid(&self) -> bool {
        KINDS
            .iter()
            .all(|k| self.count(k) == 0 || !self.is_failure(k))
    }

    /// The report as a table, then examples of each anomaly found.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "topic {}  acks={}  idempotence {}  consumers {}",
            self.topic,
            self.acks,
            if self.idempotent { "on" } else { "off" },
            self.consumers
        );
        let _ = writeln!(
            out,
            "sends {}: acknowledged {}, failed {}, unknown {} ({} of them written), no outcome {}",
            self.sends, self.acked, self.failed, self.unknown, self.unknown_written, self.pending
        );
        let _ = writeln!(
            out,
            "final read {} records; consumers polled {}, committed {} times ({} failed); faults {}; retry duplicates {}",
            self.read, self.polls, self.commits, self.commits_failed, self.faults, self.retry_duplicates
        );
        let _ = writeln!(out, "{:<24} {:>9}  verdict", "anomaly", "count");
        for kind in KINDS {
            let n = self.count(kind);
            let verdict = match (n, self.is_failure(kind)) {
                (0, _) => "ok",
                (_, true) => "FAIL",
                (_, false) if *kind == "commit-reordered" => "measured",
                (_, false) => "allowed by acks",
            };
            let _ = writeln!(out, "{kind:<24} {n:>9}  {verdict}");
        }
        if !self.loss_windows.is_empty() {
            let _ = writeln!(
                out,
                "acknowledged records that did not survive, in {} windows:",
                self.loss_windows.len()
            );
            for w in self.loss_windows.iter().take(20) {
                let _ = writeln!(
                    out,
                    "  partition {}: {} records acknowledged over {} ms (at {}..{} ms), offsets {}..{}{}",
                    w.partition,
                    w.records,
                    w.last_ack_ms - w.first_ack_ms,
                    w.first_ack_ms,
                    w.last_ack_ms,
                    w.first_offset,
                    w.last_offset,
                    w.fault
                        .as_ref()
                        .map(|f| format!("; with {f}"))
                        .unwrap_or_default()
                );
            }
        }
        for kind in KINDS {
            if let Some(a) = self.anomalies.get(kind).filter(|a| a.count > 0) {
                let _ = writeln!(out, "{kind}:");
                for e in &a.examples {
                    let _ = writeln!(out, "  {e}");
                }
            }
        }
        let _ = writeln!(out, "{}", if self.valid() { "VALID" } else { "INVALID" });
        out
    }
}

#[derive(Default)]
struct Send {
    invoke_ms: u64,
    /// When the outcome came (None: never).
    end_ms: Option<u64>,
    acked_at: Option<(i32, i64)>,
    ack_ms: Option<u64>,
    failed: bool,
    unknown: bool,
}

/// Checks `events` (a whole history).
pub fn check(events: &[Event]) -> Report {
    let mut report = Report::default();
    for kind in KINDS {
        report.kind(kind);
    }
    let mut sends: HashMap<&str, Send> = HashMap::new();
    // the final read: partition -> offset -> value, and each value's copies
    let mut finals: BTreeMap<i32, BTreeMap<i64, &str>> = BTreeMap::new();
    let mut final_ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut copies: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    // every value seen at each offset, by anyone
    let mut seen_at: HashMap<(i32, i64), HashSet<&str>> = HashMap::new();
    let mut polled: HashSet<&str> = HashSet::new();
    // the highest watermark read so far per partition, and when
    let mut watermarks: HashMap<i32, (i64, u64)> = HashMap::new();
    let mut epochs: BTreeMap<i32, BTreeMap<i64, i32>> = BTreeMap::new();
    let mut nemeses: Vec<(u64, &str)> = Vec::new();

    for event in events {
        match event {
            Event::Start {
                topic,
                acks,
                idempotent,
                consumers,
                ..
            } => {
                report.topic = topic.clone();
                report.acks = acks.clone();
                report.idempotent = *idempotent;
                report.consumers = *consumers;
            }
            Event::Invoke { time_ms, value, .. } => {
                report.sends += 1;
                sends.entry(value).or_default().invoke_ms = *time_ms;
            }
            Event::Ok {
                time_ms,
                value,
                partition,
                offset,
                ..
            } => {
                let s = sends.entry(value).or_default();
                s.end_ms = Some(*time_ms);
                s.ack_ms = Some(*time_ms);
                if *offset >= 0 {
                    s.acked_at = Some((*partition, *offset));
                }
                report.acked += 1;
            }
            Event::Fail { time_ms, value, .. } => {
                let s = sends.entry(value).or_default();
                s.end_ms = Some(*time_ms);
                s.failed = true;
                report.failed += 1;
            }
            Event::Info { time_ms, value, .. } => {
                let s = sends.entry(value).or_default();
                s.end_ms = Some(*time_ms);
                s.unknown = true;
                report.unknown += 1;
            }
            Event::Poll {
                partition,
                offset,
                value,
                ..
            } => {
                report.polls += 1;
                polled.insert(value);
                seen_at
                    .entry((*partition, *offset))
                    .or_default()
                    .insert(value);
            }
            Event::Commit { .. } => report.commits += 1,
            Event::CommitFailed { .. } => report.commits_failed += 1,
            Event::FinalEnd {
                partition,
                end_offset,
            } => {
                final_ends.insert(*partition, *end_offset);
            }
            Event::Watermark {
                time_ms,
                partition,
                high,
            } => match watermarks.get(partition) {
                Some((max, at)) if high < max => report.kind("watermark-regressed").add(|| {
                    format!("partition {partition}: {high} at {time_ms} ms after {max} at {at} ms")
                }),
                Some((max, _)) if high == max => {}
                _ => {
                    watermarks.insert(*partition, (*high, *time_ms));
                }
            },
            Event::Final {
                partition,
                offset,
                value,
                leader_epoch,
            } => {
                if let Some(epoch) = leader_epoch {
                    epochs
                        .entry(*partition)
                        .or_default()
                        .insert(*offset, *epoch);
                }
                report.read += 1;
                finals.entry(*partition).or_default().insert(*offset, value);
                copies.entry(value).or_default().push((*partition, *offset));
                seen_at
                    .entry((*partition, *offset))
                    .or_default()
                    .insert(value);
            }
            Event::Nemesis { time_ms, what, .. } => {
                report.faults += 1;
                nemeses.push((*time_ms, what.as_str()));
            }
            Event::Assign { .. } => {}
        }
    }
    report.pending = sends.values().filter(|s| s.end_ms.is_none()).count();
    let mut truncated = Vec::new();

    // the end state is whole: every offset from the first read to the end holds a record
    for (partition, end) in &final_ends {
        let offsets = finals.get(partition);
        let read = offsets.map_or(0, |o| o.len() as i64);
        let first = offsets
            .and_then(|o| o.keys().next().copied())
            .unwrap_or(*end);
        if offsets
            .and_then(|o| o.keys().next_back())
            .copied()
            .unwrap_or(-1)
            + 1
            < *end
        {
            report.kind("incomplete-final-read").add(|| {
                format!("partition {partition}: read {read} records, the log ends at {end}")
            });
        } else if read != end - first {
            report.kind("final-read-gap").add(|| {
                format!("partition {partition}: {read} records between offsets {first} and {end}")
            });
        }
    }

    for (value, s) in &sends {
        let at = copies.get(value);
        if s.unknown && at.is_some() {
            report.unknown_written += 1;
        }
        if s.failed && (at.is_some() || polled.contains(value)) {
            report
                .kind("aborted-read")
                .add(|| format!("{value}: reported not written, read at {at:?}"));
        }
        if let Some((partition, offset)) = s.acked_at {
            let ack_ms = s.ack_ms.unwrap_or_default();
            match at {
                None => {
                    truncated.push((partition, ack_ms, offset));
                    report.kind("lost").add(|| {
                        format!("{value}: acknowledged at {partition}/{offset}, absent at the end")
                    })
                }
                Some(_) => {
                    let holds = finals.get(&partition).and_then(|o| o.get(&offset)).copied();
                    if holds != Some(value) {
                        truncated.push((partition, ack_ms, offset));
                        report.kind("changed-ack").add(|| {
                            format!(
                                "{value}: acknowledged at {partition}/{offset}, which holds {holds:?} at the end"
                            )
                        });
                    }
                }
            }
            if report.consumers > 0 && at.is_some() && !polled.contains(value) {
                report
                    .kind("unseen")
                    .add(|| format!("{value} ({partition}/{offset}) never polled"));
            }
        }
    }

    report.loss_windows = loss_windows(truncated);
    nemeses.sort();
    for w in &mut report.loss_windows {
        let i = nemeses.partition_point(|(t, _)| *t <= w.last_ack_ms);
        w.fault = i
            .checked_sub(1)
            .map(|i| format!("{} at {} ms", nemeses[i].1, nemeses[i].0));
    }

    for ((partition, offset), values) in &seen_at {
        if values.len() > 1 {
            let mut v: Vec<&&str> = values.iter().collect();
            v.sort();
            report
                .kind("inconsistent-offset")
                .add(|| format!("{partition}/{offset} seen with {v:?}"));
        }
    }

    for (partition, by_offset) in &epochs {
        let mut highest: Option<(i64, i32)> = None;
        for (offset, epoch) in by_offset {
            if let Some((below, e)) = highest.filter(|(_, e)| epoch < e) {
                report.kind("epoch-regressed").add(|| {
                    format!("partition {partition}: offset {offset} in epoch {epoch}, offset {below} below it in epoch {e}")
                });
            } else {
                highest = Some((*offset, *epoch));
            }
        }
    }

    duplicates(&mut report, &sends, &copies);
    polls_and_commits(&mut report, events, &finals);
    report
}

/// Sorts each value with more than one copy into retry duplicates and anomalies.
fn duplicates(
    report: &mut Report,
    sends: &HashMap<&str, Send>,
    copies: &HashMap<&str, Vec<(i32, i64)>>,
) {
    if !copies.values().any(|c| c.len() > 1) {
        return;
    }
    // per partition: acknowledgements by time with the highest offset so far, and
    // sends by invoke time with the lowest offset of their copies from there on
    let mut acks: HashMap<i32, Vec<(u64, i64)>> = HashMap::new();
    let mut invokes: HashMap<i32, Vec<(u64, i64)>> = HashMap::new();
    for (value, s) in sends {
        if let (Some((p, o)), Some(t)) = (s.acked_at, s.ack_ms) {
            acks.entry(p).or_default().push((t, o));
        }
        for (p, o) in copies.get(value).into_iter().flatten() {
            invokes.entry(*p).or_default().push((s.invoke_ms, *o));
        }
    }
    for v in acks.values_mut() {
        v.sort();
        let mut max = i64::MIN;
        for e in v.iter_mut() {
            max = max.max(e.1);
            e.1 = max;
        }
    }
    for v in invokes.values_mut() {
        v.sort();
        let mut min = i64::MAX;
        for e in v.iter_mut().rev() {
            min = min.min(e.1);
            e.1 = min;
        }
    }
    for (value, at) in copies {
        if at.len() < 2 {
            continue;
        }
        let s = sends.get(value);
        let describe = || {
            let offsets: Vec<String> = at.iter().map(|(p, o)| format!("{p}/{o}")).collect();
            format!("{value} at {}", offsets.join(", "))
        };
        let explained = !report.idempotent
            && s.is_some_and(|s| {
                at.iter().all(|(p, o)| {
                    // acknowledged before the send began: appended before any copy
                    let lo = acks.get(p).and_then(|v| {
                        let i = v.partition_point(|(t, _)| *t < s.invoke_ms);
                        i.checked_sub(1).map(|i| v[i].1)
                    });
                    // sent after it ended: appended after every copy
                    let hi = s.end_ms.and_then(|end| {
                        let v = invokes.get(p)?;
                        v.get(v.partition_point(|(t, _)| *t <= end)).map(|e| e.1)
                    });
                    lo.is_none_or(|lo| *o > lo) && hi.is_none_or(|hi| *o < hi)
                })
            });
        if explained {
            report.retry_duplicates += 1;
        } else {
            report.kind("duplicate").add(describe);
        }
    }
}

/// Per consumer and assignment, offsets only go forward and skip nothing that exists;
/// a consumer given a partition starts no lower than what the group had committed.
fn polls_and_commits(
    report: &mut Report,
    events: &[Event],
    finals: &BTreeMap<i32, BTreeMap<i64, &str>>,
) {
    let mut positions: HashMap<u32, HashMap<i32, i64>> = HashMap::new();
    let mut committed: HashMap<i32, (i64, u32)> = HashMap::new();
    // (consumer, partition) assigned and not polled yet -> the lowest commit it may see
    let mut starts: HashMap<(u32, i32), i64> = HashMap::new();
    for event in events {
        match event {
            Event::Assign {
                consumer,
                partitions,
                ..
            } => {
                positions.remove(consumer);
                starts.retain(|(c, _), _| c != consumer);
                for p in partitions {
                    if let Some((offset, _)) = committed.get(p) {
                        starts.insert((*consumer, *p), *offset);
                    }
                }
            }
            Event::Poll {
                consumer,
                partition,
                offset,
                ..
            } => {
                if let Some(floor) = starts.remove(&(*consumer, *partition)) {
                    if *offset < floor {
                        report.kind("commit-lost").add(|| {
                            format!(
                                "consumer {consumer} started partition {partition} at {offset}, below the committed {floor}"
                            )
                        });
                    }
                }
                let last = positions
                    .entry(*consumer)
                    .or_default()
                    .insert(*partition, *offset);
                let Some(last) = last else { continue };
                if *offset <= last {
                    report.kind("nonmonotonic-poll").add(|| {
                        format!(
                            "consumer {consumer}, partition {partition}: offset {offset} after {last}"
                        )
                    });
                } else if *offset > last + 1 {
                    let skipped = finals
                        .get(partition)
                        .map_or(0, |o| o.range(last + 1..*offset).count());
                    if skipped > 0 {
                        report.kind("poll-skip").add(|| {
                            format!(
                                "consumer {consumer}, partition {partition}: {last} then {offset}, skipping {skipped} records"
                            )
                        });
                    }
                }
            }
            Event::Commit {
                consumer,
                partition,
                offset,
                ..
            } => {
                // a commit acknowledged before a new owner's first poll may be what it reads
                for ((_, p), floor) in starts.iter_mut() {
                    if p == partition {
                        *floor = (*floor).min(*offset);
                    }
                }
                if let Some((before, by)) = committed.get(partition).copied() {
                    if *offset < before {
                        report.kind("commit-reordered").add(|| {
                            format!(
                                "partition {partition}: consumer {consumer} committed {offset} after consumer {by} committed {before}"
                            )
                        });
                    }
                }
                committed.insert(*partition, (*offset, *consumer));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(acks: &str, idempotent: bool, consumers: u32) -> Event {
        Event::Start {
            topic: "t".into(),
            partitions: 1,
            acks: acks.into(),
            idempotent,
            producers: 1,
            consumers,
            wall_clock_ms: None,
        }
    }
    fn invoke(t: u64, v: &str) -> Event {
        Event::Invoke {
            time_ms: t,
            producer: 0,
            value: v.into(),
        }
    }
    fn ok(t: u64, v: &str, offset: i64) -> Event {
        Event::Ok {
            time_ms: t,
            producer: 0,
            value: v.into(),
            partition: 0,
            offset,
        }
    }
    fn fin(offset: i64, v: &str) -> Event {
        Event::Final {
            partition: 0,
            offset,
            value: v.into(),
            leader_epoch: None,
        }
    }
    fn end(end_offset: i64) -> Event {
        Event::FinalEnd {
            partition: 0,
            end_offset,
        }
    }
    fn poll(consumer: u32, offset: i64, v: &str) -> Event {
        Event::Poll {
            time_ms: 0,
            consumer,
            partition: 0,
            offset,
            value: v.into(),
        }
    }

    #[test]
    fn a_clean_history_is_valid() {
        let h = vec![
            start("all", false, 1),
            invoke(1, "a"),
            ok(2, "a", 0),
            invoke(3, "b"),
            ok(4, "b", 1),
            poll(0, 0, "a"),
            poll(0, 1, "b"),
            end(2),
            fin(0, "a"),
            fin(1, "b"),
        ];
        let r = check(&h);
        assert!(r.valid(), "{}", r.table());
        assert_eq!((r.sends, r.acked, r.read, r.polls), (2, 2, 2, 2));
    }

    #[test]
    fn a_lost_acknowledged_write_fails_acks_all_and_is_measured_with_acks_1() {
        let history = |acks: &str| {
            vec![
                start(acks, false, 0),
                invoke(1, "a"),
                ok(2, "a", 0),
                invoke(3, "b"),
                ok(4, "b", 1),
                end(1),
                fin(0, "a"),
            ]
        };
        let r = check(&history("all"));
        assert_eq!(r.count("lost"), 1);
        assert!(!r.valid());
        assert!(r.table().contains("lost"));
        let r = check(&history("1"));
        assert_eq!(r.count("lost"), 1);
        assert!(r.valid(), "{}", r.table());
        assert_eq!(r.loss_windows.len(), 1);
        assert!(r
            .table()
            .contains("partition 0: 1 records acknowledged over 0 ms"));
        // with the fault that came before it named
        let mut h = history("1");
        for (t, what) in [(1, "kill -9 node 1"), (3, "SIGSTOP node 2"), (9, "later")] {
            h.push(Event::Nemesis {
                time_ms: t,
                healed_ms: Some(t + 1),
                what: what.into(),
            });
        }
        let r = check(&h);
        assert_eq!(r.faults, 3);
        assert!(
            r.table()
                .contains("offsets 1..1; with SIGSTOP node 2 at 3 ms"),
            "{}",
            r.table()
        );
    }

    #[test]
    fn truncated_acknowledgements_are_grouped_into_loss_windows() {
        let r = loss_windows(vec![
            (0, 5000, 12),
            (0, 4000, 10),
            (1, 4100, 7),
            (0, 4500, 11),
            // more than a second after the last one: a window of its own
            (0, 9000, 40),
        ]);
        assert_eq!(
            r,
            vec![
                LossWindow {
                    partition: 0,
                    first_ack_ms: 4000,
                    last_ack_ms: 5000,
                    records: 3,
                    first_offset: 10,
                    last_offset: 12,
                    fault: None
                },
                LossWindow {
                    partition: 0,
                    first_ack_ms: 9000,
                    last_ack_ms: 9000,
                    records: 1,
                    first_offset: 40,
                    last_offset: 40,
                    fault: None
                },
                LossWindow {
                    partition: 1,
                    first_ack_ms: 4100,
                    last_ack_ms: 4100,
                    records: 1,
                    first_offset: 7,
                    last_offset: 7,
                    fault: None
                },
            ]
        );
    }

    #[test]
    fn an_acknowledged_offset_holding_another_value_is_changed_ack() {
        // b was acknowledged at 1, then truncated; a retry's copy of b survived at 2
        let h = vec![
            start("all", false, 0),
            invoke(1, "a"),
            ok(2, "a", 0),
            invoke(3, "b"),
            ok(5, "b", 1),
            invoke(6, "c"),
            ok(7, "c", 1),
            end(3),
            fin(0, "a"),
            fin(1, "c"),
            fin(2, "b"),
        ];
        let r = check(&h);
        assert_eq!(r.count("changed-ack"), 1, "{}", r.table());
        assert_eq!(r.count("lost"), 0);
    }

    #[test]
    fn duplicates_within_the_send_are_retries_unless_idempotent() {
        // b's send ran from 3 to 10; c was sent after it ended
        let history = |idempotent: bool, second_copy: i64| {
            let mut h = vec![
                start("all", idempotent, 0),
                invoke(1, "a"),
                ok(2, "a", 0),
                invoke(3, "b"),
                ok(10, "b", 1),
                invoke(11, "c"),
                ok(12, "c", 3),
                end(4),
                fin(0, "a"),
                fin(1, "b"),
            ];
            if second_copy == 2 {
                h.extend([fin(2, "b"), fin(3, "c")]);
            } else {
                h.extend([fin(2, "c"), fin(3, "b")]);
            }
            h
        };
        let r = check(&history(false, 2));
        assert_eq!((r.retry_duplicates, r.count("duplicate")), (1, 0));
        assert!(r.valid(), "{}", r.table());
        let r = check(&history(true, 2));
        assert_eq!((r.retry_duplicates, r.count("duplicate")), (0, 1));
        assert!(!r.valid());
        // a copy after a record sent once b's send had ended: no retry explains it
        let r = check(&history(false, 3));
        assert_eq!(r.count("duplicate"), 1, "{}", r.table());
    }

    #[test]
    fn a_failed_send_that_was_read_is_an_aborted_read() {
        let h = vec![
            start("all", false, 0),
            invoke(1, "a"),
            Event::Fail {
                time_ms: 2,
                producer: 0,
                value: "a".into(),
                error: "MSG_SIZE_TOO_LARGE".into(),
            },
            end(1),
            fin(0, "a"),
        ];
        assert_eq!(check(&h).count("aborted-read"), 1);
    }

    #[test]
    fn polls_go_forward_within_an_assignment() {
        let h = vec![
            start("all", false, 2),
            Event::Assign {
                time_ms: 0,
                consumer: 0,
                partitions: vec![0],
            },
            poll(0, 0, "a"),
            poll(0, 2, "c"),
            poll(0, 1, "b"),
            // a new assignment may start anywhere
            Event::Assign {
                time_ms: 0,
                consumer: 0,
                partitions: vec![0],
            },
            poll(0, 0, "a"),
            // another consumer reads a different value at offset 1
            poll(1, 1, "x"),
            end(3),
            fin(0, "a"),
            fin(1, "b"),
            fin(2, "c"),
        ];
        let r = check(&h);
        assert_eq!(r.count("poll-skip"), 1, "{}", r.table());
        assert_eq!(r.count("nonmonotonic-poll"), 1);
        assert_eq!(r.count("inconsistent-offset"), 1);
    }

    #[test]
    fn a_new_owner_starting_below_the_committed_offset_is_a_lost_commit() {
        let commit = |consumer: u32, offset: i64| Event::Commit {
            time_ms: 0,
            consumer,
            partition: 0,
            offset,
        };
        let assign = |consumer: u32| Event::Assign {
            time_ms: 0,
            consumer,
            partitions: vec![0],
        };
        let h = vec![
            start("all", false, 2),
            commit(0, 2),
            commit(0, 3),
            // a retried older commit completes late: reordered, not a failure
            commit(0, 1),
            commit(0, 3),
            assign(1),
            poll(1, 2, "c"),
            end(4),
            fin(0, "a"),
            fin(1, "b"),
            fin(2, "c"),
            fin(3, "d"),
        ];
        let r = check(&h);
        assert_eq!(r.count("commit-reordered"), 1);
        assert_eq!(r.count("commit-lost"), 1, "{}", r.table());
        assert!(!r.valid());
        // the late older commit acknowledged after the assignment may be what it reads
        let h = vec![
            start("all", false, 2),
            commit(0, 3),
            assign(1),
            commit(0, 2),
            poll(1, 2, "c"),
            end(3),
            fin(0, "a"),
            fin(1, "b"),
            fin(2, "c"),
        ];
        let r = check(&h);
        assert_eq!(r.count("commit-lost"), 0, "{}", r.table());
        assert!(r.valid(), "{}", r.table());
    }

    #[test]
    fn the_final_read_must_be_whole() {
        let h = vec![start("all", false, 0), end(3), fin(0, "a"), fin(2, "c")];
        assert_eq!(check(&h).count("final-read-gap"), 1);
        let h = vec![start("all", false, 0), end(3), fin(0, "a")];
        assert_eq!(check(&h).count("incomplete-final-read"), 1);
    }

    #[test]
    fn acknowledged_records_the_consumers_never_polled_are_unseen() {
        let h = vec![
            start("all", false, 1),
            invoke(1, "a"),
            ok(2, "a", 0),
            end(1),
            fin(0, "a"),
        ];
        assert_eq!(check(&h).count("unseen"), 1);
    }
    #[test]
    fn a_high_watermark_read_lower_than_before_is_a_regression() {
        let mark = |t: u64, partition: i32, high: i64| Event::Watermark {
            time_ms: t,
            partition,
            high,
        };
        let h = vec![
            start("all", false, 0),
            mark(1, 0, 5),
            mark(2, 1, 9),
            mark(3, 0, 7),
            mark(4, 0, 7),
            // another partition's lower mark is no regression
            mark(5, 1, 9),
            end(0),
        ];
        assert!(check(&h).valid(), "{}", check(&h).table());
        let mut h = h;
        h.insert(5, mark(5, 0, 6));
        let r = check(&h);
        assert_eq!(r.count("watermark-regressed"), 1, "{}", r.table());
        assert!(r.anomalies["watermark-regressed"].examples[0].contains("6 at 5 ms after 7"));
        assert!(!r.valid());
    }

    #[test]
    fn a_record_of_an_older_epoch_above_a_newer_one_is_an_epoch_regression() {
        let fin_in = |offset: i64, v: &str, epoch: i32| Event::Final {
            partition: 0,
            offset,
            value: v.into(),
            leader_epoch: Some(epoch),
        };
        let h = |epochs: [i32; 3]| {
            vec![
                start("all", false, 0),
                invoke(1, "a"),
                ok(2, "a", 0),
                invoke(1, "b"),
                ok(2, "b", 1),
                invoke(1, "c"),
                ok(2, "c", 2),
                end(3),
                fin_in(0, "a", epochs[0]),
                fin_in(1, "b", epochs[1]),
                fin_in(2, "c", epochs[2]),
            ]
        };
        assert!(check(&h([0, 2, 2])).valid());
        let r = check(&h([0, 3, 2]));
        assert_eq!(r.count("epoch-regressed"), 1, "{}", r.table());
        assert!(!r.valid());
    }
}
