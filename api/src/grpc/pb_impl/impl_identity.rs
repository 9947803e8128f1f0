use crate::controlplane::Identity;
use crate::grpc::v1;

impl From<Identity> for v1::Identity {
    fn from(i: Identity) -> Self {
        v1::Identity {
            id: i.id,
            labels: i.labels,
            unreferenced_since_ms: i.unreferenced_since_ms,
        }
    }
}
