//! The records a group coordinator writes to its `__consumer_offsets` partition.
//!
//! The byte format is Kafka's own (`OffsetCommitKey`/`OffsetCommitValue`,
//! `GroupMetadataKey`/`GroupMetadataValue` in Kafka's group-coordinator module), in the
//! non-flexible versions Kafka 2.3+ writes, so Kafka's tooling can read fjord's partition and
//! the format carries its own versioning. All integers are big-endian; a string is an `i16`
//! byte length then UTF-8 (`-1` = null where nullable); bytes are an `i32` length then data;
//! an array is an `i32` count then its elements. Every key and value starts with an `i16`
//! version, and the key's version says what kind of record it is:
//!
//! ```text
//! key v1   OffsetCommitKey     group: string, topic: string, partition: i32
//!   value v3 OffsetCommitValue offset: i64, leader_epoch: i32, metadata: string,
//!                              commit_timestamp: i64
//! key v2   GroupMetadataKey    group: string
//!   value v3 GroupMetadataValue protocol_type: string, generation: i32,
//!                              protocol: string?, leader: string?, current_state_timestamp: i64,
//!                              members: [member_id: string, group_instance_id: string?,
//!                                        client_id: string, client_host: string,
//!                                        rebalance_timeout: i32, session_timeout: i32,
//!                                        subscription: bytes, assignment: bytes]
//! ```
//!
//! A record with a null value is a tombstone: it deletes its key. Keys hold exactly the
//! identity of what they describe (group, topic, partition), so compaction keeps the latest
//! committed offset per partition and the latest metadata per group. Only these versions are
//! read back; anything else is a [`RecordError`] (fjord is the only writer of its partitions).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Key version of an offset commit record (Kafka's `OffsetCommitKey`, versions 0 and 1 share a
/// layout; Kafka writes 1).
pub const OFFSET_KEY_VERSION: i16 = 1;
/// Key version of a group metadata record (Kafka's `GroupMetadataKey`).
pub const GROUP_KEY_VERSION: i16 = 2;
/// Value version of an offset commit (`OffsetCommitValue` v3: with leader epoch, without the
/// per-commit expire timestamp).
pub const OFFSET_VALUE_VERSION: i16 = 3;
/// Value version of group metadata (`GroupMetadataValue` v3: with state timestamp and group
/// instance ids).
pub const GROUP_VALUE_VERSION: i16 = 3;

/// Why a stored key or value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is truncated ({0})")]
    Truncated(&'static str),
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
    #[error("unsupported key version {0}")]
    KeyVersion(i16),
    #[error("unsupported value version {version} for key version {key_version}")]
    ValueVersion { key_version: i16, version: i16 },
    #[error("negative length {0}")]
    NegativeLength(i32),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("null where a value is required ({0})")]
    Null(&'static str),
}

/// What a record is about: its key, decoded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

/// A committed offset (the value of an offset commit record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// -1 when the client did not say.
    pub leader_epoch: i32,
    /// The client's metadata string; "" when it sent none (as Kafka stores it).
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// A group's persisted state (the value of a group metadata record): what a new coordinator
/// needs so that a stable group stays stable across failover and generations never repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp_ms: i64,
    pub members: Vec<MemberValue>,
}

/// One member of a persisted group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's selected protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// Longest string the format can hold (`i16` length).
pub const STRING_MAX_BYTES: usize = i16::MAX as usize;

fn put_string(buf: &mut BytesMut, s: &str) {
    assert!(s.len() <= STRING_MAX_BYTES, "string of {} bytes", s.len());
    buf.put_i16(s.len() as i16);
    buf.put_slice(s.as_bytes());
}

fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    assert!(b.len() <= i32::MAX as usize);
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

fn string_len(s: &str) -> usize {
    2 + s.len()
}

/// The key of `group`'s committed offset for `topic`/`partition`.
///
/// Panics if a name exceeds [`STRING_MAX_BYTES`]; the coordinator bounds them first.
pub fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut buf = BytesMut::with_capacity(2 + string_len(group) + string_len(topic) + 4);
    buf.put_i16(OFFSET_KEY_VERSION);
    put_string(&mut buf, group);
    put_string(&mut buf, topic);
    buf.put_i32(partition);
    buf.freeze()
}

/// The key of `group`'s metadata.
pub fn group_key(group: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(2 + string_len(group));
    buf.put_i16(GROUP_KEY_VERSION);
    put_string(&mut buf, group);
    buf.freeze()
}

