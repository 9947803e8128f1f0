//! A pod started the way a kubelet starts it: the real `palisade-cni` ADD with no `args.cni` at
//! all, the pod named only by `K8S_POD_NAMESPACE`/`K8S_POD_NAME` in `CNI_ARGS`. Its labels,
//! service account and named ports come from its Pod record in the control plane (what `palisade
//! mirror` copies from a cluster), on a real lab (three voters over mTLS, two agents):
//!
//! - before the record exists the ADD fails with CNI code 11 (try again later) naming the pod,
//!   and the agent registered nothing (no endpoint with empty labels); so does it while the
//!   record is an earlier pod's of the same name (another uid than the kubelet's `K8S_POD_UID`);
//! - once the record is applied the retried ADD succeeds, and a policy selecting the record's
//!   labels and service account admits the pod's real packets to a pod on the other node;
//! - relabelling the record moves the pod to a new identity and the policy shuts it out.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use palisade_lab::LabState;
use palisade_lab::cluster::container_id;
use palisade_lab::state::{agent_socket, netns_prefix};

use crate::util::{apply_policy, lab_up, ok};

/// n1-p1 takes TCP 80 from pods labelled `role=api` running as service account `api-sa`.
const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: n1-p1-from-api}
spec:
  endpointSelector: {matchLabels: {app: n1-p1}}
  ingress:
  - fromEndpoints:
    - matchLabels: {role: api, io.cilium.k8s.policy.serviceaccount: api-sa}
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

/// The pod's uid, as the kubelet passes it (`K8S_POD_UID`) and the mirror copies it.
const UID: &str = "3f6c2a9e-0001";

/// The Pod record of `default/api-0` on node `n2` with `role` = ROLE and `uid` = UID.
const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: api-0
  namespace: default
  uid: THE-UID
  labels: {role: ROLE, app: api}
spec:
  serviceAccountName: api-sa
  nodeName: n2
  containers:
  - name: main
    image: api:1
    ports: [{name: http, containerPort: 80}]
";

/// Stores the Pod record with label `role` and `uid`, and waits until both agents enforce it.
fn apply_pod(lab: &str, role: &str, uid: &str) {
    apply_policy(lab, &POD.replace("ROLE", role).replace("THE-UID", uid));
    ok(&["policy", "wait", "--lab", lab, "--timeout", "30s"]);
}

/// `palisade-cni ADD` for `default/api-0` in node n2, as a kubelet calls it: no labels, the pod
/// named in `CNI_ARGS` only.
fn cni_add(st: &LabState, netns: &str) -> Output {
    let cluster = st.cluster.clone().expect("cluster");
    let node_ns = st.node("n2").expect("node").netns.clone();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "palisade",
        "type": "palisade-cni",
        "agentSocket": agent_socket(&st.name, "n2"),
        "mtu": 1420,
    });
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node_ns])
        .arg(&cluster.cni_bin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container_id(&st.name, "api-0"))
        .env("CNI_NETNS", Path::new("/run/netns").join(netns))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_PATH",
            cluster.cni_bin.parent().expect("dir").as_os_str(),
        )
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=api-0;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID={UID}"
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("palisade-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("conf");
    child.wait_with_output().expect("cni")
}

/// n2's endpoints as its agent reports them: `(name, identity)`.
fn endpoints(lab: &str) -> Vec<(String, u64)> {
    let socket = agent_socket(lab, "n2");
    let out = ok(&[
        "agent",
        "status",
        "--socket",
        socket.to_str().expect("utf8"),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["identity"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Whether a TCP connection from namespace `netns` to `to`:80 is accepted within 800 ms.
fn connects(netns: &str, to: IpAddr) -> bool {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpStream::connect_timeout(&SocketAddr::new(to, 80), Duration::from_millis(800)).is_ok()
    })
    .join()
    .expect("thread")
}

fn until_connects(netns: &str, to: IpAddr, want: bool, why: &str) -> Duration {
    let start = Instant::now();
    while connects(netns, to) != want {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "api-0 → n1-p1 should be {}: {why}",
            if want { "open" } else { "closed" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn a_pod_named_without_labels_takes_them_from_its_pod_record_and_follows_relabelling() {
    let (name, _cleanup, st) = lab_up("podrec", 2, 1, &[]);
    let target = st.pod("n1-p1").expect("pod").ip;
    apply_policy(&name, POLICY);
    // The pod's namespace, named with the lab's prefix so that `lab down` removes it.
    let netns = format!("{}n2-api-0", netns_prefix(&name));
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&["netns", "add", &netns]);
    ip(&[
        "netns",
        "exec",
        &netns,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
    ]);

    // No Pod record yet: try again later, naming the pod; nothing registered.
    let out = cni_add(&st, &netns);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(reply["code"], 11, "{reply}");
    let text = reply.to_string();
    assert!(
        text.contains("default/api-0") && text.contains("Pod record"),
        "{reply}"
    );
    assert!(
        !endpoints(&name).iter().any(|(n, _)| n == "default/api-0"),
        "{:?}",
        endpoints(&name)
    );

    // The record of an earlier pod of the same name (another uid): not this pod's labels.
    apply_pod(&name, "api", "3f6c2a9e-0000");
    let out = cni_add(&st, &netns);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(reply["code"], 11, "{reply}");
    assert!(reply.to_string().contains("earlier pod"), "{reply}");
    assert!(
        !endpoints(&name).iter().any(|(n, _)| n == "default/api-0"),
        "{:?}",
        endpoints(&name)
    );

    // This pod's record arrives (as the mirror would copy it): the kubelet's retry succeeds.
    apply_pod(&name, "api", UID);
    let out = cni_add(&st, &netns);
    assert!(out.status.success(), "CNI ADD with the Pod record: {out:?}");
    let api_identity = endpoints(&name)
        .into_iter()
        .find(|(n, _)| n == "default/api-0")
        .map(|(_, id)| id)
        .expect("api-0 registered");
    let took = until_connects(&netns, target, true, "its record says role=api, sa api-sa");
    eprintln!("api-0 admitted {took:?} after its ADD");
    let identities = ok(&["identity", "list", "--lab", &name, "-o", "json"]);
    let identities: serde_json::Value = serde_json::from_str(&identities).expect("json");
    let labels = identities
        .as_array()
        .or_else(|| identities["items"].as_array())
        .into_iter()
        .flatten()
        .find(|i| i["id"].as_u64() == Some(api_identity))
        .map(|i| i["labels"].to_string())
        .unwrap_or_default();
    assert!(
        labels.contains("k8s:role=api")
            && labels.contains("k8s:io.cilium.k8s.policy.serviceaccount=api-sa"),
        "identity {api_identity}: {labels} ({identities})"
    );

    // Relabelled: a new identity, and the policy no longer admits it.
    apply_pod(&name, "batch", UID);
    let took = until_connects(&netns, target, false, "its record now says role=batch");
    eprintln!("api-0 shut out {took:?} after its relabel was enforced");
    let moved = endpoints(&name)
        .into_iter()
        .find(|(n, _)| n == "default/api-0")
        .map(|(_, id)| id)
        .expect("api-0 still registered");
    assert_ne!(moved, api_identity, "a relabelled pod gets a new identity");
    // Back to role=api: admitted again (the endpoint follows every change of its record).
    apply_pod(&name, "api", UID);
    until_connects(&netns, target, true, "its record says role=api again");
}
