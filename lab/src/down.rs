//! Tear-down: works from the state file when there is one and from the namespace names when
//! there is not (after a crash), so it always leaves nothing behind. Idempotent.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exec::{list_netns, run};
use crate::procs::{is_alive, kill_now, pids_in_netns, wait_gone};
use crate::state::{LabState, STATE_ROOT, netns_prefix, state_dir};
use crate::{LabError, spec};

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownReport {
    /// Lab name.
    pub name: String,
    /// Namespaces deleted.
    pub namespaces_removed: Vec<String>,
    /// Pids killed (SIGKILL).
    pub processes_killed: Vec<u32>,
    /// True if the state directory existed and was removed.
    pub state_dir_removed: bool,
}

impl DownReport {
    /// True if there was nothing to remove.
    pub fn nothing_to_remove(&self) -> bool {
        self.namespaces_removed.is_empty()
            && self.processes_killed.is_empty()
            && !self.state_dir_removed
    }
}

/// The namespaces of lab `name` among `all`: every name starting with `pal-<name>-`, except those
/// that belong to another lab with a longer name of the same prefix (lab `a` must not sweep
/// `pal-a-b-n1` while lab `a-b` has a state directory).
pub fn lab_namespaces_in(all: &[String], name: &str, other_labs: &[String]) -> Vec<String> {
    let prefix = netns_prefix(name);
    let shadowing: Vec<String> = other_labs
        .iter()
        .filter(|o| o.as_str() != name)
        .map(|o| netns_prefix(o))
        .filter(|p| p.len() > prefix.len() && p.starts_with(&prefix))
        .collect();
    all.iter()
        .filter(|n| n.starts_with(&prefix) && !shadowing.iter().any(|s| n.starts_with(s.as_str())))
        .cloned()
        .collect()
}

/// Names of every lab with a state directory.
pub fn known_labs() -> Vec<String> {
    fs::read_dir(STATE_ROOT)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The namespaces that currently exist for lab `name`.
pub fn lab_namespaces(name: &str) -> Result<Vec<String>, LabError> {
    Ok(lab_namespaces_in(&list_netns()?, name, &known_labs()))
}

/// Removes lab `name`: kills every process inside its namespaces (and recorded processes still
/// alive), deletes the namespaces, then the state directory.
pub fn down(name: &str) -> Result<DownReport, LabError> {
    spec::validate_name(name)?;
    let state = LabState::load(name).ok();
    let all = list_netns()?;
    let mut targets = lab_namespaces_in(&all, name, &known_labs());
    if let Some(st) = &state {
        for ns in st.namespaces() {
            if all.contains(&ns) && !targets.contains(&ns) {
                targets.push(ns);
            }
        }
    }

    let mut killed = Vec::new();
    for pids in pids_in_netns(&targets).into_values() {
        for pid in pids {
            kill_now(pid);
            killed.push(pid);
        }
    }
    if let Some(st) = &state {
        for p in &st.processes {
            if p.start_time.is_some() && is_alive(p.pid, p.start_time) && !killed.contains(&p.pid) {
                kill_now(p.pid);
                killed.push(p.pid);
            }
        }
    }
    wait_gone(&killed, Duration::from_secs(5));

    if !targets.is_empty() {
        let script: String = targets.iter().map(|n| format!("netns del {n}\n")).collect();
        // -force: go on past a namespace that vanished meanwhile; what is left is checked below.
        let _ = run(
            Command::new("ip").args(["-force", "-batch", "-"]),
            Some(&script),
        );
        let left: Vec<String> = list_netns()?
            .into_iter()
            .filter(|n| targets.contains(n))
            .collect();
        if !left.is_empty() {
            return Err(LabError::Command {
                command: format!("ip netns del {}", left.join(" ")),
                status: "namespaces still present".to_string(),
                stderr: "see `ip netns list`".to_string(),
            });
        }
    }

    // Per-namespace resolver files (`ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf)
    // written by `Lab::set_pod_resolver`.
    for ns in &targets {
        let _ = fs::remove_dir_all(Path::new(crate::state::NETNS_ETC).join(ns));
    }
    // Agents' pinned maps outlive them by design; the lab's go with the lab.
    let _ = fs::remove_dir_all(crate::state::pin_root(name));
    let dir = state_dir(name);
    let state_dir_removed = match fs::remove_dir_all(&dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(LabError::Io {
                action: "remove",
                path: dir,
                source,
            });
        }
    };
    killed.sort_unstable();
    Ok(DownReport {
        name: name.to_string(),
        namespaces_removed: targets,
        processes_killed: killed,
        state_dir_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_selects_only_this_lab() {
        let all: Vec<String> = [
            "pal-a-fabric",
            "pal-a-n1",
            "pal-a-b-n1",
            "pal-ab-n1",
            "pal-a-n1-p1",
            "other",
            "pal-b-n1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let none: Vec<String> = vec![];
        assert_eq!(
            lab_namespaces_in(&all, "a", &none),
            vec!["pal-a-fabric", "pal-a-n1", "pal-a-b-n1", "pal-a-n1-p1"]
        );
        // `a-b` has state: lab `a` leaves its namespaces alone.
        assert_eq!(
            lab_namespaces_in(&all, "a", &["a-b".to_string(), "a".to_string()]),
            vec!["pal-a-fabric", "pal-a-n1", "pal-a-n1-p1"]
        );
        assert_eq!(
            lab_namespaces_in(&all, "a-b", &["a".to_string()]),
            vec!["pal-a-b-n1"]
        );
    }
}
