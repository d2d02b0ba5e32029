//! Kafka request/response frames to and from `kafka-protocol` types.
//!
//! A frame here is one Kafka message without its 4-byte size prefix (the transport strips
//! and adds that). Decoding never panics and never allocates more than the frame's own size
//! allows: header fields are read by hand before the crate sees the frame, and the vendored
//! crate checks every declared length against the bytes remaining (vendor/README.md).
//! Only the APIs and versions of [`super::versions`] are accepted.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::versions;

/// A request as the broker logic sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedRequest {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

impl DecodedRequest {
    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }
}

/// Why a frame could not be decoded or encoded. Every decode error closes the connection,
/// except [`CodecError::UnsupportedVersion`] of ApiVersions, which is answered.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes is shorter than a request header")]
    Truncated { len: usize },
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("api {0:?} is not served")]
    UnsupportedApi(ApiKey),
    #[error("version {api_version} of {api_key:?} is not supported")]
    UnsupportedVersion {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
    },
    #[error("malformed {api_key:?} v{api_version} {part}: {reason}")]
    Malformed {
        api_key: ApiKey,
        api_version: i16,
        part: &'static str,
        reason: String,
    },
    #[error("{got:?} does not answer {expected:?}")]
    Mismatch { expected: ApiKey, got: ApiKey },
    #[error("{0:?} messages are not supported by this codec")]
    UnsupportedMessage(&'static str),
    #[error("encoding {api_key:?} v{api_version} failed: {reason}")]
    Encode {
        api_key: ApiKey,
        api_version: i16,
        reason: String,
    },
    #[error("correlation id {got} does not match the expected {expected}")]
    CorrelationMismatch { expected: i32, got: i32 },
}

/// Api key, version and correlation id: the fixed first 8 bytes of every request header.
const REQUEST_PREFIX_BYTES: usize = 8;

/// The api key, version and correlation id of a request frame, without decoding the rest.
fn request_prefix(frame: &Bytes) -> Result<(i16, i16, i32), CodecError> {
    if frame.len() < REQUEST_PREFIX_BYTES {
        return Err(CodecError::Truncated { len: frame.len() });
    }
    let mut prefix = &frame[..REQUEST_PREFIX_BYTES];
    Ok((prefix.get_i16(), prefix.get_i16(), prefix.get_i32()))
}

/// Decodes a request frame (without its size prefix).
pub fn decode_request(frame: Bytes) -> Result<DecodedRequest, CodecError> {
    let (key, api_version, correlation_id) = request_prefix(&frame)?;
    let api_key = ApiKey::try_from(key).map_err(|()| CodecError::UnknownApiKey(key))?;
    let range = versions::supported_range(api_key).ok_or(CodecError::UnsupportedApi(api_key))?;
    if api_version < range.min || api_version > range.max {
        return Err(CodecError::UnsupportedVersion {
            api_key,
            api_version,
            correlation_id,
        });
    }
    let malformed = |part: &'static str| {
        move |e: anyhow::Error| CodecError::Malformed {
            api_key,
            api_version,
            part,
            reason: format!("{e:#}"),
        }
    };
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, api_key.request_header_version(api_version))
        .map_err(malformed("header"))?;
    // Bytes after the body are ignored, as Kafka does.
    let body = RequestKind::decode(api_key, &mut buf, api_version).map_err(malformed("body"))?;
    Ok(DecodedRequest {
        api_key,
        api_version,
        header,
        body,
    })
}

/// Encodes a response frame (without its size prefix) answering `api_key` at `api_version`.
pub fn encode_response(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<Bytes, CodecError> {
    let got = response_api_key(response)?;
    if got != api_key {
        return Err(CodecError::Mismatch {
            expected: api_key,
            got,
        });
    }
    let encode_failed = |e: anyhow::Error| CodecError::Encode {
        api_key,
        api_version,
        reason: format!("{e:#}"),
    };
    let mut buf = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, api_key.response_header_version(api_version))
        .map_err(encode_failed)?;
    response
        .encode(&mut buf, api_version)
        .map_err(encode_failed)?;
    Ok(buf.freeze())
}

