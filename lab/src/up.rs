//! Bring-up: plan, record intent, create namespaces/veths/routes, start servers, wait until every
//! server answers. Any failure rolls back through [`crate::down::down`].
//!
//! ```text
//!  validate ─▶ plan ─▶ mkdir state dir (atomic: one `up` per name) ─▶ write state (creating)
//!     ─▶ fabric ─▶ nodes ─▶ pods ─▶ servers (state re-written with pids) ─▶ ready probes
//!     ─▶ write state (ready)                 any error ─▶ down (rollback) ─▶ Err
//! ```
//!
//! Everything created lives inside `pal-<lab>-*` namespaces (veth pairs are created straight
//! across namespaces, never in the root namespace), so a sweep by name removes it all.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use palisade_workload::Protocol;

use crate::exec::{Cmds, System};
use crate::lab::probe_in_netns;
use crate::parallel::parallel_map;
use crate::plan::{self, ETH0, POD_GATEWAY};
use crate::procs::{is_alive, spawn_detached, start_time};
use crate::state::ExternalState;
use crate::state::{
    LabState, Phase, PodState, ProcessRecord, ProcessRole, STATE_ROOT, log_dir, state_dir,
};
use crate::{LabError, LabSpec, down};

/// How long `up` waits for every server to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Probes run at once while waiting for servers.
pub const READY_PARALLELISM: usize = 8;

/// Builds the lab; on failure removes whatever was created.
pub fn up(spec: &LabSpec) -> Result<LabState, LabError> {
    spec.validate()?;
    let mut state = plan::plan(spec).ok_or_else(|| LabError::InvalidSpec {
        name: spec.name.clone(),
        reason: "the address plan does not fit the CIDRs".to_string(),
    })?;
    let existing = down::lab_namespaces(&spec.name)?;
    if !existing.is_empty() {
        return Err(LabError::AlreadyExists {
            name: spec.name.clone(),
            evidence: format!("namespaces {} exist", summarize(&existing)),
        });
    }
    fs::create_dir_all(STATE_ROOT).map_err(|source| LabError::Io {
        action: "create",
        path: STATE_ROOT.into(),
        source,
    })?;
    let dir = state_dir(&spec.name);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(LabError::AlreadyExists {
                name: spec.name.clone(),
                evidence: format!("state directory `{}` exists", dir.display()),
            });
        }
        Err(source) => {
            return Err(LabError::Io {
                action: "create",
                path: dir,
                source,
            });
        }
    }
    match build(&mut state) {
        Ok(()) => Ok(state),
        Err(e) => {
            let rollback = down::down(&spec.name).err().map(|e| e.to_string());
            Err(LabError::UpFailed {
                name: spec.name.clone(),
                rollback,
                source: Box::new(e),
            })
        }
    }
}

fn summarize(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(3)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 3 {
        s.push_str(&format!(" and {} more", names.len() - 3));
    }
    s
}

fn build(state: &mut LabState) -> Result<(), LabError> {
    let logs = log_dir(&state.name);
    fs::create_dir(&logs).map_err(|source| LabError::Io {
        action: "create",
        path: logs.clone(),
        source,
    })?;
    // Intent first: the whole plan is on disk before the first namespace exists.
    state.save()?;
    build_network(Cmds(&System), state)?;
    // With a cluster, pods are made by the CNI plugin once the agents run.
    crate::cluster::start(state)?;
    start_servers(state)?;
    // Processes are confined to lab namespaces, so a crash before this save still leaves
    // nothing that the sweep in `down` would miss.
    state.save()?;
    wait_ready(state)?;
    state.phase = Phase::Ready;
    state.save()
}

/// Creates the fabric, the nodes and the pods with their links, addresses and routes (no
/// processes). Every command goes through `c`, so tests can check the exact sequence.
pub(crate) fn build_network(c: Cmds<'_>, state: &LabState) -> Result<(), LabError> {
    build_fabric(c, state)?;
    for i in 0..state.nodes.len() {
        build_node(c, state, i)?;
    }
    if state.cluster.is_none() {
        for pod in &state.pods {
            build_pod(c, state, pod)?;
        }
    }
    route_outside_pods(c, state)?;
    for x in &state.externals {
        build_external(c, state, x)?;
    }
    Ok(())
}

/// Pods placed at addresses outside their node's pod CIDR are routed by /32 from every other
/// node, via the hosting node's underlay address.
fn route_outside_pods(c: Cmds<'_>, state: &LabState) -> Result<(), LabError> {
    for n in &state.nodes {
        let mut script = String::new();
        for pod in state.pods.iter().filter(|p| p.node != n.name) {
            let Some(home) = state.node(&pod.node) else {
                continue;
            };
            let IpAddr::V4(ip) = pod.ip else { continue };
            if !home.pod_cidr.contains(ip) {
                script.push_str(&format!(
                    "route add {ip}/32 via {} dev {}\n",
                    home.underlay_ip, n.underlay_iface
                ));
            }
        }
        if !script.is_empty() {
            c.ip_batch(&n.netns, &script)?;
        }
    }
    Ok(())
}

