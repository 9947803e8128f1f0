//! Palisade WireGuard key manager.
//!
//! Planned (issue 6): x25519 keys generated on the node (the private key never leaves it),
//! publication of the public key and epoch, make-before-break rotation, peer configuration through
//! the kernel or a userspace backend. Nothing is built here yet; see `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]
