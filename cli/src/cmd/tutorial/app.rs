//! The tutorial's application in the lab: a three-tier app in namespace `demo` (frontend, api,
//! Redis), the cluster DNS in `kube-system`, a pod in another namespace, and two hosts outside the
//! cluster. Each pod is made by the CNI plugin with the labels and service account Kubernetes
//! would give it, gets a resolver file the way the kubelet writes one, and runs a real server.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use palisade_lab::state::ProcessRole;
use palisade_lab::{ClusterPlan, ExternalPlan, Lab, LabSpec, PodPlan};

/// The tutorial's namespace.
pub const NAMESPACE: &str = "demo";
/// The name the FQDN step allows (served by the lab's DNS).
pub const PARTNER_NAME: &str = "partner.example.test";
/// The partner's address (outside the cluster: identity `world`).
const PARTNER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A host outside the cluster that no pod ever resolves.
const ELSEWHERE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// The frontend's HTTP port.
pub const FRONTEND_PORT: u16 = 8080;
/// The api's HTTP port.
pub const API_PORT: u16 = 5000;
/// Redis.
pub const DB_PORT: u16 = 6379;
/// The partner's HTTP port.
pub const PARTNER_PORT: u16 = 80;
/// How long servers may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A pod of the tutorial: (name, namespace, labels, service account, node).
struct PodDef {
    name: &'static str,
    namespace: &'static str,
    labels: &'static [(&'static str, &'static str)],
    service_account: &'static str,
    node: usize,
}

/// frontend → api crosses nodes, and so do api → db and api → kube-dns: the tutorial's traffic
/// goes through the WireGuard tunnel between the nodes.
const PODS: [PodDef; 6] = [
    PodDef {
        name: "frontend",
        namespace: NAMESPACE,
        labels: &[("app", "frontend"), ("tier", "web")],
        service_account: "frontend",
        node: 1,
    },
    PodDef {
        name: "api",
        namespace: NAMESPACE,
        labels: &[("app", "api"), ("tier", "backend")],
        service_account: "api",
        node: 2,
    },
    PodDef {
        name: "db",
        namespace: NAMESPACE,
        labels: &[("app", "db"), ("tier", "data")],
        service_account: "db",
        node: 1,
    },
    // Copies the api's labels but runs under the namespace's default service account.
    PodDef {
        name: "impostor",
        namespace: NAMESPACE,
        labels: &[("app", "api"), ("tier", "backend")],
        service_account: "default",
        node: 2,
    },
    PodDef {
        name: "kube-dns",
        namespace: "kube-system",
        labels: &[("k8s-app", "kube-dns")],
        service_account: "coredns",
        node: 1,
    },
    PodDef {
        name: "client",
        namespace: "other",
        labels: &[("app", "client")],
        service_account: "default",
        node: 2,
    },
];

/// The lab the tutorial runs in: 2 nodes, a 3-voter control plane, WireGuard on.
pub fn lab_spec(name: &str, bin: &Path) -> LabSpec {
    let mut spec = LabSpec::new(name, 2, 1, bin);
    // The pods run the tutorial's own servers, not the lab's echo servers.
    spec.serve_tcp = Vec::new();
    spec.serve_udp = Vec::new();
    spec.pods = PODS
        .iter()
        .map(|p| PodPlan {
            name: p.name.to_string(),
            namespace: p.namespace.to_string(),
            labels: p
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node: p.node,
            ip: None,
            service_account: Some(p.service_account.to_string()),
            ports: Vec::new(),
        })
        .collect();
    spec.externals = vec![
        ExternalPlan {
            name: "partner".to_string(),
            ip: PARTNER_IP,
        },
        ExternalPlan {
            name: "elsewhere".to_string(),
            ip: ELSEWHERE_IP,
        },
    ];
    spec.cluster = Some(ClusterPlan {
        voters: 3,
        cni_bin: bin.with_file_name("palisade-cni"),
        encryption: true,
        wireguard_rotation: None,
        l7_proxy_workers: None,
        node_encryption: false,
    });
    spec
}

/// Where the tutorial keeps its files (the DNS zone, Redis' directory): inside the lab's state,
/// so `lab down` removes them.
fn work_dir(lab: &Lab) -> PathBuf {
    palisade_lab::state::state_dir(lab.name()).join("tutorial")
}

/// Starts every server, writes every pod's resolver file, and waits until each server listens.
pub fn start(lab: &mut Lab) -> Result<()> {
    let dir = work_dir(lab);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bin = lab.state().palisade_bin.clone();
    let dns_ip = pod_ip(lab, "kube-dns")?;
    for p in &PODS {
        let search = format!(
            "{ns}.svc.cluster.local svc.cluster.local cluster.local",
            ns = p.namespace
        );
        lab.set_pod_resolver(
            p.name,
            &format!(
                "search {search}\nnameserver {dns_ip}\noptions ndots:5 timeout:1 attempts:2\n"
            ),
        )?;
    }
    write_zone(lab)?;
    start_pod_server(lab, "frontend")?;
    start_pod_server(lab, "api")?;
    start_pod_server(lab, "db")?;
    start_pod_server(lab, "kube-dns")?;
    for x in lab.state().externals.clone() {
        let args = ["workload", "serve", "--http", "80", "--name", &x.name].map(String::from);
        lab.spawn(ProcessRole::Other, &x.name, Some(&x.netns), &bin, &args)?;
    }
    wait_listening(lab)
}

