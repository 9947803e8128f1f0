//! Palisade workload tool: servers and probes that run inside pods.
#![forbid(unsafe_code)]