/// A host outside the cluster: `eth0` on the fabric bridge with its address; every node routes
/// it on the bridge, and it routes each pod via that pod's node.
fn build_external(c: Cmds<'_>, state: &LabState, x: &ExternalState) -> Result<(), LabError> {
    c.ip(&["netns", "add", &x.netns])?;
    c.sysctl(&x.netns, &NO_IPV6)?;
    plug_into_fabric(c, state, &x.netns, ETH0, &x.fabric_iface)?;
    let mut script = format!(
        "link set lo up\naddr add {ip}/32 dev {d}\nlink set {d} up\nroute add {u} dev {d}\n",
        ip = x.ip,
        d = ETH0,
        u = state.underlay_cidr
    );
    for pod in &state.pods {
        if let Some(node) = state.node(&pod.node) {
            script.push_str(&format!(
                "route add {}/32 via {} dev {ETH0}\n",
                pod.ip, node.underlay_ip
            ));
        }
    }
    c.ip_batch(&x.netns, &script)?;
    for n in &state.nodes {
        c.ip_batch(
            &n.netns,
            &format!("route add {}/32 dev {}\n", x.ip, n.underlay_iface),
        )?;
    }
    Ok(())
}

pub(crate) const NO_IPV6: [&str; 2] = [
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
];

fn build_fabric(c: Cmds<'_>, state: &LabState) -> Result<(), LabError> {
    let f = &state.fabric;
    c.ip(&["netns", "add", &f.netns])?;
    c.sysctl(&f.netns, &NO_IPV6)?;
    c.ip_batch(
        &f.netns,
        &format!(
            "link set lo up\nlink add {b} type bridge\nlink set {b} up\n",
            b = f.bridge
        ),
    )
}

fn build_node(c: Cmds<'_>, state: &LabState, i: usize) -> Result<(), LabError> {
    let n = &state.nodes[i];
    c.ip(&["netns", "add", &n.netns])?;
    let mut settings = vec![
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ];
    settings.extend(NO_IPV6);
    c.sysctl(&n.netns, &settings)?;
    plug_into_fabric(c, state, &n.netns, &n.underlay_iface, &n.fabric_iface)?;
    let mut script = format!(
        "link set lo up\naddr add {ip}/{len} dev {dev}\nlink set {dev} up\n",
        ip = n.underlay_ip,
        len = n.underlay_prefix,
        dev = n.underlay_iface
    );
    // With encryption the agents route other nodes' pods through the tunnel once it is peered;
    // until then there is no route at all, so nothing crosses the underlay in clear text.
    let encrypted = state.cluster.as_ref().is_some_and(|c| c.encryption);
    for other in state
        .nodes
        .iter()
        .filter(|o| o.name != n.name && !encrypted)
    {
        script.push_str(&format!(
            "route add {} via {} dev {}\n",
            other.pod_cidr, other.underlay_ip, n.underlay_iface
        ));
    }
    c.ip_batch(&n.netns, &script)
}

/// A veth from `netns` (as `iface`) to the fabric bridge (as `port`, enslaved and up).
fn plug_into_fabric(
    c: Cmds<'_>,
    state: &LabState,
    netns: &str,
    iface: &str,
    port: &str,
) -> Result<(), LabError> {
    let f = &state.fabric;
    c.ip(&[
        "link", "add", iface, "netns", netns, "type", "veth", "peer", "name", port, "netns",
        &f.netns,
    ])?;
    c.ip_batch(
        &f.netns,
        &format!(
            "link set {port} master {b}\nlink set {port} up\n",
            b = f.bridge
        ),
    )
}

