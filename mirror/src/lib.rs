//! The Kubernetes mirror (DESIGN §10): watches the policy objects of a Kubernetes API server —
//! CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy — with kube-rs watchers and
//! copies them into the Palisade control plane, so `kubectl apply` on the cluster keeps working.
//! The control plane does not depend on it: it is one more client of the REST API.
//!
//! ```text
//!  API server ──watch (kube::runtime::watcher, one per kind)──▶ translate (pure) ──▶ control plane
//!   Init / InitApply* / InitDone: apply each object, then delete what this mirror copied
//!                                  before and the cluster no longer has (a resync)
//!   Apply(obj) / Delete(obj):      apply / delete the copy
//!   after each apply (CNP, CCNP):  ──patch_status──▶ API server: `Accepted` condition, unless
//!                                  the object's status already says so (no write loop)
//! ```
//!
//! Copies carry the annotation [`translate::MIRRORED_FROM`] naming the source, and the mirror
//! only ever deletes objects carrying its own source name: policies applied to the control plane
//! directly are left alone. Objects the control plane's policy engine refuses are not copied
//! (the API server runs no such validation); their status says why, naming the field.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod runner;
pub mod translate;

pub use runner::{MirrorError, run};