impl OffsetValue {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(2 + 8 + 4 + string_len(&self.metadata) + 8);
        buf.put_i16(OFFSET_VALUE_VERSION);
        buf.put_i64(self.offset);
        buf.put_i32(self.leader_epoch);
        put_string(&mut buf, &self.metadata);
        buf.put_i64(self.commit_timestamp_ms);
        buf.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<OffsetValue, RecordError> {
        let mut r = Reader(bytes);
        let version = r.i16("offset value version")?;
        if version != OFFSET_VALUE_VERSION {
            return Err(RecordError::ValueVersion {
                key_version: OFFSET_KEY_VERSION,
                version,
            });
        }
        let value = OffsetValue {
            offset: r.i64("offset")?,
            leader_epoch: r.i32("leader epoch")?,
            metadata: r.string("metadata")?,
            commit_timestamp_ms: r.i64("commit timestamp")?,
        };
        r.finish()?;
        Ok(value)
    }
}

impl MemberValue {
    fn encoded_len(&self) -> usize {
        string_len(&self.member_id)
            + self.group_instance_id.as_deref().map_or(2, string_len)
            + string_len(&self.client_id)
            + string_len(&self.client_host)
            + 4
            + 4
            + 4
            + self.subscription.len()
            + 4
            + self.assignment.len()
    }
}

impl GroupValue {
    /// Size of [`GroupValue::encode`]'s output, computed without encoding.
    pub fn encoded_len(&self) -> usize {
        2 + string_len(&self.protocol_type)
            + 4
            + self.protocol.as_deref().map_or(2, string_len)
            + self.leader.as_deref().map_or(2, string_len)
            + 8
            + 4
            + self
                .members
                .iter()
                .map(MemberValue::encoded_len)
                .sum::<usize>()
    }

    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        buf.put_i16(GROUP_VALUE_VERSION);
        put_string(&mut buf, &self.protocol_type);
        buf.put_i32(self.generation);
        put_nullable_string(&mut buf, self.protocol.as_deref());
        put_nullable_string(&mut buf, self.leader.as_deref());
        buf.put_i64(self.state_timestamp_ms);
        assert!(self.members.len() <= i32::MAX as usize);
        buf.put_i32(self.members.len() as i32);
        for m in &self.members {
            put_string(&mut buf, &m.member_id);
            put_nullable_string(&mut buf, m.group_instance_id.as_deref());
            put_string(&mut buf, &m.client_id);
            put_string(&mut buf, &m.client_host);
            buf.put_i32(m.rebalance_timeout_ms);
            buf.put_i32(m.session_timeout_ms);
            put_bytes(&mut buf, &m.subscription);
            put_bytes(&mut buf, &m.assignment);
        }
        debug_assert_eq!(buf.len(), self.encoded_len());
        buf.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<GroupValue, RecordError> {
        let mut r = Reader(bytes);
        let version = r.i16("group value version")?;
        if version != GROUP_VALUE_VERSION {
            return Err(RecordError::ValueVersion {
                key_version: GROUP_KEY_VERSION,
                version,
            });
        }
        let protocol_type = r.string("protocol type")?;
        let generation = r.i32("generation")?;
        let protocol = r.nullable_string("protocol")?;
        let leader = r.nullable_string("leader")?;
        let state_timestamp_ms = r.i64("state timestamp")?;
        let count = r.len("members")?;
        // Each member takes at least 28 bytes, so the count is bounded by the input.
        let mut members = Vec::with_capacity(count.min(r.0.len() / 28));
        for _ in 0..count {
            members.push(MemberValue {
                member_id: r.string("member id")?,
                group_instance_id: r.nullable_string("group instance id")?,
                client_id: r.string("client id")?,
                client_host: r.string("client host")?,
                rebalance_timeout_ms: r.i32("rebalance timeout")?,
                session_timeout_ms: r.i32("session timeout")?,
                subscription: r.bytes("subscription")?,
                assignment: r.bytes("assignment")?,
            });
        }
        r.finish()?;
        Ok(GroupValue {
            protocol_type,
            generation,
            protocol,
            leader,
            state_timestamp_ms,
            members,
        })
    }
}

