//! Kafka RecordBatch v2 (magic 2) framing: the unit the log stores, replicates and serves.
//!
//! ```text
//! offset  size  field                     covered by CRC
//!      0     8  base_offset               no  (set by the leader on append)
//!      8     4  batch_length              no  (bytes after this field)
//!     12     4  partition_leader_epoch    no  (set by the leader on append: the Raft term)
//!     16     1  magic (= 2)               no
//!     17     4  crc (CRC32C of 21..end)   -
//!     21     2  attributes                yes (bits 0-2 compression, 3 timestamp type,
//!                                               4 transactional, 5 control, 6 delete horizon)
//!     23     4  last_offset_delta         yes
//!     27     8  base_timestamp            yes
//!     35     8  max_timestamp             yes
//!     43     8  producer_id               yes
//!     51     2  producer_epoch            yes
//!     53     4  base_sequence             yes
//!     57     4  records_count             yes
//!     61     -  records (maybe compressed) yes
//! ```
//!
//! The log keeps batches byte-for-byte as producers sent them, rewriting only the two fields
//! outside the CRC, so reads hand stored bytes to consumers without re-encoding.
//!
//! # Stored form: a checksum over the whole batch
//!
//! Kafka's CRC leaves the first 17 bytes (base offset, length, leader epoch, magic)
//! unprotected, and a bit flip there at rest would move a batch to other offsets or another
//! Raft term without any check noticing. On disk, fjord therefore keeps the batch in its
//! *stored form*: the CRC field holds `kafka_crc ^ crc32c(bytes[0..17])`, which covers every
//! byte of the batch ([`seal`]). Reading a batch back verifies that ([`validate_stored`]) and
//! puts the Kafka CRC back ([`unseal_first`]) — which costs nothing extra, since verifying
//! computes the Kafka CRC anyway. Nothing else differs, so framing, sizes and positions are
//! the same in both forms. Any bytes in the stored form never leave the log. Individual
//! records are built and decoded with `kafka_protocol::records` (tests, the broker, Raft
//! no-ops, compaction), never by hand here.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::{Encodable, StrBytes};
pub use kafka_protocol::records::Compression;
use kafka_protocol::records::{
    Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Bytes before `batch_length`'s count starts: base offset (8) + batch length (4).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// Size of a v2 batch header, records excluded (Kafka's `RECORD_BATCH_OVERHEAD`).
pub const BATCH_HEADER_SIZE_BYTES: usize = 61;
/// Largest batch (header included) the log accepts, stores or serves. Kafka's default
/// `message.max.bytes` is 1 MiB and may be raised; fjord's hard ceiling is 8 MiB, so that a
/// batch always fits in one network frame (`FRAME_SIZE_MAX_BYTES`, 16 MiB) with room for a
/// Raft message around it. Brokers may enforce a lower, configurable limit.
pub const BATCH_SIZE_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Smallest encoded v2 record: length, attributes, timestamp delta, offset delta, key length,
/// value length, header count (one byte each).
pub const RECORD_SIZE_MIN_BYTES: usize = 7;
/// Most records [`decode_records`] materialises from one batch: decoding allocates per record,
/// and a compressed batch's count is not bounded by its size.
pub const DECODE_RECORDS_MAX_COUNT: usize = 1 << 18;
/// The only batch format fjord stores.
pub const MAGIC_V2: i8 = 2;

const CRC_START: usize = 21;
const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;

/// Control record type of KRaft's LeaderChange record (Kafka's `ControlRecordType`).
pub const CONTROL_TYPE_LEADER_CHANGE: i16 = 2;

