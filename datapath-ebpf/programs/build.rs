//! Tells cargo to relink the eBPF binary when bpf-linker changes (it is the linker, so cargo cannot
//! see it otherwise).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