/// Decodes a record key.
pub fn decode_key(bytes: &[u8]) -> Result<RecordKey, RecordError> {
    let mut r = Reader(bytes);
    let key = match r.i16("key version")? {
        0 | OFFSET_KEY_VERSION => RecordKey::Offset {
            group: r.string("group")?,
            topic: r.string("topic")?,
            partition: r.i32("partition")?,
        },
        GROUP_KEY_VERSION => RecordKey::Group {
            group: r.string("group")?,
        },
        other => return Err(RecordError::KeyVersion(other)),
    };
    r.finish()?;
    Ok(key)
}

/// A bounds-checked big-endian reader.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn need(&self, n: usize, what: &'static str) -> Result<(), RecordError> {
        if self.0.len() < n {
            Err(RecordError::Truncated(what))
        } else {
            Ok(())
        }
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, RecordError> {
        self.need(2, what)?;
        Ok(self.0.get_i16())
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, RecordError> {
        self.need(4, what)?;
        Ok(self.0.get_i32())
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, RecordError> {
        self.need(8, what)?;
        Ok(self.0.get_i64())
    }

    fn len(&mut self, what: &'static str) -> Result<usize, RecordError> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| RecordError::NegativeLength(n))
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], RecordError> {
        self.need(n, what)?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn nullable_string(&mut self, what: &'static str) -> Result<Option<String>, RecordError> {
        let n = self.i16(what)?;
        if n < 0 {
            return Ok(None);
        }
        let raw = self.take(n as usize, what)?;
        String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|_| RecordError::Utf8)
    }

    fn string(&mut self, what: &'static str) -> Result<String, RecordError> {
        self.nullable_string(what)?.ok_or(RecordError::Null(what))
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, RecordError> {
        let n = self.len(what)?;
        Ok(Bytes::copy_from_slice(self.take(n, what)?))
    }

    fn finish(&self) -> Result<(), RecordError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RecordError::Trailing(self.0.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_key_is_kafkas_layout() {
        let key = offset_key("g", "t", 3);
        assert_eq!(&key[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 3]);
        assert_eq!(
            decode_key(&key),
            Ok(RecordKey::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3
            })
        );
        assert_eq!(&group_key("g")[..], &[0, 2, 0, 1, b'g']);
    }

    #[test]
    fn offset_value_round_trips_with_kafkas_layout() {
        let v = OffsetValue {
            offset: 7,
            leader_epoch: -1,
            metadata: "m".into(),
            commit_timestamp_ms: 1,
        };
        let bytes = v.encode();
        let mut expected = vec![0, 3, 0, 0, 0, 0, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff, 0, 1];
        expected.extend_from_slice(b"m");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&bytes[..], &expected[..]);
        assert_eq!(OffsetValue::decode(&bytes), Ok(v));
    }

    #[test]
    fn group_value_round_trips() {
        let v = GroupValue {
            protocol_type: "consumer".into(),
            generation: 4,
            protocol: Some("range".into()),
            leader: None,
            state_timestamp_ms: 99,
            members: vec![MemberValue {
                member_id: "m-1".into(),
                group_instance_id: Some("i".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300,
                session_timeout_ms: 100,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::new(),
            }],
        };
        let bytes = v.encode();
        assert_eq!(bytes.len(), v.encoded_len());
        assert_eq!(GroupValue::decode(&bytes), Ok(v));
    }

    #[test]
    fn malformed_records_are_errors() {
        assert_eq!(decode_key(&[0]), Err(RecordError::Truncated("key version")));
        assert_eq!(decode_key(&[0, 9]), Err(RecordError::KeyVersion(9)));
        assert_eq!(
            decode_key(&[0, 2, 0, 5, b'g']),
            Err(RecordError::Truncated("group"))
        );
        assert_eq!(
            decode_key(&[0, 2, 0, 1, b'g', 0]),
            Err(RecordError::Trailing(1))
        );
        assert_eq!(
            decode_key(&[0, 2, 0xff, 0xff]),
            Err(RecordError::Null("group"))
        );
        assert_eq!(
            OffsetValue::decode(&[0, 1]),
            Err(RecordError::ValueVersion {
                key_version: OFFSET_KEY_VERSION,
                version: 1
            })
        );
        let mut group = GroupValue {
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: None,
            leader: None,
            state_timestamp_ms: 0,
            members: vec![],
        }
        .encode()
        .to_vec();
        let count_at = group.len() - 4;
        group[count_at..].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            GroupValue::decode(&group),
            Err(RecordError::NegativeLength(-1))
        );
        group[count_at..].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(
            GroupValue::decode(&group),
            Err(RecordError::Truncated("member id"))
        );
    }
}
