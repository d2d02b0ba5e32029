//! The Kafka APIs fjord serves and the versions of each it accepts.
//!
//! Ranges are what `kafka-protocol` 0.18 can decode, narrowed where a newer version needs
//! something fjord does not have:
//!
//! * Produce ≤ 12, Fetch ≤ 12, OffsetCommit ≤ 9, OffsetFetch ≤ 9: the next versions address
//!   topics by topic id only (KIP-516/KIP-848); clients fall back to names below them.
//! * InitProducerId ≤ 4: v5+ belong to transactions v2 (KIP-890/KIP-939), which fjord lacks.
//! * Everything else: the crate's full range. Minimums are the crate's, which are Kafka 4's
//!   (KIP-896 removed older versions); clients since Kafka 2.1 / librdkafka 1.x use newer ones.
//!
//! Clients pick, per API, the highest version both sides support (see docs/kafka-notes.md
//! for what librdkafka and kafka-python actually send).

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::protocol::VersionRange;

/// One served API and its accepted versions (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiRange {
    pub api_key: ApiKey,
    pub min: i16,
    pub max: i16,
}

const fn range(api_key: ApiKey, min: i16, max: i16) -> ApiRange {
    ApiRange { api_key, min, max }
}

/// Every API fjord answers, in api-key order. A request for any other API closes the
/// connection, as Kafka does.
pub const SUPPORTED_APIS: &[ApiRange] = &[
    range(ApiKey::Produce, 3, 12),
    range(ApiKey::Fetch, 4, 12),
    range(ApiKey::ListOffsets, 1, 10),
    range(ApiKey::Metadata, 0, 13),
    range(ApiKey::OffsetCommit, 2, 9),
    range(ApiKey::OffsetFetch, 1, 9),
    range(ApiKey::FindCoordinator, 0, 6),
    range(ApiKey::JoinGroup, 0, 9),
    range(ApiKey::Heartbeat, 0, 4),
    range(ApiKey::LeaveGroup, 0, 5),
    range(ApiKey::SyncGroup, 0, 5),
    range(ApiKey::DescribeGroups, 0, 6),
    range(ApiKey::ListGroups, 0, 5),
    range(ApiKey::ApiVersions, 0, 4),
    range(ApiKey::CreateTopics, 2, 7),
    range(ApiKey::DeleteTopics, 1, 6),
    range(ApiKey::InitProducerId, 0, 4),
    range(ApiKey::DescribeConfigs, 1, 4),
    range(ApiKey::AlterConfigs, 0, 2),
    range(ApiKey::IncrementalAlterConfigs, 0, 1),
    range(ApiKey::DescribeCluster, 0, 2),
];

/// The versions of `api_key` fjord accepts, if it serves that API at all.
pub fn supported_range(api_key: ApiKey) -> Option<VersionRange> {
    SUPPORTED_APIS
        .iter()
        .find(|r| r.api_key == api_key)
        .map(|r| VersionRange {
            min: r.min,
            max: r.max,
        })
}

/// The ApiVersions answer: every served API with its range, and `error_code`
/// (0, or UNSUPPORTED_VERSION when the client's ApiVersions version is unknown to us).
pub fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SUPPORTED_APIS
        .iter()
        .map(|r| {
            ApiVersion::default()
                .with_api_key(r.api_key as i16)
                .with_min_version(r.min)
                .with_max_version(r.max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_lie_within_what_the_codec_can_decode() {
        for r in SUPPORTED_APIS {
            let codec = r.api_key.valid_versions();
            assert!(r.min <= r.max, "{r:?}");
            assert!(codec.min <= r.min && r.max <= codec.max, "{r:?} vs {codec}");
        }
    }

    #[test]
    fn table_is_in_api_key_order_without_duplicates() {
        let keys: Vec<i16> = SUPPORTED_APIS.iter().map(|r| r.api_key as i16).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    }

    #[test]
    fn api_versions_response_lists_the_table() {
        let response = api_versions_response(0);
        assert_eq!(response.api_keys.len(), SUPPORTED_APIS.len());
        let fetch = response
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Fetch as i16)
            .expect("fetch listed");
        assert_eq!((fetch.min_version, fetch.max_version), (4, 12));
        assert_eq!(supported_range(ApiKey::SaslHandshake), None);
    }
}
