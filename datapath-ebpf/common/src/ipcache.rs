//! The ipcache: IP prefix → security identity, looked up longest-prefix-first.

/// Name of the LPM trie `Key<IpcacheKey>` → [`IpcacheValue`].
pub const MAP_NAME: &str = "PAL_IPCACHE";
/// Maximum prefixes.
pub const MAP_MAX_ENTRIES: u32 = 512 * 1024;
/// Bits of [`IpcacheKey`] before the address: the LPM prefix length is this plus the IP prefix.
pub const KEY_FIXED_BITS: u32 = 32;

/// LPM key data (after the kernel's `u32` prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpcacheKey {
    /// `crate::family::IPV4` or `IPV6`, always fully matched.
    pub family: u8,
    /// Reserved, zero (fully matched).
    pub _pad: [u8; 3],
    /// Address bytes in network order; IPv4 in the first 4.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<IpcacheKey>() == 20);

/// What an address resolves to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpcacheValue {
    /// Security identity of the peer.
    pub identity: u32,
    /// Reserved, zero.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<IpcacheValue>() == 8);

crate::user_pod!(IpcacheKey, IpcacheValue);
