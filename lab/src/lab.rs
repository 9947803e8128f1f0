//! [`Lab`]: a handle on a lab that exists, with the operations tests and the CLI use.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use palisade_workload::{ProbeResult, Protocol};

use crate::down::{self, DownReport};
use crate::exec::run_output;
use crate::exec::{exec_in, ip, ip_batch};
use crate::matrix::{Matrix, PairResult};
use crate::parallel::parallel_map;
use crate::procs::is_alive;
use crate::state::{LabState, NodeState, PodState, ProcessRecord, ProcessRole};
use crate::{LabError, LabSpec, spec, up};

/// Probes run at once by [`Lab::matrix`].
pub const MATRIX_PARALLELISM: usize = 8;

/// A lab that exists (built by [`Lab::up`] or read back by [`Lab::load`]).
#[derive(Debug, Clone)]
pub struct Lab {
    state: LabState,
}

// === impl Lab ===

impl Lab {
    /// Builds a lab and waits until every pod's servers answer. Fails, having removed whatever it
    /// created, if anything goes wrong; fails without touching anything if the lab exists.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        up::up(spec).map(|state| Lab { state })
    }

    /// Reads an existing lab's state.
    pub fn load(name: &str) -> Result<Lab, LabError> {
        spec::validate_name(name)?;
        LabState::load(name).map(|state| Lab { state })
    }

    /// Removes a lab entirely; works after a crash and when there is nothing left (idempotent).
    pub fn down(name: &str) -> Result<DownReport, LabError> {
        down::down(name)
    }

    /// The recorded state.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Resolves a probe target: a pod name or an IP address.
    pub fn resolve(&self, target: &str) -> Result<IpAddr, LabError> {
        if let Some(p) = self.state.pod(target) {
            return Ok(p.ip);
        }
        target.parse().map_err(|_| LabError::UnknownPod {
            lab: self.state.name.clone(),
            pod: target.to_string(),
            known: self.state.pod_names(),
        })
    }

    /// Re-reads the state from disk (another handle may have recorded processes).
    pub fn reload(&mut self) -> Result<(), LabError> {
        self.state = LabState::load(&self.state.name)?;
        Ok(())
    }

    /// Starts a long-running process for the lab (a node agent, a control-plane voter, a test
    /// helper), detached, inside `netns` (or the root namespace when `None`), logging to
    /// `logs/<name>.log`, and records it in the state so `down` kills it. Reads the state back
    /// first, so records made through other handles are kept.
    pub fn spawn(
        &mut self,
        role: ProcessRole,
        name: &str,
        netns: Option<&str>,
        program: &Path,
        args: &[String],
    ) -> Result<ProcessRecord, LabError> {
        self.reload()?;
        self.state.spawn_process(role, name, netns, program, args)
    }

    /// Starts one more pod `name` with `labels` at `ip` on `node` of a running cluster lab
    /// through the CNI plugin (see [`crate::cluster::start_pod`]).
    pub fn start_pod(
        &mut self,
        name: &str,
        node: &str,
        labels: std::collections::BTreeMap<String, String>,
        ip: std::net::Ipv4Addr,
    ) -> Result<PodState, LabError> {
        self.reload()?;
        crate::cluster::start_pod(&mut self.state, name, node, labels, ip)
    }

    /// Whether a recorded process is still running (same pid and start time).
    pub fn process_alive(record: &ProcessRecord) -> bool {
        is_alive(record.pid, record.start_time)
    }

    /// Whether a pod's server process is alive (`None` if it has none).
    pub fn server_alive(&self, pod: &str) -> Option<bool> {
        self.state
            .server_of(pod)
            .map(|p| is_alive(p.pid, p.start_time))
    }

    /// Probes `to_ip:port` from inside pod `from_pod` with `palisade workload probe`.
    pub fn probe(
        &self,
        from_pod: &str,
        to_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<ProbeResult, LabError> {
        let pod = self
            .state
            .pod(from_pod)
            .ok_or_else(|| LabError::UnknownPod {
                lab: self.state.name.clone(),
                pod: from_pod.to_string(),
                known: self.state.pod_names(),
            })?;
        probe_in_netns(
            &self.state.palisade_bin,
            &pod.netns,
            to_ip,
            port,
            protocol,
            timeout,
        )
        .map_err(|reason| LabError::Probe {
            from: from_pod.to_string(),
            reason,
        })
    }

    /// Probes every ordered pair of distinct pods ([`MATRIX_PARALLELISM`] at a time).
    pub fn matrix(
        &self,
        port: u16,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<Matrix, LabError> {
        let names: Vec<&str> = self.state.pods.iter().map(|p| p.name.as_str()).collect();
        let pairs: Vec<(&str, &str)> = names
            .iter()
            .flat_map(|a| names.iter().filter(move |b| *b != a).map(move |b| (*a, *b)))
            .collect();
        Ok(Matrix::new(
            port,
            protocol,
            self.probe_pairs(&pairs, port, protocol, timeout)?,
        ))
    }

    /// Probes the given (from pod, to pod) pairs, [`MATRIX_PARALLELISM`] at a time; results keep
    /// the order of `pairs`. Policy tests use it for the pairs a policy is about.
    pub fn probe_pairs(
        &self,
        pairs: &[(&str, &str)],
        port: u16,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<Vec<PairResult>, LabError> {
        for (from, to) in pairs {
            self.pod_state(from)?;
            self.pod_state(to)?;
        }
        parallel_map(pairs, MATRIX_PARALLELISM, |&(from, to)| {
            let to = self.pod_state(to)?;
            self.probe(from, to.ip, port, protocol, timeout)
                .map(|r| PairResult {
                    from: from.to_string(),
                    to: to.name.clone(),
                    to_ip: to.ip,
                    reachable: r.reachable,
                    result: r.result,
                    rtt_us: r.rtt_us,
                    detail: r.detail,
                })
        })
        .into_iter()
        .collect()
    }

    fn pod_state(&self, name: &str) -> Result<&PodState, LabError> {
        self.state.pod(name).ok_or_else(|| LabError::UnknownPod {
            lab: self.state.name.clone(),
            pod: name.to_string(),
            known: self.state.pod_names(),
        })
    }

    /// Runs `program args...` inside a pod's namespace and returns its stdout.
    pub fn exec_in_pod(&self, pod: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
        exec_in(&self.pod_state(pod)?.netns, program, args)
    }

    /// Runs `program args...` inside a node's namespace (nft, tc, ip...) and returns its stdout.
    pub fn exec_in_node(
        &self,
        node: &str,
        program: &str,
        args: &[&str],
    ) -> Result<String, LabError> {
        exec_in(&self.node_state(node)?.netns, program, args)
    }

    /// Gives a pod its resolver configuration, as the kubelet writes a pod's `/etc/resolv.conf`:
    /// every command run in the pod with `ip netns exec` (probes, `curl`, `dig`) reads it. `down`
    /// removes it with the namespace.
    pub fn set_pod_resolver(&self, pod: &str, resolv_conf: &str) -> Result<(), LabError> {
        let dir = Path::new(crate::state::NETNS_ETC).join(&self.pod_state(pod)?.netns);
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| LabError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let file = dir.join("resolv.conf");
        std::fs::write(&file, resolv_conf).map_err(io("write", &file))
    }

    /// Restarts a pod with a new address (processes killed, CNI DEL, new namespace, CNI ADD) and
    /// returns the address; see [`crate::cluster`]. Only for labs that run a cluster.
    pub fn restart_pod(&mut self, pod: &str) -> Result<IpAddr, LabError> {
        self.reload()?;
        crate::cluster::restart_pod(&mut self.state, pod)
    }

    /// Fault injection: takes a node's underlay link (`eth0`) down or back up. While it is down
    /// the node is cut off from every other node; pods on the same node still reach each other.
    pub fn set_underlay(&self, node: &str, up: bool) -> Result<(), LabError> {
        let n = self.node_state(node)?;
        let state = if up { "up" } else { "down" };
        ip(&["-n", &n.netns, "link", "set", &n.underlay_iface, state])?;
        if up {
            // Routes via the underlay went away with the link; put them back.
            let script: String = self
                .state
                .nodes
                .iter()
                .filter(|o| o.name != n.name)
                .map(|o| {
                    format!(
                        "route replace {} via {} dev {}\n",
                        o.pod_cidr, o.underlay_ip, n.underlay_iface
                    )
                })
                .collect();
            if !script.is_empty() {
                ip_batch(&n.netns, &script)?;
            }
        }
        Ok(())
    }

    fn node_state(&self, name: &str) -> Result<&NodeState, LabError> {
        self.state.node(name).ok_or_else(|| LabError::UnknownNode {
            lab: self.state.name.clone(),
            node: name.to_string(),
            known: self
                .state
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// Runs `palisade workload probe` inside `netns` and parses its JSON line. Exit status 0 and 1
/// both carry a result; anything else is an error (the message says why).
pub fn probe_in_netns(
    bin: &Path,
    netns: &str,
    to: IpAddr,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Result<ProbeResult, String> {
    let timeout_arg = format!("{}ms", timeout.as_millis().max(1));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(bin)
        .args([
            "workload",
            "probe",
            "--to",
            &to.to_string(),
            "--port",
            &port.to_string(),
        ])
        .args(["--protocol", protocol.as_str(), "--timeout", &timeout_arg]);
    let out = run_output(&mut cmd, None).map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0 | 1) => serde_json::from_str(stdout.trim())
            .map_err(|e| format!("cannot parse probe output `{}`: {e}", stdout.trim())),
        _ => Err(format!(
            "`ip netns exec {netns} palisade workload probe` exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}
