//! ListGroups and DescribeGroups (answered at once from memory).

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::coordinator::{Api, GroupCoordinator};
use super::group::GroupState;
use super::responses::error;

/// The group type ListGroups v5 reports: fjord has only classic groups.
const GROUP_TYPE_CLASSIC: &str = "classic";

/// The operations on a group an unauthorized cluster allows, as DescribeGroups v3+ reports
/// them when asked: READ (3), DELETE (6), DESCRIBE (8) as a bit field (Kafka, no authorizer).
const GROUP_AUTHORIZED_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

impl GroupCoordinator {
    /// ListGroups for this coordinator's groups. A broker asks each of its coordinators and
    /// concatenates the groups (taking the first non-zero error).
    pub fn list_groups(&self, version: i16, req: &ListGroupsRequest) -> ListGroupsResponse {
        if !self.is_loaded() {
            return ListGroupsResponse::default()
                .with_error_code(error::COORDINATOR_LOAD_IN_PROGRESS);
        }
        let states: Vec<String> = if version >= 4 {
            req.states_filter.iter().map(|s| s.to_lowercase()).collect()
        } else {
            Vec::new()
        };
        let classic_wanted = version < 5
            || req.types_filter.is_empty()
            || req
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case(GROUP_TYPE_CLASSIC));
        let groups = self
            .groups
            .values()
            .filter(|_| classic_wanted)
            .filter(|g| states.is_empty() || states.contains(&g.state.name().to_lowercase()))
            .map(|g| {
                let mut listed = ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(&g.id)))
                    .with_protocol_type(str_bytes(g.protocol_type.as_deref().unwrap_or_default()));
                if version >= 4 {
                    listed = listed.with_group_state(str_bytes(g.state.name()));
                }
                if version >= 5 {
                    listed = listed.with_group_type(str_bytes(GROUP_TYPE_CLASSIC));
                }
                listed
            })
            .collect();
        ListGroupsResponse::default().with_groups(groups)
    }

    /// DescribeGroups. The broker splits the groups by coordinator and concatenates the
    /// answers. A group this coordinator does not hold is "Dead"; from v6 it also carries
    /// GROUP_ID_NOT_FOUND (KIP-1043). Members' metadata and assignments are shown only for a
    /// stable group, as Kafka does.
    pub fn describe_groups(
        &self,
        version: i16,
        req: &DescribeGroupsRequest,
    ) -> DescribeGroupsResponse {
        let groups = req
            .groups
            .iter()
            .map(|id| {
                let described = self.describe_group(version, id);
                if version >= 3 && req.include_authorized_operations && described.error_code == 0 {
                    described.with_authorized_operations(GROUP_AUTHORIZED_OPERATIONS)
                } else {
                    described
                }
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    fn describe_group(&self, version: i16, id: &GroupId) -> DescribedGroup {
        let base = DescribedGroup::default().with_group_id(id.clone());
        if let Some(code) = self.group_status(id, Api::Describe) {
            return base.with_error_code(code);
        }
        let Some(group) = self.groups.get(id.as_str()) else {
            let dead = base.with_group_state(str_bytes(GroupState::Dead.name()));
            return if version >= 6 {
                dead.with_error_code(error::GROUP_ID_NOT_FOUND)
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "Group {} not found.",
                        id.as_str()
                    ))))
            } else {
                dead
            };
        };
        let stable = group.state == GroupState::Stable;
        let protocol = if stable {
            group.protocol_name.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let members = group
            .members
            .values()
            .map(|m| {
                let member = DescribedGroupMember::default()
                    .with_member_id(str_bytes(&m.id))
                    .with_group_instance_id(if version >= 4 {
                        m.instance_id.as_deref().map(str_bytes)
                    } else {
                        None
                    })
                    .with_client_id(str_bytes(&m.client_id))
                    .with_client_host(str_bytes(&m.client_host));
                if stable {
                    let metadata = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default();
                    member
                        .with_member_metadata(metadata)
                        .with_member_assignment(m.assignment.clone())
                } else {
                    member
                }
            })
            .collect();
        base.with_group_state(str_bytes(group.state.name()))
            .with_protocol_type(str_bytes(
                group.protocol_type.as_deref().unwrap_or_default(),
            ))
            .with_protocol_data(str_bytes(&protocol))
            .with_members(members)
    }
}