/// Why bytes are not an acceptable batch. Caused by input (a producer, a peer, a disk that
/// flipped bits): never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than the header (or than `batch_length` says): a torn or cut batch.
    #[error("truncated batch: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    /// `batch_length` is below the header size or the batch exceeds [`BATCH_SIZE_MAX_BYTES`].
    #[error("batch length {batch_length} out of range")]
    LengthOutOfRange { batch_length: i32 },
    /// Not a v2 batch (v0/v1 message sets are rejected, as Kafka 4 does).
    #[error("unsupported magic {0}")]
    UnsupportedMagic(i8),
    /// The stored CRC does not match the content.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    /// Compression codec bits name no known codec.
    #[error("unknown compression codec {0}")]
    UnknownCompression(i16),
    /// `base_offset` is negative or `base_offset + last_offset_delta` overflows.
    #[error("invalid offsets: base {base_offset}, last delta {last_offset_delta}")]
    InvalidOffsets {
        base_offset: i64,
        last_offset_delta: i32,
    },
    /// `records_count` is negative, exceeds the offset range, or cannot fit in the bytes.
    #[error("invalid record count {records_count} (last offset delta {last_offset_delta})")]
    InvalidRecordsCount {
        records_count: i32,
        last_offset_delta: i32,
    },
    /// A producer batch must hold at least one record and exactly `last_offset_delta + 1`.
    #[error("producer batch must have records_count = last_offset_delta + 1 > 0 (count {records_count}, delta {last_offset_delta})")]
    InconsistentProducerBatch {
        records_count: i32,
        last_offset_delta: i32,
    },
    /// Bytes after the single batch that was expected.
    #[error("{extra} trailing bytes after the batch")]
    TrailingBytes { extra: usize },
    /// More records than [`DECODE_RECORDS_MAX_COUNT`] to decode.
    #[error("batch has {0} records, more than can be decoded")]
    TooManyRecords(usize),
    /// [`build_batch`] was given no record.
    #[error("a batch needs at least one record")]
    Empty,
    /// The records inside a batch do not decode (or could not be encoded).
    #[error("record codec: {0}")]
    Codec(String),
}

/// The fixed header of a v2 batch, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    /// Bytes after the `batch_length` field (total size = 12 + this).
    pub batch_length: u32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn compression_of(attributes: i16) -> Result<Compression, BatchError> {
    Ok(match attributes & ATTR_COMPRESSION_MASK {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        other => return Err(BatchError::UnknownCompression(other)),
    })
}

