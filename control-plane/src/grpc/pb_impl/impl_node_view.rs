use palisade_api::grpc::v1;

use crate::ops::NodeView;

impl From<NodeView> for v1::Node {
    fn from(n: NodeView) -> Self {
        v1::Node {
            acked_revision: n.acked_revision,
            live: n.live,
            ..n.node.into()
        }
    }
}
