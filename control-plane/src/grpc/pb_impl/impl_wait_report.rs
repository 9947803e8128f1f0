use palisade_api::grpc::v1;

use crate::ops::{Laggard, WaitReport};

impl From<Laggard> for v1::Laggard {
    fn from(l: Laggard) -> Self {
        v1::Laggard {
            node: l.node,
            acked_revision: l.acked_revision,
        }
    }
}

impl From<WaitReport> for v1::WaitFailure {
    fn from(r: WaitReport) -> Self {
        v1::WaitFailure {
            revision: r.revision,
            nodes: u64::try_from(r.nodes).unwrap_or(u64::MAX),
            laggards: r.laggards.into_iter().map(Into::into).collect(),
        }
    }
}
