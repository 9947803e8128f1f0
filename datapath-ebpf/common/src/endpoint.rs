//! Endpoints: the pods this node enforces for, keyed by the ifindex of their host-side veth.

/// Name of the hash map `u32 ifindex` → [`EndpointInfo`].
pub const MAP_NAME: &str = "PAL_ENDPOINTS";
/// Maximum endpoints per node.
pub const MAP_MAX_ENTRIES: u32 = 65_536;

/// What the datapath knows about a local endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Node-local endpoint id: the first field of every [`crate::policy::PolicyKey`].
    pub endpoint_id: u32,
    /// The endpoint's security identity (source identity of its egress flows).
    pub identity: u32,
    /// Bit set of `FLAG_*`.
    pub flags: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// The endpoint's IPv4 address (network order) when `FLAG_HAS_IPV4`.
    pub ipv4: [u8; 4],
    /// Reserved, zero.
    pub _pad2: [u8; 12],
    /// The endpoint's IPv6 address (network order) when `FLAG_HAS_IPV6`.
    pub ipv6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 48);

/// The endpoint has an IPv4 address; packets from it with another IPv4 source are dropped.
pub const FLAG_HAS_IPV4: u32 = 1 << 0;
/// The endpoint has an IPv6 address; packets from it with another IPv6 source are dropped.
pub const FLAG_HAS_IPV6: u32 = 1 << 1;
/// Traffic from the endpoint's own node (the `host` identity) is always allowed in, whatever
/// the policy says: Kubernetes' rule and Cilium's default (`--allow-localhost=always`).
pub const FLAG_ALLOW_LOCALHOST: u32 = 1 << 2;

/// The node runs an L7 proxy: a packet entering the endpoint with a redirect verdict must carry
/// [`PROXY_MARK`] (it comes from the proxy), otherwise it is dropped. Without the flag a redirect
/// passes as an allow (no proxy to enforce the L7 rules).
pub const FLAG_L7_PROXY: u32 = 1 << 3;

/// Socket mark of the L7 proxy's upstream connections (a bit no routing rule uses).
pub const PROXY_MARK: u32 = 0x0400_0000;

/// Reserved identity of the local node.
pub const IDENTITY_HOST: u32 = 1;

crate::user_pod!(EndpointInfo);