/// Encodes a request frame (without its size prefix); key and version come from `header`.
pub fn encode_request(header: &RequestHeader, body: &RequestKind) -> Result<Bytes, CodecError> {
    let api_key = request_api_key(body)?;
    let api_version = header.request_api_version;
    if header.request_api_key != api_key as i16 {
        return Err(CodecError::Encode {
            api_key,
            api_version,
            reason: format!("header names api key {}", header.request_api_key),
        });
    }
    let encode_failed = |e: anyhow::Error| CodecError::Encode {
        api_key,
        api_version,
        reason: format!("{e:#}"),
    };
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api_key.request_header_version(api_version))
        .map_err(encode_failed)?;
    body.encode(&mut buf, api_version).map_err(encode_failed)?;
    Ok(buf.freeze())
}

/// Decodes a response frame to a request of `api_key` at `api_version`.
pub fn decode_response(
    api_key: ApiKey,
    api_version: i16,
    frame: Bytes,
) -> Result<(ResponseHeader, ResponseKind), CodecError> {
    let mut buf = frame;
    let (header, mut body) = decode_response_parts(api_key, api_version, &mut buf)?;
    let body = ResponseKind::decode(api_key, &mut body, api_version).map_err(|e| {
        CodecError::Malformed {
            api_key,
            api_version,
            part: "body",
            reason: format!("{e:#}"),
        }
    })?;
    Ok((header, body))
}

/// Decodes a response frame to a typed response.
pub fn decode_typed_response<T: Decodable>(
    api_key: ApiKey,
    api_version: i16,
    frame: Bytes,
) -> Result<(ResponseHeader, T), CodecError> {
    let mut buf = frame;
    let (header, mut body) = decode_response_parts(api_key, api_version, &mut buf)?;
    let body = T::decode(&mut body, api_version).map_err(|e| CodecError::Malformed {
        api_key,
        api_version,
        part: "body",
        reason: format!("{e:#}"),
    })?;
    Ok((header, body))
}

/// The response header, and the body bytes after it.
fn decode_response_parts(
    api_key: ApiKey,
    api_version: i16,
    buf: &mut Bytes,
) -> Result<(ResponseHeader, Bytes), CodecError> {
    let header = ResponseHeader::decode(buf, api_key.response_header_version(api_version))
        .map_err(|e| CodecError::Malformed {
            api_key,
            api_version,
            part: "response header",
            reason: format!("{e:#}"),
        })?;
    Ok((header, buf.clone()))
}

/// Calls `$m!` with the (variant, ApiKey) pairs of every served API.
macro_rules! served_apis {
    ($m:ident, $value:expr, $kind:ident) => {
        $m!(
            $value,
            $kind,
            Produce,
            Fetch,
            ListOffsets,
            Metadata,
            OffsetCommit,
            OffsetFetch,
            FindCoordinator,
            JoinGroup,
            Heartbeat,
            LeaveGroup,
            SyncGroup,
            DescribeGroups,
            ListGroups,
            ApiVersions,
            CreateTopics,
            DeleteTopics,
            InitProducerId,
            DescribeConfigs,
            AlterConfigs,
            IncrementalAlterConfigs,
            DescribeCluster
        )
    };
}

macro_rules! key_of {
    ($value:expr, $kind:ident, $($variant:ident),*) => {
        match $value {
            $($kind::$variant(_) => Ok(ApiKey::$variant),)*
            _ => Err(CodecError::UnsupportedMessage(stringify!($kind))),
        }
    };
}

/// The api key of a request body, for the APIs fjord serves.
pub fn request_api_key(body: &RequestKind) -> Result<ApiKey, CodecError> {
    served_apis!(key_of, body, RequestKind)
}

