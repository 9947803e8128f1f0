use crate::controlplane::Endpoint;
use crate::grpc::v1;

impl From<Endpoint> for v1::Endpoint {
    fn from(e: Endpoint) -> Self {
        v1::Endpoint {
            ip: e.ip.to_string(),
            identity: e.identity,
            node: e.node,
        }
    }
}
