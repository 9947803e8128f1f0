//! A lab running Palisade itself — three voters on the control plane's host, an agent per node,
//! pods made by the CNI plugin — with the operations the agent chaos tests need: policies
//! applied and waited for, probes, agents and voters restarted with their own arguments.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use palisade_api::controlplane::PolicyKey;
use palisade_cp_client::{Client, ClientConfig, TlsConfig, WaitOutcome};
use palisade_lab::cluster::{agent_args, operator_client_config, voter_args};
use palisade_lab::exec::spawn_in_netns;
use palisade_lab::state::agent_socket;
use palisade_lab::{ClusterPlan, Lab, LabSpec, ProcessRecord, ProcessRole, Protocol};
use serde_json::Value;

use crate::faults;

/// The lab; tears itself down when dropped.
pub struct AgentLab {
    lab: Lab,
}

impl AgentLab {
    /// `nodes` nodes × `pods` pods, every pod serving TCP 80, three voters.
    pub fn up(name: &str, nodes: usize, pods: usize, bin: &Path) -> anyhow::Result<AgentLab> {
        let _ = Lab::down(name);
        let mut spec = LabSpec::new(name, nodes, pods, bin);
        spec.serve_udp.clear();
        spec.cluster = Some(ClusterPlan {
            voters: 3,
            cni_bin: bin.with_file_name("palisade-cni"),
            encryption: false,
            wireguard_rotation: None,
            l7_proxy_workers: None,
            node_encryption: false,
        });
        let lab = Lab::up(&spec).with_context(|| format!("lab up {name}"))?;
        Ok(AgentLab { lab })
    }

    /// The lab.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// An operator client of the control plane (fails over between voters). The lab's
    /// addresses exist only inside its namespaces: the client is built on a thread in the
    /// control plane's host, so its worker thread (which makes every connection) lives there.
    pub fn client(&self) -> anyhow::Result<Client> {
        let st = self.lab.state();
        let c = st.cluster.as_ref().context("not a cluster lab")?;
        let cfg = operator_client_config(st, c)?;
        let built = spawn_in_netns(&c.cp_netns, move || Client::new(cfg))
            .join()
            .map_err(|_| anyhow::anyhow!("client builder panicked"))??;
        Ok(built?)
    }

    /// A client of voter `k` alone (no failover), to ask that member what it knows.
    pub fn member_client(&self, k: usize) -> anyhow::Result<Client> {
        let st = self.lab.state();
        let name = st.name.clone();
        let c = st.cluster.as_ref().context("not a cluster lab")?;
        let url = c.api_urls.get(k - 1).context("no such voter")?.clone();
        let cfg = ClientConfig::from_flags(&[url], Some(&c.admin_token_file(&name)))?
            .with_tls(TlsConfig::from_dir(&c.operator_tls_dir(&name))?)
            .with_timeout(Duration::from_millis(500));
        let built = spawn_in_netns(&c.cp_netns, move || Client::new(cfg))
            .join()
            .map_err(|_| anyhow::anyhow!("client builder panicked"))??;
        Ok(built?)
    }