/// The api key of a response body, for the APIs fjord serves.
pub fn response_api_key(body: &ResponseKind) -> Result<ApiKey, CodecError> {
    served_apis!(key_of, body, ResponseKind)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    use super::*;
    use crate::kafka::versions::{supported_range, SUPPORTED_APIS};

    fn header(api_key: ApiKey, api_version: i16, correlation_id: i32) -> RequestHeader {
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(api_version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("test")))
    }

    /// A default-valued request of every served API at every served version.
    fn every_request() -> Vec<(ApiKey, i16, Bytes)> {
        let mut out = Vec::new();
        for r in SUPPORTED_APIS {
            for v in r.min..=r.max {
                let body = default_request(r.api_key);
                let frame = encode_request(&header(r.api_key, v, 7), &body).expect("encodes");
                out.push((r.api_key, v, frame));
            }
        }
        out
    }

    fn default_request(api_key: ApiKey) -> RequestKind {
        macro_rules! default_of {
            ($value:expr, $kind:ident, $($variant:ident),*) => {
                match $value {
                    $(ApiKey::$variant => $kind::$variant(Default::default()),)*
                    other => panic!("not served: {other:?}"),
                }
            };
        }
        served_apis!(default_of, api_key, RequestKind)
    }

    /// Requests with nested content, encoded at every served version that can carry them,
    /// so that mutations reach the decoders of arrays, records, tagged fields.
    fn populated_requests() -> Vec<(ApiKey, i16, Bytes)> {
        use kafka_protocol::messages::*;
        let s = |v: &str| StrBytes::from_string(v.to_string());
        let topic = || TopicName(s("topic"));
        let records = fjord_log::build_batch(
            &[fjord_log::RecordSpec {
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::from_static(b"v")),
                headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
                timestamp_ms: 1,
            }],
            &Default::default(),
        )
        .expect("batch");
        let bodies = vec![
            RequestKind::Produce(ProduceRequest::default().with_acks(-1).with_topic_data(
                vec![produce_request::TopicProduceData::default()
                        .with_name(topic())
                        .with_partition_data(vec![
                            produce_request::PartitionProduceData::default()
                                .with_index(2)
                                .with_records(Some(records)),
                        ])],
            )),
            RequestKind::Fetch(FetchRequest::default().with_max_wait_ms(5).with_topics(
                vec![fetch_request::FetchTopic::default()
                        .with_topic(topic())
                        .with_partitions(vec![fetch_request::FetchPartition::default()
                            .with_partition(1)
                            .with_fetch_offset(7)])],
            )),
            RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(topic())),
            ]))),
            RequestKind::JoinGroup(
                JoinGroupRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_member_id(s("m"))
                    .with_protocol_type(s("consumer"))
                    .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
                    )
                    .with_name(s("range"))
                    .with_metadata(Bytes::from_static(b"meta"))]),
            ),
            RequestKind::OffsetCommit(OffsetCommitRequest::default().with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(topic())
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_committed_offset(9)
                            .with_committed_metadata(Some(s("md"))),
                    ]),
            ])),
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(topic())
                    .with_num_partitions(3)
                    .with_configs(vec![create_topics_request::CreatableTopicConfig::default()
                        .with_name(s("cleanup.policy"))
                        .with_value(Some(s("compact")))]),
            ])),
        ];
        let mut out = Vec::new();
        for body in bodies {
            let api_key = request_api_key(&body).expect("served");
            let range = supported_range(api_key).expect("served");
            for v in range.min..=range.max {
                if let Ok(frame) = encode_request(&header(api_key, v, 3), &body) {
                    out.push((api_key, v, frame));
                }
            }
        }
        out
    }

    /// A default-valued response of every served API at every served version.
    fn every_response() -> Vec<(ApiKey, i16, Bytes)> {
        macro_rules! default_response {
            ($value:expr, $kind:ident, $($variant:ident),*) => {
                match $value {
                    $(ApiKey::$variant => $kind::$variant(Default::default()),)*
                    other => panic!("not served: {other:?}"),
                }
            };
        }
        let mut out = Vec::new();
        for r in SUPPORTED_APIS {
            let body: ResponseKind = served_apis!(default_response, r.api_key, ResponseKind);
            for v in r.min..=r.max {
                let frame = encode_response(r.api_key, v, 5, &body).expect("encodes");
                out.push((r.api_key, v, frame));
            }
        }
        out
    }

    /// Replaces bytes after the first `keep` ones and cuts the frame somewhere after them.
    fn mutate(
        frame: &Bytes,
        keep: usize,
        edits: Vec<(prop::sample::Index, u8)>,
        cut: prop::sample::Index,
    ) -> Bytes {
        let mut bytes = frame.to_vec();
        if bytes.len() > keep {
            for (at, value) in edits {
                let i = keep + at.index(bytes.len() - keep);
                bytes[i] = value;
            }
        }
        let keep = keep.min(bytes.len());
        bytes.truncate(keep + cut.index(bytes.len() - keep + 1));
        Bytes::from(bytes)
    }

    #[test]
    fn every_served_request_round_trips() {
        for (api_key, v, frame) in every_request() {
            let decoded = decode_request(frame).expect("decodes");
            assert_eq!((decoded.api_key, decoded.api_version), (api_key, v));
            assert_eq!(decoded.correlation_id(), 7);
            assert_eq!(request_api_key(&decoded.body).expect("served"), api_key);
            assert_eq!(decoded.body, default_request(api_key), "{api_key:?} v{v}");
        }
    }

    #[test]
    fn response_round_trips_with_the_right_header_version() {
        let response = ResponseKind::Metadata(MetadataResponse::default());
        for v in [0, 8, 9, 13] {
            let frame = encode_response(ApiKey::Metadata, v, 42, &response).expect("encodes");
            let (header, body) = decode_response(ApiKey::Metadata, v, frame).expect("decodes");
            assert_eq!(header.correlation_id, 42);
            assert_eq!(body, response);
        }
        let wrong = encode_response(ApiKey::Fetch, 4, 1, &response);
        assert!(
            matches!(wrong, Err(CodecError::Mismatch { .. })),
            "{wrong:?}"
        );
    }

    #[test]
    fn unknown_unserved_and_unsupported_are_told_apart() {
        let unknown = Bytes::from_static(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1]);
        assert!(matches!(
            decode_request(unknown),
            Err(CodecError::UnknownApiKey(0x7f00))
        ));
        // SaslHandshake (17) is a Kafka API fjord does not serve.
        let sasl = Bytes::from_static(&[0, 17, 0, 1, 0, 0, 0, 1]);
        assert!(matches!(
            decode_request(sasl),
            Err(CodecError::UnsupportedApi(ApiKey::SaslHandshake))
        ));
        let future = Bytes::from_static(&[0, 18, 0, 99, 0, 0, 0, 5, 0xff]);
        assert!(matches!(
            decode_request(future),
            Err(CodecError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                api_version: 99,
                correlation_id: 5
            })
        ));
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 3, 0])),
            Err(CodecError::Truncated { len: 3 })
        ));
    }

    #[test]
    fn every_truncation_of_every_request_is_an_error_or_a_prefix_decode() {
        for (api_key, v, frame) in every_request() {
            for cut in 0..frame.len() {
                // Must not panic; most cuts fail, a few land on a valid shorter message.
                let _ = decode_request(frame.slice(..cut));
            }
            assert!(decode_request(frame).is_ok(), "{api_key:?} v{v}");
        }
    }

    #[test]
    fn huge_declared_array_is_rejected_without_allocating() {
        // Metadata v1: topics array declaring i32::MAX entries, then nothing.
        let mut frame = encode_request(
            &header(ApiKey::Metadata, 1, 1),
            &RequestKind::Metadata(MetadataRequest::default()),
        )
        .expect("encodes")
        .to_vec();
        let body_at = frame.len() - 4; // v1 body = the topics array length (-1 = null)
        frame[body_at..].copy_from_slice(&i32::MAX.to_be_bytes());
        let err = decode_request(Bytes::from(frame)).expect_err("must fail");
        assert!(err.to_string().contains("Declared length"), "{err}");
        // Metadata v9 (flexible): compact array of u32::MAX - 1 entries.
        let mut frame = encode_request(
            &header(ApiKey::Metadata, 9, 1),
            &RequestKind::Metadata(MetadataRequest::default()),
        )
        .expect("encodes")
        .to_vec();
        // v9 body: topics (compact, null = 0), allow_auto_topic_creation, include_cluster_
        // and include_topic_authorized_operations, tagged fields (one byte each). Replace
        // the topics length with a 5-byte varint.
        let topics_at = frame.len() - 5;
        frame.splice(topics_at..topics_at + 1, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        let err = decode_request(Bytes::from(frame)).expect_err("must fail");
        assert!(err.to_string().contains("Declared length"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random mutations of valid requests never panic the decoder.
        #[test]
        fn mutated_requests_never_panic(
            pick in any::<prop::sample::Index>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let all = every_request();
            let (_, _, frame) = &all[pick.index(all.len())];
            let mut bytes = frame.to_vec();
            // Keep api key and version so that the body decoders get exercised.
            for (at, value) in edits {
                let i = REQUEST_PREFIX_BYTES + at.index(bytes.len() - REQUEST_PREFIX_BYTES);
                bytes[i] = value;
            }
            let len = REQUEST_PREFIX_BYTES + cut.index(bytes.len() - REQUEST_PREFIX_BYTES + 1);
            bytes.truncate(len);
            let _ = decode_request(Bytes::from(bytes));
        }

        /// Whatever request decodes (mutations of default and populated requests of every
        /// served API and version) encodes again, and the encoding decodes to the same
        /// request: encode and decode agree on every field fjord can receive.
        #[test]
        fn decoded_requests_round_trip(
            pick in any::<prop::sample::Index>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            static ALL: std::sync::OnceLock<Vec<(ApiKey, i16, Bytes)>> = std::sync::OnceLock::new();
            let all = ALL.get_or_init(|| {
                let mut all = every_request();
                all.extend(populated_requests());
                all
            });
            let (_, _, frame) = &all[pick.index(all.len())];
            let Ok(request) = decode_request(mutate(frame, REQUEST_PREFIX_BYTES, edits, cut)) else {
                return Ok(());
            };
            let again = encode_request(&request.header, &request.body).expect("a decoded request encodes");
            prop_assert_eq!(decode_request(again).expect("re-encoded request decodes"), request);
        }

        /// The same for responses of every served API and version (what fjord's clients
        /// decode): decoded responses re-encode at their version to the same response.
        #[test]
        fn decoded_responses_round_trip(
            pick in any::<prop::sample::Index>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            static ALL: std::sync::OnceLock<Vec<(ApiKey, i16, Bytes)>> = std::sync::OnceLock::new();
            let all = ALL.get_or_init(every_response);
            let (api_key, v, frame) = &all[pick.index(all.len())];
            // Keep the correlation id (the header's first 4 bytes).
            let Ok((header, body)) = decode_response(*api_key, *v, mutate(frame, 4, edits, cut)) else {
                return Ok(());
            };
            let again = encode_response(*api_key, *v, header.correlation_id, &body)
                .expect("a decoded response encodes");
            let (header2, body2) = decode_response(*api_key, *v, again).expect("re-encoded response decodes");
            prop_assert_eq!(header2.correlation_id, header.correlation_id);
            prop_assert_eq!(body2, body);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(Bytes::from(bytes));
        }
    }
}