/// Starts the server of one pod (again, after a restart).
pub fn start_pod_server(lab: &mut Lab, pod: &str) -> Result<()> {
    let bin = lab.state().palisade_bin.clone();
    let ip = pod_ip(lab, pod)?.to_string();
    let dir = work_dir(lab);
    let netns = lab
        .state()
        .pod(pod)
        .map(|p| p.netns.clone())
        .context("unknown pod")?;
    let (program, args): (PathBuf, Vec<String>) = match pod {
        "frontend" => (
            bin,
            ["workload", "serve", "--http", "8080", "--name", "frontend"]
                .map(String::from)
                .to_vec(),
        ),
        "api" => (
            bin,
            ["workload", "serve", "--api", "5000", "--name", "api"]
                .map(String::from)
                .to_vec(),
        ),
        // A real Redis, bound to the pod's address, nothing written to disk.
        "db" => (
            PathBuf::from("redis-server"),
            vec![
                "--bind".into(),
                ip,
                "--port".into(),
                DB_PORT.to_string(),
                "--protected-mode".into(),
                "no".into(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
                "--dir".into(),
                dir.display().to_string(),
            ],
        ),
        // The cluster DNS: dnsmasq answering for cluster.local and example.test from a hosts
        // file (re-read on SIGHUP after a pod moves), never forwarding anywhere.
        "kube-dns" => (
            PathBuf::from("dnsmasq"),
            vec![
                "--keep-in-foreground".into(),
                "--log-facility=-".into(),
                "--log-queries".into(),
                "--conf-file=/dev/null".into(),
                "--no-resolv".into(),
                "--no-hosts".into(),
                "--no-poll".into(),
                "--bind-interfaces".into(),
                format!("--listen-address={ip}"),
                "--local=/cluster.local/".into(),
                "--local=/example.test/".into(),
                "--local-ttl=5".into(),
                format!("--addn-hosts={}", dir.join("zone.hosts").display()),
                format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
            ],
        ),
        other => bail!("pod `{other}` runs no server"),
    };
    lab.spawn(
        ProcessRole::WorkloadServer,
        pod,
        Some(&netns),
        &program,
        &args,
    )?;
    Ok(())
}

/// The DNS zone: every pod as `<pod>.<namespace>.svc.cluster.local` and the partner's name.
pub fn write_zone(lab: &Lab) -> Result<()> {
    let mut zone = String::new();
    for p in &lab.state().pods {
        zone.push_str(&format!(
            "{} {}.{}.svc.cluster.local\n",
            p.ip, p.name, p.namespace
        ));
    }
    zone.push_str(&format!("{PARTNER_IP} {PARTNER_NAME}\n"));
    let file = work_dir(lab).join("zone.hosts");
    std::fs::write(&file, zone).with_context(|| format!("writing {}", file.display()))
}

/// Tells the DNS server to re-read its zone.
pub fn reload_zone(lab: &Lab) -> Result<()> {
    write_zone(lab)?;
    let pid_file = work_dir(lab).join("dnsmasq.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?
        .trim()
        .parse()
        .context("dnsmasq's pid file")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .context("SIGHUP to dnsmasq")
}

/// Waits until every server listens on its port (checked with `ss` inside its namespace).
fn wait_listening(lab: &Lab) -> Result<()> {
    let mut wanted: Vec<(String, String, &str)> = [
        ("frontend", "tcp", FRONTEND_PORT),
        ("api", "tcp", API_PORT),
        ("db", "tcp", DB_PORT),
        ("kube-dns", "udp", 53),
    ]
    .iter()
    .filter_map(|(pod, proto, port)| {
        lab.state()
            .pod(pod)
            .map(|p| (p.netns.clone(), format!("sport = :{port}"), *proto))
    })
    .collect();
    wanted.extend(
        lab.state()
            .externals
            .iter()
            .map(|x| (x.netns.clone(), format!("sport = :{PARTNER_PORT}"), "tcp")),
    );
    for (netns, filter, proto) in wanted {
        wait_listening_in(&netns, proto, &filter)?;
    }
    Ok(())
}

/// Waits until a socket matching `filter` listens in `netns`.
pub fn wait_listening_in(netns: &str, proto: &str, filter: &str) -> Result<()> {
    let flag = if proto == "udp" { "-Hlnu" } else { "-Hlnt" };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let out = palisade_lab::exec::exec_in(netns, "ss", &[flag, filter]).unwrap_or_default();
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no server listens in {netns} ({proto} {filter}) after {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pod's current address.
pub fn pod_ip(lab: &Lab, pod: &str) -> Result<IpAddr> {
    lab.state()
        .pod(pod)
        .map(|p| p.ip)
        .with_context(|| format!("the lab has no pod `{pod}`"))
}

/// An external host's address.
pub fn external_ip(lab: &Lab, name: &str) -> Result<IpAddr> {
    lab.state()
        .externals
        .iter()
        .find(|x| x.name == name)
        .map(|x| IpAddr::V4(x.ip))
        .with_context(|| format!("the lab has no external host `{name}`"))
}

/// Who is who, by address: pods by name, externals by name (for reading flows).
pub fn names_by_ip(lab: &Lab) -> BTreeMap<IpAddr, String> {
    let st = lab.state();
    st.pods
        .iter()
        .map(|p| (p.ip, p.name.clone()))
        .chain(
            st.externals
                .iter()
                .map(|x| (IpAddr::V4(x.ip), x.name.clone())),
        )
        .collect()
}