impl BatchHeader {
    /// Reads the header at the start of `bytes` (which may hold more). Checks only what is
    /// needed to interpret the fields: enough bytes, a non-negative base offset, a
    /// `batch_length` in range, a known compression codec. [`BatchHeader::validate`] checks
    /// the rest.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        // v0/v1 message sets have a different layout: say so rather than misreading them.
        if bytes.len() > 16 && bytes[16] as i8 != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(bytes[16] as i8));
        }
        if bytes.len() < BATCH_HEADER_SIZE_BYTES {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_SIZE_BYTES,
                available: bytes.len(),
            });
        }
        let base_offset = be_i64(bytes, 0);
        let batch_length = be_i32(bytes, 8);
        let attributes = be_i16(bytes, 21);
        let last_offset_delta = be_i32(bytes, 23);
        let length_ok = usize::try_from(batch_length).is_ok_and(|len| {
            len >= BATCH_HEADER_SIZE_BYTES - LOG_OVERHEAD_BYTES
                && len + LOG_OVERHEAD_BYTES <= BATCH_SIZE_MAX_BYTES
        });
        if !length_ok {
            return Err(BatchError::LengthOutOfRange { batch_length });
        }
        let offsets_ok = base_offset >= 0
            && last_offset_delta >= 0
            && base_offset
                .checked_add(i64::from(last_offset_delta) + 1)
                .is_some();
        if !offsets_ok {
            return Err(BatchError::InvalidOffsets {
                base_offset,
                last_offset_delta,
            });
        }
        compression_of(attributes)?;
        Ok(BatchHeader {
            base_offset: base_offset as u64,
            batch_length: batch_length as u32,
            partition_leader_epoch: be_i32(bytes, 12),
            magic: bytes[16] as i8,
            crc: be_i32(bytes, 17) as u32,
            attributes,
            last_offset_delta,
            base_timestamp: be_i64(bytes, 27),
            max_timestamp: be_i64(bytes, 35),
            producer_id: be_i64(bytes, 43),
            producer_epoch: be_i16(bytes, 51),
            base_sequence: be_i32(bytes, 53),
            records_count: be_i32(bytes, 57),
        })
    }

    /// Checks that `bytes` is exactly one well-formed v2 batch: length within bounds and equal
    /// to `bytes.len()`, magic 2, CRC32C, a record count within the offset range (Kafka allows
    /// fewer records than offsets after compaction, never more) and within what the bytes can
    /// hold when uncompressed.
    pub fn validate(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        BatchHeader::check(bytes, false)
    }

    /// [`BatchHeader::validate`] for a batch in the stored form ([`seal`]): the checksum
    /// covers every byte. The returned header's `crc` is the Kafka CRC.
    pub fn validate_stored(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        BatchHeader::check(bytes, true)
    }

    fn check(bytes: &[u8], stored_form: bool) -> Result<BatchHeader, BatchError> {
        let header = BatchHeader::parse(bytes)?;
        let total = header.total_size();
        if bytes.len() < total {
            return Err(BatchError::Truncated {
                needed: total,
                available: bytes.len(),
            });
        }
        if bytes.len() > total {
            return Err(BatchError::TrailingBytes {
                extra: bytes.len() - total,
            });
        }
        let computed = crc32c::crc32c(&bytes[CRC_START..]);
        let expected = if stored_form {
            header.crc ^ head_crc(bytes)
        } else {
            header.crc
        };
        if computed != expected {
            return Err(BatchError::CrcMismatch {
                stored: expected,
                computed,
            });
        }
        let header = BatchHeader {
            crc: computed,
            ..header
        };
        let count = i64::from(header.records_count);
        let mut count_ok = count >= 0 && count <= i64::from(header.last_offset_delta) + 1;
        if header.compression() == Compression::None {
            let room = (total - BATCH_HEADER_SIZE_BYTES) / RECORD_SIZE_MIN_BYTES;
            count_ok &= count <= room as i64;
        }
        if !count_ok {
            return Err(BatchError::InvalidRecordsCount {
                records_count: header.records_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        Ok(header)
    }

    /// [`BatchHeader::validate`] plus what Kafka requires of a batch a producer sends: at
    /// least one record, and one record per offset (`records_count = last_offset_delta + 1`).
    pub fn validate_produced(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        let header = BatchHeader::validate(bytes)?;
        if header.records_count <= 0 || header.records_count != header.last_offset_delta + 1 {
            return Err(BatchError::InconsistentProducerBatch {
                records_count: header.records_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        Ok(header)
    }

    /// Offset of the batch's last record slot (`base_offset + last_offset_delta`).
    pub fn last_offset(&self) -> u64 {
        self.base_offset + self.last_offset_delta as u64
    }

    /// The offset right after this batch.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    /// Size on the wire and on disk, header included.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD_BYTES + self.batch_length as usize
    }

    /// Whether the batch holds control records (consumers skip them).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// The codec of the records section (always known: [`BatchHeader::parse`] checks it).
    pub fn compression(&self) -> Compression {
        compression_of(self.attributes).expect("parse checked the codec")
    }
}

/// The bytes before the CRC field that Kafka's CRC does not cover.
const HEAD_BYTES: usize = 17;

fn head_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(&bytes[..HEAD_BYTES])
}

/// Turns one valid batch (Kafka form, already validated) into its stored form: the CRC
/// field becomes `kafka_crc ^ crc32c(first 17 bytes)`, so that it covers the base offset,
/// length, leader epoch and magic too.
pub fn seal(batch: &mut [u8]) {
    assert!(batch.len() >= BATCH_HEADER_SIZE_BYTES, "a whole batch");
    let kafka_crc = be_i32(batch, HEAD_BYTES) as u32;
    let stored = kafka_crc ^ head_crc(batch);
    batch[HEAD_BYTES..CRC_START].copy_from_slice(&stored.to_be_bytes());
}

/// Verifies the stored-form batch at the start of `buf` (which may hold more) and turns it
/// back into its Kafka form in place. Returns its header (with the Kafka CRC).
pub fn unseal_first(buf: &mut [u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    let total = header.total_size();
    let Some(batch) = buf.get_mut(..total) else {
        return Err(BatchError::Truncated {
            needed: total,
            available: buf.len(),
        });
    };
    let header = BatchHeader::validate_stored(batch)?;
    batch[HEAD_BYTES..CRC_START].copy_from_slice(&header.crc.to_be_bytes());
    Ok(header)
}

/// Overwrites the base offset (outside the CRC) of the batch at the start of `batch`.
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) -> Result<(), BatchError> {
    let field = i64::try_from(base_offset).map_err(|_| BatchError::InvalidOffsets {
        base_offset: -1,
        last_offset_delta: 0,
    })?;
    if batch.len() < BATCH_HEADER_SIZE_BYTES {
        return Err(BatchError::Truncated {
            needed: BATCH_HEADER_SIZE_BYTES,
            available: batch.len(),
        });
    }
    batch[0..8].copy_from_slice(&field.to_be_bytes());
    Ok(())
}

/// Overwrites the partition leader epoch (outside the CRC) of the batch at the start of `batch`.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) -> Result<(), BatchError> {
    if batch.len() < BATCH_HEADER_SIZE_BYTES {
        return Err(BatchError::Truncated {
            needed: BATCH_HEADER_SIZE_BYTES,
            available: batch.len(),
        });
    }
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
    Ok(())
}

/// Iterates over a buffer of concatenated batches, validating each (CRC included).
///
/// Yields `(header, bytes)` per batch; at the first bad batch it yields the error once and
/// stops. [`BatchIter::position`] tells where the valid prefix ends.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    position: usize,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    pub fn new(buf: &'a [u8]) -> BatchIter<'a> {
        BatchIter {
            buf,
            position: 0,
            failed: false,
        }
    }

    /// Byte position after the last batch yielded successfully.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position == self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.position..];
        let result = BatchHeader::parse(rest).and_then(|h| {
            let bytes = rest.get(..h.total_size()).ok_or(BatchError::Truncated {
                needed: h.total_size(),
                available: rest.len(),
            })?;
            Ok((BatchHeader::validate(bytes)?, bytes))
        });
        match &result {
            Ok((header, _)) => self.position += header.total_size(),
            Err(_) => self.failed = true,
        }
        Some(result)
    }
}

