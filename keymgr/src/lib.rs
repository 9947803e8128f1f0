//! Palisade WireGuard key manager (issue 6).
//!
//! Responsible for the node's WireGuard identity and the userspace tunnel that uses it:
//!
//! - [`keys`]: x25519 keys generated on the node (the private key never leaves it), stored 0600,
//!   rotated with a monotonic epoch, destroyed (wiped) after a grace period.
//! - [`userspace`]: a WireGuard interface inside the process (boringtun's `noise::Tunn` over a TUN
//!   device and a UDP socket) for machines without the kernel module; it keeps several key
//!   generations alive at once so rotation is make-before-break (see `keymgr/README.md`).
//! - [`reconcile`]: turns the control plane's peer list into add/remove commands for a backend,
//!   keeping a rotated peer's previous key for the grace period.
//!
//! The agent publishes [`keys::KeyStore::current`]'s public key and epoch to the control plane and
//! feeds the peers it receives through a [`reconcile::Reconciler`] to
//! [`userspace::UserspaceTunnel`].
// Two small `unsafe` blocks exist, both in `userspace.rs`: borrowing the TUN descriptor for
// `poll` and the TUNSETOFFLOAD ioctl. So this crate denies unsafe code through the workspace
// lints (each block opts out with its SAFETY comment) instead of forbidding it; STYLE 20 exempts
// the keymgr crate.

pub mod keys;
pub mod reconcile;
pub mod userspace;

pub use keys::{KeyError, KeyStore, NodeKey, PublicKey};
pub use reconcile::{PeerCommand, Reconciler};
pub use userspace::{
    PeerConfig, PeerStatus, TunnelConfig, TunnelError, TunnelKeyStatus, TunnelStatus,
    UserspaceTunnel,
};
