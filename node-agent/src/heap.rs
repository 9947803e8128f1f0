//! The agent's use of glibc's allocator: two settings that keep its resident memory to what it
//! uses. The agent rebuilds whole snapshots (flow enrichment, proxy view, pod addresses) on every
//! endpoint change, and loads the kernel's BTF once at start; glibc's defaults turn both into
//! resident memory no endpoint uses (see docs/BENCHMARKS.md, "memory per endpoint").
//!
//! These are the crate's only `unsafe` calls: plain C calls with no pointers to uphold.

/// The size from which allocations get their own mapping, returned to the kernel when freed.
const MMAP_THRESHOLD: i32 = 64 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]. By default it rises to the size of the
/// largest mapped block freed so far, after which the snapshots' tables (tens to hundreds of KB,
/// a little larger on each rebuild) come from the heap, where each new, slightly larger table
/// cannot reuse the hole its predecessor left: the heap grows with every endpoint added.
/// Call once, at start.
#[allow(unsafe_code)]
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` changes a tunable of glibc's allocator; it takes no pointers and
    // affects only where later allocations are placed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Hands the heap pages nothing uses back to the kernel. Called after loading the datapath: the
/// loader parsed the kernel's BTF (`/sys/kernel/btf/vmlinux`: about 10 MB in tens of thousands
/// of small allocations) for CO-RE relocations and dropped it, and glibc keeps such freed
/// memory resident.
#[allow(unsafe_code)]
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free memory of glibc's own heap to the kernel; it
    // touches no memory that is allocated, and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
