use crate::controlplane::NodeRecord;
use crate::grpc::v1;

/// The node as registered; `acked_revision` and `live` are the server's to fill in.
impl From<NodeRecord> for v1::Node {
    fn from(n: NodeRecord) -> Self {
        v1::Node {
            name: n.name,
            address: n.address.to_string(),
            pod_cidr: n.pod_cidr.to_string(),
            wireguard_public_key: n.wireguard_public_key,
            wireguard_epoch: n.wireguard_epoch,
            last_heartbeat_ms: n.last_heartbeat_ms,
            acked_revision: 0,
            live: false,
        }
    }
}
