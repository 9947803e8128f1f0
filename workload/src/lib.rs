//! Palisade workload tool: servers and probes that run inside pods, in the spirit of Kubernetes'
//! agnhost, so lab tests exercise real sockets end to end.
//!
//! ```text
//!   probe (client pod)                         serve (server pod)
//!   ─────────────────                          ──────────────────
//!   TCP: connect ── "probe\n" ───────────────▶ accept, read a line (≤ 1 s)
//!        ◀──────── "palisade-workload <name> tcp <port>\n" ── reply, close
//!   UDP: datagram (retried) ─────────────────▶ recv_from
//!        ◀──────── "palisade-workload <name> udp <port>" ──── send_to
//! ```
//!
//! `serve --http` adds a small HTTP/1.1 server (see [`http`]) for L7 policy tests, and [`load`]
//! an HTTP load generator for benchmarks, [`resolve`] a DNS client (one query, UDP or TCP).
//!
//! A probe only counts as reachable when the server's reply came back, so both the forward and
//! the return path are proven. Pure input parsing lives in [`ports`] and [`protocol`]; all socket
//! work is in [`serve`] and [`probe`].
#![forbid(unsafe_code)]

pub mod dns_answer;
pub mod http;
pub mod load;
pub mod ports;
pub mod probe;
pub mod protocol;
pub mod resolve;
pub mod serve;

pub use load::{LoadReport, LoadSpec, load};
pub use ports::{PortError, parse_port, parse_port_list};
pub use probe::{Outcome, ProbeResult, ProbeSpec, probe};
pub use protocol::{Protocol, ProtocolError};
pub use resolve::{ResolveReport, ResolveSpec, resolve};
pub use serve::{ServeConfig, ServeError, Server};

/// First word of every reply a server sends; probes require it.
pub const REPLY_PREFIX: &str = "palisade-workload";
