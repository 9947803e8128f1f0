//! End-to-end lab tests with the real `palisade` binary (root, real namespaces and sockets):
//! full reachability matrices, a negative control that makes the matrix fail on purpose, and a
//! `lab up` killed with SIGKILL mid-way; HTTP rules enforced by the agents' L7 proxy; the web
//! UI in headless Chromium; agents cut off from the control plane learning new pods through
//! gossip.

mod t10_matrix;
mod t30_crash;
mod t40_cluster;
mod t50_encryption;
mod t50_observe;
mod t50_ui;
mod t60_l7_http;
mod t61_dns_fqdn;
mod t62_dns_fqdn_restart;
mod t70_tutorial;
mod t80_gossip;
mod t81_pod_records;
mod util;
