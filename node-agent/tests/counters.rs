//! The eBPF pipeline end to end: the object built by aya-build loads into the kernel (verifier),
//! attaches to a lab pod's host-side veth, and counts real packets per direction.
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN) and bpffs; `make test` runs it as root.

use palisade_node_agent::datapath::Datapath;

#[test]
fn object_loads_and_passes_the_verifier() {
    Datapath::load().expect("the datapath object must load (run as root with bpffs mounted)");
}
