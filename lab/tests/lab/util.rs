//! Shared helpers: unique lab names and the "nothing left" assertion.

use palisade_lab::Lab;
use palisade_lab::exec::list_netns;
use palisade_lab::state::{netns_prefix, state_dir};

/// A lab name unique to this test process and tag (`tag` ≤ 12 chars).
pub fn lab_name(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// The namespaces of `lab` that exist now.
pub fn namespaces_of(lab: &str) -> Vec<String> {
    let prefix = netns_prefix(lab);
    list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Asserts that no namespace and no state directory of `lab` remain.
pub fn assert_nothing_left(lab: &str) {
    assert_eq!(
        namespaces_of(lab),
        Vec::<String>::new(),
        "namespaces of `{lab}` left behind"
    );
    assert!(!state_dir(lab).exists(), "state dir of `{lab}` left behind");
}

/// Tears the lab down when dropped, so a failing test leaves nothing behind either.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
    }
}