    /// Waits until voter `k` itself names a leader and has applied the leader's commit index as
    /// of the call (it rejoined and caught up); returns how long that took.
    pub fn wait_member_caught_up(&self, k: usize, timeout: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let member = self.member_client(k)?;
        let client = self.client()?;
        loop {
            let target = client
                .leader_status()
                .ok()
                .and_then(|s| s["commit_index"].as_u64());
            if let (Some(target), Ok(s)) = (target, member.cluster_status())
                && s["leader"].as_u64().is_some()
                && s["last_applied"].as_u64().is_some_and(|a| a >= target)
            {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                bail!("voter {k} did not rejoin and catch up within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Applies a CiliumNetworkPolicy `name` in `default`; returns the revision.
    pub fn apply(&self, client: &Client, name: &str, object: &Value) -> anyhow::Result<u64> {
        let key = PolicyKey {
            kind: "CiliumNetworkPolicy".into(),
            namespace: "default".into(),
            name: name.into(),
        };
        Ok(client.apply_policy(&key, object)?.revision)
    }

    /// Waits until every live node acknowledged `revision`.
    pub fn wait_acked(
        &self,
        client: &Client,
        revision: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        match client.wait_policies(Some(revision), timeout)? {
            WaitOutcome::Done { .. } => Ok(()),
            WaitOutcome::TimedOut { laggards, .. } => {
                bail!("revision {revision} not acknowledged within {timeout:?}: {laggards:?}")
            }
        }
    }

    /// Whether `from` reaches `to` on TCP `port` (a real connection from pod to pod).
    pub fn reachable(&self, from: &str, to: &str, port: u16) -> anyhow::Result<bool> {
        let ip = self.lab.resolve(to)?;
        Ok(self
            .lab
            .probe(from, ip, port, Protocol::Tcp, Duration::from_millis(700))?
            .reachable)
    }

    /// Polls until `from → to:port` is `want`; returns how long it took (`None` after `limit`).
    pub fn until_reachable(
        &self,
        from: &str,
        to: &str,
        port: u16,
        want: bool,
        limit: Duration,
    ) -> anyhow::Result<Option<Duration>> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.reachable(from, to, port)? == want {
                return Ok(Some(t0.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(None)
    }

    /// The newest record of the process named `name` (`agent-n1`, `cp2`).
    pub fn process(&mut self, name: &str) -> anyhow::Result<ProcessRecord> {
        self.lab.reload()?;
        self.lab
            .state()
            .processes
            .iter()
            .rev()
            .find(|p| p.name == name)
            .cloned()
            .with_context(|| format!("no process {name}"))
    }

    /// SIGKILLs node `node`'s agent (1-based) and starts it again with its own arguments;
    /// returns once its socket answers.
    pub fn restart_agent(&mut self, node: usize) -> anyhow::Result<Duration> {
        let name = format!("n{node}");
        let old = self.process(&format!("agent-{name}"))?;
        faults::sigkill(&old)?;
        let t0 = Instant::now();
        let st = self.lab.state().clone();
        let c = st.cluster.as_ref().context("not a cluster lab")?;
        let args = agent_args(&st, c, node - 1);
        let bin = st.palisade_bin.clone();
        self.lab.spawn(
            ProcessRole::NodeAgent,
            &format!("agent-{name}"),
            None,
            &bin,
            &args,
        )?;
        let socket = agent_socket(self.lab.name(), &name);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the restarted agent of {name} did not open its socket in 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t0.elapsed())
    }

    /// Stops voter `k` (SIGTERM, or SIGKILL when `hard`) and starts it again.
    pub fn restart_voter(&mut self, k: usize, hard: bool) -> anyhow::Result<()> {
        let old = self.process(&format!("cp{k}"))?;
        if hard {
            faults::sigkill(&old)?;
        } else {
            faults::sigterm(&old)?;
        }
        let st = self.lab.state().clone();
        let c = st.cluster.as_ref().context("not a cluster lab")?;
        let args = voter_args(&st, c, k);
        let bin = st.palisade_bin.clone();
        self.lab.spawn(
            ProcessRole::ControlPlane,
            &format!("cp{k}"),
            Some(&c.cp_netns),
            &bin,
            &args,
        )?;
        Ok(())
    }

    /// Waits until the control plane has a leader that every voter names; returns it.
    pub fn wait_leader(&self, client: &Client, timeout: Duration) -> anyhow::Result<u64> {
        let t0 = Instant::now();
        loop {
            if let Ok(s) = client.cluster_status()
                && let Some(l) = s["leader"].as_u64()
                && s["voters"].as_array().is_some_and(|v| v.len() == 3)
            {
                return Ok(l);
            }
            if t0.elapsed() > timeout {
                bail!("no leader within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts pod `name` labelled `app=<app>` on node `node` (1-based) through the CNI plugin,
    /// at host 50 of the node's pod CIDR.
    pub fn start_pod(
        &mut self,
        name: &str,
        node: usize,
        app: &str,
    ) -> anyhow::Result<std::net::IpAddr> {
        let node_name = format!("n{node}");
        let ip = self
            .lab
            .state()
            .node(&node_name)
            .and_then(|n| n.pod_cidr.host(50))
            .with_context(|| format!("no node {node_name}"))?;
        let labels = [("app".to_string(), app.to_string())].into_iter().collect();
        Ok(self.lab.start_pod(name, &node_name, labels, ip)?.ip)
    }

    /// A pod's namespace.
    pub fn pod_netns(&self, pod: &str) -> anyhow::Result<String> {
        Ok(self
            .lab
            .state()
            .pod(pod)
            .with_context(|| format!("no pod {pod}"))?
            .netns
            .clone())
    }

    /// A node's namespace.
    pub fn node_netns(&self, node: &str) -> anyhow::Result<String> {
        Ok(self
            .lab
            .state()
            .node(node)
            .with_context(|| format!("no node {node}"))?
            .netns
            .clone())
    }
}

impl Drop for AgentLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.lab.reload();
            for p in &self.lab.state().processes {
                if matches!(p.role, ProcessRole::NodeAgent | ProcessRole::ControlPlane) {
                    let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!(
                        "--- {} log tail ---\n{}",
                        p.name,
                        lines[lines.len().saturating_sub(12)..].join("\n")
                    );
                }
            }
        }
        let _ = Lab::down(self.lab.name());
    }
}

/// A CiliumNetworkPolicy: pod `to` accepts TCP `ports` only from pod `from`.
pub fn allow_only(name: &str, from: &str, to: &str, ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| serde_json::json!({"port": p.to_string(), "protocol": "TCP"}))
        .collect();
    serde_json::json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": to}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": from}}],
                         "toPorts": [{"ports": ports}]}]
        }
    })
}
