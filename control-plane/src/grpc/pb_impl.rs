//! Conversions of the control plane's own types to the automation API's messages, one file per
//! type (the shared records' are in `palisade_api::grpc::pb_impl`).

mod impl_cluster_status;
mod impl_node_view;
mod impl_wait_report;
