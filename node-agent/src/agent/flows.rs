//! The agent's flow pipeline (issue 7): flow events from the datapath, named and stored for
//! the observer.
//!
//! ```text
//!  eBPF (PAL_EVENTS ring buffer) ──▶ reader thread: decode ─▶ enrich ─▶ metrics ─▶ FlowRing
//!  L7 and DNS proxies ──▶ L7 flow ─▶ metrics (count_l7) ─────────────────────────────▶ FlowRing
//!                                         ▲ Enrichment snapshot          (bounded, lost count)
//!  run loop (endpoints, identities) ──────┘                                  │
//!                                     observer (gRPC, tokio thread): filter ─┘─▶ GetFlows
//! ```
//!
//! Losses are counted twice over: events the kernel's ring buffer had no room for (the reader
//! fell behind; counted by the eBPF program) and flows overwritten in the bounded ring before a
//! reader streamed them.

mod decode;
mod enrich;
mod filter;
mod l7;
mod metrics;
mod reader;
mod ring;

pub use decode::{DecodeError, decode_event, drop_reason, drop_reason_text, event_type, to_flow};
pub use enrich::{EndpointMeta, Enrichment, LocalEndpoint, PolicyNames, SharedEnrichment};
pub use filter::{FilterError, FlowFilters};
pub use l7::{dns_flow, l7_flow};
pub use metrics::{count_l7, match_name};
pub use reader::spawn as spawn_reader;
pub use ring::{Batch, FlowRing, RawEvent, RingStats, StoredFlow};
