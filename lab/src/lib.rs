//! Palisade lab: a multi-node cluster made of network namespaces on one host.
#![forbid(unsafe_code)]
