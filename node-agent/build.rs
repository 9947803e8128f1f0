//! Builds the eBPF programs (datapath-ebpf/programs) with the nightly toolchain and bpf-linker, and
//! leaves the object in OUT_DIR where `datapath.rs` embeds it.
fn main() -> aya_build::Result<()> {
    let package = aya_build::Package {
        name: "palisade-datapath-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../datapath-ebpf/programs"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
}
