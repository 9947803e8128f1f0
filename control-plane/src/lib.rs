//! Palisade control plane.
//!
//! Planned (issue 4): the Raft-replicated (openraft, RocksDB, tonic) authority for security
//! identities, nodes and their WireGuard public keys, endpoints and policy, streaming revisioned
//! updates to node agents. Nothing is built here yet; see `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]
