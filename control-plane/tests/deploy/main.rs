//! The deployment artefacts under `deploy/`: the CRDs' schemas against the policies our
//! examples use, every Kubernetes manifest through the real `kubectl` (client-side decoding),
//! and the systemd units through `systemd-analyze verify`.

mod t10_crds;
mod t20_manifests;
mod t30_systemd;
