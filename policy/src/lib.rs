//! Palisade policy engine (pure: no I/O, no clock). See `docs/policy.md`.
//!
//! ```text
//!  text ─load─► api objects ─ir─► PolicyEntry (normalized rules)
//!                                   │  + identities (labels → u32) + SelectorCache
//!                                   ▼
//!                      SelectorPolicy (per identity) ─compile─► MapState (datapath keys)
//!                                                                 │
//!                  verdict / trace / suite ◄── lookup (the datapath's order)
//! ```
#![forbid(unsafe_code)]

pub mod compile;
pub mod engine;
pub mod error;
pub mod eval;
pub mod identity;
pub mod ir;
pub mod labels;
pub mod load;
pub mod mapstate;
pub mod namespace;
pub mod pod;
pub mod selector;
pub mod selector_cache;
pub mod suite;
pub mod verdict;
