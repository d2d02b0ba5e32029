//! Fetch requests and what comes back: turning a partition's fetched bytes into records.
//!
//! A broker answers with whole stored batches, so the first batch may start before the
//! offset asked for (those records are skipped) and the last may be cut short by the byte
//! limit (it is ignored; the next fetch asks for it again). Control batches (transaction
//! markers, fjord's leader-change no-ops) are skipped but advance the position, as are
//! offsets compaction removed: the next position is the end of the last complete batch.

use std::collections::BTreeMap;
use std::time::Duration;

use fjord_log::{BatchError, BatchIter};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::ConsumerRecord;
use crate::client::error::Error;
use crate::client::metadata::TopicPartition;

/// ListOffsets timestamp for the log start.
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// ListOffsets timestamp for the high watermark.
pub const LATEST_TIMESTAMP: i64 = -1;

/// Records parsed from one partition's fetched bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub records: Vec<ConsumerRecord>,
    /// Where the next fetch starts: after the last complete batch, or the requested offset
    /// if none was complete.
    pub next_offset: i64,
}

/// Parses the record batches fetched for `tp` at `fetch_offset`.
pub fn parse_fetched(tp: &TopicPartition, data: &[u8], fetch_offset: i64) -> Result<Parsed, Error> {
    let mut records = Vec::new();
    let mut next_offset = fetch_offset;
    let corrupt = |offset: i64, reason: String| Error::CorruptRecord {
        topic: tp.topic.clone(),
        partition: tp.partition,
        offset,
        reason,
    };
    for item in BatchIter::new(data) {
        let (header, bytes) = match item {
            Ok(batch) => batch,
            // A batch cut by the response's byte limit: fetched again next time.
            Err(BatchError::Truncated { .. }) => break,
            Err(e) => return Err(corrupt(next_offset, e.to_string())),
        };
        let batch_next = i64::try_from(header.next_offset()).unwrap_or(i64::MAX);
        if batch_next <= fetch_offset {
            continue;
        }
        if !header.is_control() {
            let decoded = fjord_log::decode_records(bytes)
                .map_err(|e| corrupt(header.base_offset as i64, e.to_string()))?;
            for r in decoded {
                let offset = r.offset as i64;
                if offset < fetch_offset {
                    continue;
                }
                records.push(ConsumerRecord {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                    timestamp: r.timestamp_ms,
                });
            }
        }
        next_offset = next_offset.max(batch_next);
    }
    Ok(Parsed {
        records,
        next_offset,
    })
}

/// Byte and time limits of fetches.
#[derive(Clone, Copy, Debug)]
pub struct FetchLimits {
    pub max_wait: Duration,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
}

fn topic_name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_string()))
}