/// One record to put in a batch built by [`build_batch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSpec {
    pub key: Option<Bytes>,
    /// `None` is a tombstone (deletes the key under compaction).
    pub value: Option<Bytes>,
    /// Header keys must be distinct (the codec keeps the last value of a repeated key).
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp_ms: i64,
}

/// Batch-level fields for [`build_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOptions {
    pub base_offset: u64,
    pub partition_leader_epoch: i32,
    /// -1: not an idempotent producer.
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Sequence of the first record (-1 without idempotence).
    pub base_sequence: i32,
    pub compression: Compression,
    pub is_control: bool,
    pub is_transactional: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            base_offset: 0,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            compression: Compression::None,
            is_control: false,
            is_transactional: false,
        }
    }
}

/// A record read back by [`decode_records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

fn codec_error(e: impl std::fmt::Display) -> BatchError {
    BatchError::Codec(e.to_string())
}

fn to_record(
    opts: &BuildOptions,
    offset: u64,
    sequence: i32,
    timestamp_ms: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: &[(String, Option<Bytes>)],
) -> Record {
    Record {
        transactional: opts.is_transactional,
        control: opts.is_control,
        delete_horizon: false,
        partition_leader_epoch: opts.partition_leader_epoch,
        producer_id: opts.producer_id,
        producer_epoch: opts.producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: offset as i64,
        sequence,
        timestamp: timestamp_ms,
        key,
        value,
        headers: headers
            .iter()
            .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
            .collect(),
    }
}

/// How the codec encodes an anchor record (see [`rebuild_batch`]): length 6, attributes 0,
/// timestamp delta 0, offset delta 0, null key (-1), null value (-1), no headers.
const ANCHOR_RECORD_BYTES: [u8; RECORD_SIZE_MIN_BYTES] = [12, 0, 0, 0, 1, 1, 0];

/// Encodes `records` as one batch with the codec's encoder. When `strip_first` is set, the
/// first record is an anchor that pins the batch's base offset: a record with no key, value
/// or headers at the smallest offset and timestamp, whose encoding is therefore always
/// [`ANCHOR_RECORD_BYTES`]; it is cut from the records section before compression (the
/// caller fixes the count).
fn encode(
    records: &[Record],
    compression: Compression,
    strip_first: bool,
) -> Result<BytesMut, BatchError> {
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions {
        version: MAGIC_V2,
        compression,
    };
    let compressor = |section: &mut BytesMut,
                      out: &mut BytesMut,
                      compression: Compression|
     -> anyhow::Result<()> {
        if strip_first {
            anyhow::ensure!(
                section.starts_with(&ANCHOR_RECORD_BYTES),
                "anchor record not found"
            );
            section.advance(ANCHOR_RECORD_BYTES.len());
        }
        compress_into(out, section, compression)
    };
    RecordBatchEncoder::encode_with_custom_compression(
        &mut out,
        records.iter(),
        &options,
        Some(compressor),
    )
    .map_err(codec_error)?;
    Ok(out)
}