fn build_pod(c: Cmds<'_>, state: &LabState, pod: &PodState) -> Result<(), LabError> {
    let node = state.node(&pod.node).ok_or_else(|| LabError::InvalidSpec {
        name: state.name.clone(),
        reason: format!("pod `{}` names unknown node `{}`", pod.name, pod.node),
    })?;
    c.ip(&["netns", "add", &pod.netns])?;
    c.sysctl(&pod.netns, &NO_IPV6)?;
    c.ip(&[
        "link",
        "add",
        &pod.iface,
        "netns",
        &pod.netns,
        "type",
        "veth",
        "peer",
        "name",
        &pod.host_iface,
        "netns",
        &node.netns,
    ])?;
    let mac = c.link_mac(&node.netns, &pod.host_iface)?;
    c.ip_batch(
        &pod.netns,
        &format!(
            "link set lo up\naddr add {ip}/32 dev {d}\nlink set {d} up\n\
             route add {gw} dev {d} scope link\nroute add default via {gw} dev {d}\n\
             neigh replace {gw} lladdr {mac} dev {d} nud permanent\n",
            ip = pod.ip,
            d = pod.iface,
            gw = POD_GATEWAY
        ),
    )?;
    let host_len = if pod.ip.is_ipv4() { 32 } else { 128 };
    c.ip_batch(
        &node.netns,
        &format!(
            "link set {h} up\nroute add {ip}/{host_len} dev {h}\n",
            h = pod.host_iface,
            ip = pod.ip
        ),
    )
}

fn ports_arg(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn start_servers(state: &mut LabState) -> Result<(), LabError> {
    if state.serve_tcp.is_empty() && state.serve_udp.is_empty() && state.serve_http.is_empty() {
        return Ok(());
    }
    let logs = log_dir(&state.name);
    // Pods, externals and (when asked) nodes all serve the lab's ports.
    let mut servers: Vec<(String, String, Option<std::net::Ipv4Addr>)> = state
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.netns.clone(), None))
        .collect();
    servers.extend(
        state
            .externals
            .iter()
            .map(|x| (x.name.clone(), x.netns.clone(), None)),
    );
    if state.serve_nodes {
        // A node listens on its own address only: the agent shares the node's namespace, and
        // its DNS proxy answers a pod from the pod's DNS server address and port (say
        // 10.244.1.12:53), which a wildcard socket on the same port would refuse it.
        servers.extend(
            state
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.netns.clone(), Some(n.underlay_ip))),
        );
    }
    for (name, netns, address) in servers {
        let mut args = vec![
            "workload".to_string(),
            "serve".to_string(),
            "--name".to_string(),
            name.clone(),
        ];
        if let Some(ip) = address {
            args.extend(["--address".to_string(), ip.to_string()]);
        }
        if !state.serve_tcp.is_empty() {
            args.extend(["--tcp".to_string(), ports_arg(&state.serve_tcp)]);
        }
        if !state.serve_udp.is_empty() {
            args.extend(["--udp".to_string(), ports_arg(&state.serve_udp)]);
        }
        // Readiness is checked on the TCP and UDP ports: the server binds every port, HTTP
        // ones included, before it serves any.
        if !state.serve_http.is_empty() {
            args.extend(["--http".to_string(), ports_arg(&state.serve_http)]);
        }
        // Pod names may hold `/` (`x/a`): keep log files flat.
        let log = logs.join(format!("{}.log", name.replace('/', "_")));
        let pid = spawn_detached(Some(&netns), &state.palisade_bin, &args, &log)?;
        state.processes.push(ProcessRecord {
            role: ProcessRole::WorkloadServer,
            name,
            netns: Some(netns),
            pid,
            start_time: start_time(pid),
            log,
        });
    }
    Ok(())
}

fn wait_ready(state: &LabState) -> Result<(), LabError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    parallel_map(&state.pods, READY_PARALLELISM, |pod| {
        wait_pod_ready(state, pod, deadline)
    })
    .into_iter()
    .collect()
}

fn last_log_line(path: &std::path::Path) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "no output".to_string())
}

fn wait_pod_ready(state: &LabState, pod: &PodState, deadline: Instant) -> Result<(), LabError> {
    let Some(server) = state.server_of(&pod.name) else {
        return Ok(());
    };
    let Some(node) = state.node(&pod.node) else {
        return Ok(());
    };
    let not_ready = |reason: String| LabError::NotReady {
        pod: pod.name.clone(),
        reason,
        log: server.log.clone(),
    };
    let checks = state
        .serve_tcp
        .iter()
        .map(|p| (Protocol::Tcp, *p))
        .chain(state.serve_udp.iter().map(|p| (Protocol::Udp, *p)));
    for (protocol, port) in checks {
        loop {
            let r = probe_in_netns(
                &state.palisade_bin,
                &node.netns,
                pod.ip,
                port,
                protocol,
                Duration::from_millis(500),
            );
            let detail = match r {
                Ok(r) if r.reachable => break,
                Ok(r) => r.detail,
                Err(e) => e,
            };
            if !is_alive(server.pid, server.start_time) {
                return Err(not_ready(format!(
                    "server exited: {}",
                    last_log_line(&server.log)
                )));
            }
            if Instant::now() >= deadline {
                return Err(not_ready(format!(
                    "{protocol} {port} not answering from node `{}` after {READY_TIMEOUT:?}: {detail}",
                    node.name
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