/// A sessionless Fetch (session id 0, epoch -1: no incremental fetch sessions) for
/// `positions`, read_uncommitted.
pub fn fetch_request(
    positions: &BTreeMap<TopicPartition, i64>,
    limits: FetchLimits,
) -> FetchRequest {
    let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for (tp, offset) in positions {
        topics.entry(tp.topic.as_str()).or_default().push(
            FetchPartition::default()
                .with_partition(tp.partition)
                .with_fetch_offset(*offset)
                .with_current_leader_epoch(-1)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(limits.partition_max_bytes),
        );
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(i32::try_from(limits.max_wait.as_millis()).unwrap_or(i32::MAX))
        .with_min_bytes(limits.min_bytes)
        .with_max_bytes(limits.max_bytes)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, partitions)| {
                    FetchTopic::default()
                        .with_topic(topic_name(t))
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

/// ListOffsets for `partitions` at `timestamp` (or [`EARLIEST_TIMESTAMP`] /
/// [`LATEST_TIMESTAMP`]).
pub fn list_offsets_request(partitions: &[TopicPartition], timestamp: i64) -> ListOffsetsRequest {
    let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
    for tp in partitions {
        topics.entry(tp.topic.as_str()).or_default().push(
            ListOffsetsPartition::default()
                .with_partition_index(tp.partition)
                .with_timestamp(timestamp)
                .with_current_leader_epoch(-1),
        );
    }
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(0)
        .with_topics(
            topics
                .into_iter()
                .map(|(t, partitions)| {
                    ListOffsetsTopic::default()
                        .with_name(topic_name(t))
                        .with_partitions(partitions)
                })
                .collect(),
        )
}

/// Records of a partition fetched and not yet returned by `poll`.
#[derive(Debug)]
pub(crate) struct Buffered {
    pub(crate) tp: TopicPartition,
    pub(crate) records: std::collections::VecDeque<ConsumerRecord>,
    /// The position once all of them are returned.
    pub(crate) next_offset: i64,
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
    use fjord_log::{build_batch, BuildOptions, Compression, RecordSpec};

    use super::*;

    /// A value as text ("" for none).
    pub(crate) fn value_str(value: &Option<Bytes>) -> String {
        value
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    fn batch(base: u64, values: &[&str], compression: Compression) -> Bytes {
        let specs: Vec<RecordSpec> = values
            .iter()
            .map(|v| RecordSpec {
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::copy_from_slice(v.as_bytes())),
                headers: vec![("h".into(), None)],
                timestamp_ms: 1000 + base as i64,
            })
            .collect();
        build_batch(
            &specs,
            &BuildOptions {
                base_offset: base,
                compression,
                ..BuildOptions::default()
            },
        )
        .expect("batch")
    }

    fn offsets(p: &Parsed) -> Vec<i64> {
        p.records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn records_below_the_fetch_offset_are_skipped() {
        let tp = TopicPartition::new("t", 0);
        let mut data = batch(10, &["a", "b", "c", "d"], Compression::Lz4).to_vec();
        data.extend_from_slice(&batch(14, &["e", "f"], Compression::None));
        let p = parse_fetched(&tp, &data, 12).expect("parses");
        assert_eq!(offsets(&p), [12, 13, 14, 15]);
        assert_eq!(p.next_offset, 16);
        assert_eq!(value_str(&p.records[0].value), "c");
        assert_eq!(p.records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(p.records[0].headers, [("h".to_string(), None)]);
        assert_eq!(p.records[0].timestamp, 1010);
        assert_eq!(p.records[0].topic, "t");
    }

    #[test]
    fn a_truncated_last_batch_is_left_for_the_next_fetch() {
        let tp = TopicPartition::new("t", 0);
        let mut data = batch(0, &["a", "b"], Compression::None).to_vec();
        let second = batch(2, &["c"], Compression::None);
        data.extend_from_slice(&second[..second.len() - 3]);
        let p = parse_fetched(&tp, &data, 0).expect("parses");
        assert_eq!(offsets(&p), [0, 1]);
        assert_eq!(p.next_offset, 2);
        // Only a partial batch: no progress, no error.
        let p = parse_fetched(&tp, &second[..20], 2).expect("parses");
        assert_eq!((p.records.len(), p.next_offset), (0, 2));
    }

    #[test]
    fn control_batches_are_skipped_but_advance_the_position() {
        let tp = TopicPartition::new("t", 0);
        let mut data = batch(0, &["a"], Compression::None).to_vec();
        let mut marker = fjord_log::leader_change_batch(3, 1, 5).to_vec();
        fjord_log::batch::set_base_offset(&mut marker, 1).expect("offset");
        data.extend_from_slice(&marker);
        let p = parse_fetched(&tp, &data, 0).expect("parses");
        assert_eq!(offsets(&p), [0]);
        assert_eq!(p.next_offset, 2);
        // A gap (compaction removed offsets 2..5) moves the position past it.
        data.extend_from_slice(&batch(5, &["z"], Compression::None));
        let p = parse_fetched(&tp, &data, 1).expect("parses");
        assert_eq!(offsets(&p), [5]);
        assert_eq!(p.next_offset, 6);
    }

    #[test]
    fn a_corrupt_batch_is_an_error() {
        let tp = TopicPartition::new("t", 0);
        let mut data = batch(0, &["a"], Compression::None).to_vec();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        assert!(matches!(
            parse_fetched(&tp, &data, 0),
            Err(Error::CorruptRecord { offset: 0, .. })
        ));
    }

    #[test]
    fn requests_group_partitions_by_topic() {
        let positions: BTreeMap<TopicPartition, i64> = [
            (TopicPartition::new("a", 1), 5),
            (TopicPartition::new("a", 0), 7),
            (TopicPartition::new("b", 0), 0),
        ]
        .into_iter()
        .collect();
        let limits = FetchLimits {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 1 << 20,
            partition_max_bytes: 1 << 16,
        };
        let r = fetch_request(&positions, limits);
        assert_eq!(r.replica_id, BrokerId(-1));
        assert_eq!((r.max_wait_ms, r.session_epoch), (500, -1));
        assert_eq!(r.topics.len(), 2);
        let a = &r.topics[0];
        assert_eq!(a.topic.0.as_str(), "a");
        let fetch: Vec<(i32, i64)> = a
            .partitions
            .iter()
            .map(|p| (p.partition, p.fetch_offset))
            .collect();
        assert_eq!(fetch, [(0, 7), (1, 5)]);
        let l = list_offsets_request(&[TopicPartition::new("a", 0)], EARLIEST_TIMESTAMP);
        assert_eq!(l.topics[0].partitions[0].timestamp, -2);
    }
}