fn compress_into(out: &mut BytesMut, section: &[u8], c: Compression) -> anyhow::Result<()> {
    use kafka_protocol::compression as codec;
    use kafka_protocol::compression::Compressor;
    let put = |b: &mut BytesMut| -> anyhow::Result<()> {
        b.put_slice(section);
        Ok(())
    };
    match c {
        Compression::None => <codec::None as Compressor<BytesMut>>::compress(out, put),
        Compression::Gzip => <codec::Gzip as Compressor<BytesMut>>::compress(out, put),
        Compression::Snappy => <codec::Snappy as Compressor<BytesMut>>::compress(out, put),
        Compression::Lz4 => <codec::Lz4 as Compressor<BytesMut>>::compress(out, put),
        Compression::Zstd => <codec::Zstd as Compressor<BytesMut>>::compress(out, put),
    }
}

/// Recomputes the CRC of a batch whose covered fields were patched.
fn reseal(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Builds one v2 batch of `records` (offsets `base_offset..`, sequences from
/// `base_sequence`) with the `kafka_protocol` record codec.
pub fn build_batch(records: &[RecordSpec], opts: &BuildOptions) -> Result<Bytes, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    i64::try_from(opts.base_offset)
        .ok()
        .and_then(|b| b.checked_add(records.len() as i64))
        .ok_or(BatchError::InvalidOffsets {
            base_offset: -1,
            last_offset_delta: 0,
        })?;
    let encoded: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            to_record(
                opts,
                opts.base_offset + i as u64,
                opts.base_sequence.wrapping_add(i as i32),
                r.timestamp_ms,
                r.key.clone(),
                r.value.clone(),
                &r.headers,
            )
        })
        .collect();
    let batch = encode(&encoded, opts.compression, false)?.freeze();
    BatchHeader::validate(&batch)?;
    Ok(batch)
}

/// Decodes (and decompresses) the records of one validated batch.
pub fn decode_records(batch: &[u8]) -> Result<Vec<DecodedRecord>, BatchError> {
    let header = BatchHeader::validate(batch)?;
    let count = header.records_count as usize;
    if count > DECODE_RECORDS_MAX_COUNT {
        return Err(BatchError::TooManyRecords(count));
    }
    let mut buf = Bytes::copy_from_slice(batch);
    let set = RecordBatchDecoder::decode(&mut buf).map_err(codec_error)?;
    let mut out = Vec::with_capacity(set.records.len());
    for r in set.records {
        let offset = u64::try_from(r.offset)
            .ok()
            .filter(|o| *o >= header.base_offset && *o <= header.last_offset())
            .ok_or_else(|| codec_error(format!("record offset {} outside the batch", r.offset)))?;
        out.push(DecodedRecord {
            offset,
            timestamp_ms: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), v))
                .collect(),
        });
    }
    Ok(out)
}

