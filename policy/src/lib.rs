//! Palisade policy engine (pure: no I/O, no clock). See `docs/policy.md`.
#![forbid(unsafe_code)]
