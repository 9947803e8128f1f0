//! Record ↔ message conversions, one file per record, as `From` impls: handlers only call
//! `.into()`. Policy objects and changed values become JSON text.

mod impl_change;
mod impl_endpoint;
mod impl_identity;
mod impl_node_record;
mod impl_policy_record;