/// Re-encodes a batch keeping only `kept` (a subset of its records, in offset order), as
/// Kafka's log cleaner does: base offset, last offset delta, base sequence, producer id and
/// epoch, partition leader epoch, attributes and max timestamp stay those of `original`, so
/// the batch still spans the same offsets (an empty batch is legal). The base timestamp
/// becomes the smallest kept timestamp (the codec encodes deltas from it). The CRC is
/// recomputed.
pub fn rebuild_batch(original: &BatchHeader, kept: &[DecodedRecord]) -> Result<Bytes, BatchError> {
    let opts = BuildOptions {
        base_offset: original.base_offset,
        partition_leader_epoch: original.partition_leader_epoch,
        producer_id: original.producer_id,
        producer_epoch: original.producer_epoch,
        base_sequence: original.base_sequence,
        compression: original.compression(),
        is_control: original.is_control(),
        is_transactional: original.is_transactional(),
    };
    let sequence_of = |offset: u64| {
        original
            .base_sequence
            .wrapping_add((offset - original.base_offset) as i32)
    };
    let needs_anchor = kept
        .first()
        .is_none_or(|r| r.offset != original.base_offset);
    let mut records = Vec::with_capacity(kept.len() + 1);
    if needs_anchor {
        let timestamp = kept
            .iter()
            .map(|r| r.timestamp_ms)
            .min()
            .unwrap_or(original.base_timestamp);
        records.push(to_record(
            &opts,
            original.base_offset,
            original.base_sequence,
            timestamp,
            None,
            None,
            &[],
        ));
    }
    for r in kept {
        if r.offset < original.base_offset || r.offset > original.last_offset() {
            return Err(codec_error(format!(
                "record {} outside the batch",
                r.offset
            )));
        }
        records.push(to_record(
            &opts,
            r.offset,
            sequence_of(r.offset),
            r.timestamp_ms,
            r.key.clone(),
            r.value.clone(),
            &r.headers,
        ));
    }
    let mut batch = encode(&records, opts.compression, needs_anchor)?;
    if batch.len() < BATCH_HEADER_SIZE_BYTES {
        return Err(codec_error("encoder produced no batch"));
    }
    batch[21..23].copy_from_slice(&original.attributes.to_be_bytes());
    batch[23..27].copy_from_slice(&original.last_offset_delta.to_be_bytes());
    batch[35..43].copy_from_slice(&original.max_timestamp.to_be_bytes());
    batch[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    reseal(&mut batch);
    let batch = batch.freeze();
    BatchHeader::validate(&batch)?;
    Ok(batch)
}

/// A Raft leader's no-op: a control batch (attribute bit 5) holding one KRaft LeaderChange
/// control record (key: version 0, type 2; value: a `LeaderChangeMessage` v0 naming the
/// leader), with the partition leader epoch set to `leader_epoch`. Base offset 0: the log
/// assigns the real one on append.
pub fn leader_change_batch(leader_epoch: i32, leader_id: i32, timestamp_ms: i64) -> Bytes {
    use kafka_protocol::messages::leader_change_message::LeaderChangeMessage;
    use kafka_protocol::messages::BrokerId;
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(CONTROL_TYPE_LEADER_CHANGE);
    let mut value = BytesMut::new();
    LeaderChangeMessage::default()
        .with_version(0)
        .with_leader_id(BrokerId(leader_id))
        .encode(&mut value, 0)
        .expect("LeaderChangeMessage v0 always encodes");
    let record = RecordSpec {
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Vec::new(),
        timestamp_ms,
    };
    let opts = BuildOptions {
        partition_leader_epoch: leader_epoch,
        is_control: true,
        ..BuildOptions::default()
    };
    build_batch(&[record], &opts).expect("a one-record control batch always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(i: usize) -> RecordSpec {
        RecordSpec {
            key: Some(Bytes::from(format!("key-{}", i % 3))),
            value: (i % 4 != 3).then(|| Bytes::from(format!("value-{i}"))),
            headers: vec![("h".to_owned(), Some(Bytes::from_static(b"v")))],
            timestamp_ms: 1_000 + i as i64,
        }
    }

    fn sample(n: usize, opts: &BuildOptions) -> Bytes {
        let records: Vec<_> = (0..n).map(spec).collect();
        build_batch(&records, opts).expect("build")
    }

    const ALL_CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn build_validate_decode_roundtrip_with_every_codec() {
        for compression in ALL_CODECS {
            let opts = BuildOptions {
                base_offset: 100,
                partition_leader_epoch: 7,
                producer_id: 42,
                producer_epoch: 3,
                base_sequence: 10,
                compression,
                ..BuildOptions::default()
            };
            let batch = sample(5, &opts);
            let h = BatchHeader::validate_produced(&batch).expect("valid");
            assert_eq!(h.base_offset, 100);
            assert_eq!(h.last_offset(), 104);
            assert_eq!(h.next_offset(), 105);
            assert_eq!(h.records_count, 5);
            assert_eq!(h.partition_leader_epoch, 7);
            assert_eq!(h.producer_id, 42);
            assert_eq!(h.producer_epoch, 3);
            assert_eq!(h.base_sequence, 10);
            assert_eq!(h.base_timestamp, 1_000);
            assert_eq!(h.max_timestamp, 1_004);
            assert_eq!(h.compression(), compression);
            assert_eq!(h.total_size(), batch.len());
            assert!(!h.is_control() && !h.is_transactional());
            let records = decode_records(&batch).expect("decode");
            assert_eq!(records.len(), 5);
            for (i, r) in records.iter().enumerate() {
                let s = spec(i);
                assert_eq!(r.offset, 100 + i as u64);
                assert_eq!(r.timestamp_ms, s.timestamp_ms);
                assert_eq!(r.key, s.key);
                assert_eq!(r.value, s.value);
                assert_eq!(r.headers, s.headers);
            }
        }
    }

    #[test]
    fn offset_and_epoch_live_outside_the_crc() {
        let mut batch = BytesMut::from(&sample(3, &BuildOptions::default())[..]);
        set_base_offset(&mut batch, 1 << 40).expect("set");
        set_partition_leader_epoch(&mut batch, 99).expect("set");
        let h = BatchHeader::validate(&batch).expect("still valid");
        assert_eq!((h.base_offset, h.partition_leader_epoch), (1 << 40, 99));
        assert!(set_base_offset(&mut batch, u64::MAX).is_err());
        assert!(set_base_offset(&mut [0; 10], 1).is_err());
        assert!(set_partition_leader_epoch(&mut [0; 10], 1).is_err());
    }

    #[test]
    fn every_flipped_bit_of_the_covered_region_is_caught() {
        let batch = sample(2, &BuildOptions::default());
        for pos in CRC_START..batch.len() {
            for bit in 0..8 {
                let mut bad = batch.to_vec();
                bad[pos] ^= 1 << bit;
                assert!(BatchHeader::validate(&bad).is_err(), "byte {pos} bit {bit}");
            }
        }
        let mut bad = batch.to_vec();
        bad[17] ^= 1;
        assert!(matches!(
            BatchHeader::validate(&bad),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn framing_errors_are_typed() {
        let batch = sample(2, &BuildOptions::default());
        assert!(matches!(
            BatchHeader::validate(&batch[..batch.len() - 1]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            BatchHeader::validate(&batch[..30]),
            Err(BatchError::Truncated { .. })
        ));
        let mut long = batch.to_vec();
        long.push(0);
        assert_eq!(
            BatchHeader::validate(&long),
            Err(BatchError::TrailingBytes { extra: 1 })
        );
        let mut v1 = batch.to_vec();
        v1[16] = 1;
        assert_eq!(
            BatchHeader::validate(&v1),
            Err(BatchError::UnsupportedMagic(1))
        );
        let mut huge = batch.to_vec();
        huge[8..12].copy_from_slice(&(BATCH_SIZE_MAX_BYTES as i32).to_be_bytes());
        assert!(matches!(
            BatchHeader::parse(&huge),
            Err(BatchError::LengthOutOfRange { .. })
        ));
        let mut negative = batch.to_vec();
        negative[0..8].copy_from_slice(&(-5i64).to_be_bytes());
        assert!(matches!(
            BatchHeader::parse(&negative),
            Err(BatchError::InvalidOffsets { .. })
        ));
        let mut codec = batch.to_vec();
        codec[21..23].copy_from_slice(&7i16.to_be_bytes());
        assert_eq!(
            BatchHeader::parse(&codec),
            Err(BatchError::UnknownCompression(7))
        );
    }

    #[test]
    fn record_counts_must_fit_the_offsets_and_the_bytes() {
        let batch = sample(3, &BuildOptions::default());
        let patch = |count: i32, delta: i32| {
            let mut b = batch.to_vec();
            b[57..61].copy_from_slice(&count.to_be_bytes());
            b[23..27].copy_from_slice(&delta.to_be_bytes());
            reseal(&mut b);
            b
        };
        assert!(matches!(
            BatchHeader::validate(&patch(4, 2)),
            Err(BatchError::InvalidRecordsCount { .. })
        ));
        assert!(matches!(
            BatchHeader::validate(&patch(-1, 2)),
            Err(BatchError::InvalidRecordsCount { .. })
        ));
        assert!(matches!(
            BatchHeader::validate(&patch(1000, 5000)),
            Err(BatchError::InvalidRecordsCount { .. })
        ));
        // Fewer records than offsets: legal after compaction, not from a producer.
        let compacted = patch(3, 9);
        BatchHeader::validate(&compacted).expect("valid");
        assert!(matches!(
            BatchHeader::validate_produced(&compacted),
            Err(BatchError::InconsistentProducerBatch { .. })
        ));
    }

    #[test]
    fn decoding_refuses_absurd_record_counts() {
        let batch = sample(
            3,
            &BuildOptions {
                compression: Compression::Gzip,
                ..BuildOptions::default()
            },
        );
        let mut b = batch.to_vec();
        let count = DECODE_RECORDS_MAX_COUNT as i32 + 1;
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b[23..27].copy_from_slice(&count.to_be_bytes());
        reseal(&mut b);
        assert_eq!(
            decode_records(&b),
            Err(BatchError::TooManyRecords(DECODE_RECORDS_MAX_COUNT + 1))
        );
    }

    #[test]
    fn iter_yields_batches_then_the_torn_tail() {
        let mut buf = Vec::new();
        for i in 0..3u64 {
            buf.extend_from_slice(&sample(
                2,
                &BuildOptions {
                    base_offset: i * 2,
                    ..BuildOptions::default()
                },
            ));
        }
        let whole = buf.len();
        let all: Vec<_> = BatchIter::new(&buf)
            .collect::<Result<_, _>>()
            .expect("valid");
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].0.base_offset, 4);
        buf.extend_from_slice(&sample(2, &BuildOptions::default())[..40]);
        let mut iter = BatchIter::new(&buf);
        assert_eq!(iter.by_ref().take(3).filter(|r| r.is_ok()).count(), 3);
        assert!(matches!(
            iter.next(),
            Some(Err(BatchError::Truncated { .. }))
        ));
        assert!(iter.next().is_none());
        assert_eq!(iter.position(), whole);
    }

    #[test]
    fn rebuild_keeps_the_offset_range_and_the_kept_records() {
        for compression in ALL_CODECS {
            let opts = BuildOptions {
                base_offset: 50,
                partition_leader_epoch: 4,
                producer_id: 9,
                producer_epoch: 1,
                base_sequence: 20,
                compression,
                ..BuildOptions::default()
            };
            let batch = sample(6, &opts);
            let original = BatchHeader::validate(&batch).expect("valid");
            let records = decode_records(&batch).expect("decode");
            let subsets: [&[usize]; 5] = [&[1, 2, 5], &[0, 3], &[2], &[], &[0, 1, 2, 3, 4, 5]];
            for keep in subsets {
                let kept: Vec<_> = keep.iter().map(|i| records[*i].clone()).collect();
                let rebuilt = rebuild_batch(&original, &kept).expect("rebuild");
                let h = BatchHeader::validate(&rebuilt).expect("valid");
                assert_eq!(h.base_offset, 50, "{compression:?} {keep:?}");
                assert_eq!(h.last_offset(), 55);
                assert_eq!(h.records_count as usize, kept.len());
                assert_eq!(h.base_sequence, 20);
                assert_eq!((h.producer_id, h.producer_epoch), (9, 1));
                assert_eq!(h.partition_leader_epoch, 4);
                assert_eq!(h.attributes, original.attributes);
                assert_eq!(h.max_timestamp, original.max_timestamp);
                assert_eq!(decode_records(&rebuilt).expect("decode"), kept);
            }
        }
    }

    #[test]
    fn leader_change_batch_is_a_control_batch_of_one_record() {
        let batch = leader_change_batch(12, 3, 5_000);
        let h = BatchHeader::validate_produced(&batch).expect("valid");
        assert!(h.is_control());
        assert_eq!(h.partition_leader_epoch, 12);
        assert_eq!((h.records_count, h.base_timestamp), (1, 5_000));
        let records = decode_records(&batch).expect("decode");
        assert_eq!(records[0].key.as_deref(), Some(&[0, 0, 0, 2][..]));
        // LeaderChangeMessage v0: version 0, leader id 3, no voters, no tagged fields.
        assert_eq!(
            records[0].value.as_deref(),
            Some(&[0, 0, 0, 0, 0, 3, 1, 1, 0][..])
        );
    }

    #[test]
    fn build_rejects_empty_and_overflowing_input() {
        assert_eq!(
            build_batch(&[], &BuildOptions::default()),
            Err(BatchError::Empty)
        );
        let opts = BuildOptions {
            base_offset: i64::MAX as u64,
            ..BuildOptions::default()
        };
        assert!(build_batch(&[spec(0)], &opts).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = BatchHeader::parse(&bytes);
            let _ = BatchHeader::validate(&bytes);
            let _ = decode_records(&bytes);
            for item in BatchIter::new(&bytes) {
                let _ = item;
            }
        }

        #[test]
        fn mutated_batches_never_panic_and_never_validate_wrongly(
            pos in 0usize..200, value in any::<u8>(), n in 1usize..5,
        ) {
            let batch = sample(n, &BuildOptions::default());
            let mut bad = batch.to_vec();
            let pos = pos % bad.len();
            bad[pos] = value;
            if let Ok(h) = BatchHeader::validate(&bad) {
                // Only fields outside the CRC (or an unchanged byte) can pass.
                prop_assert!(pos < CRC_START || bad == batch.to_vec());
                let _ = h;
            }
            let _ = decode_records(&bad);
        }
    }
}
