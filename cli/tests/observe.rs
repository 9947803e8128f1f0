//! Flow observability end to end (issue 7): a real agent in a lab node, real packets between
//! pods, the flows read from the eBPF ring buffer, served by the agent's observer and shown by
//! `palisade observe` with Hubble's filter flags and output formats; follow mode; loss
//! accounting with a ring too small for the traffic; the Hubble metrics. Needs root; `make test`
//! runs it as root.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use palisade_api::agent::{AgentRequest, AgentResponse, EndpointSpec};
use palisade_lab::exec::spawn_in_netns;
use palisade_lab::{Lab, LabSpec, ProcessRole, Protocol};
use palisade_node_agent::agent;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const NS: &str = "obs-demo";
/// Flows the agent keeps: small, so the test can overflow it.
const RING: usize = 48;

struct Cleanup {
    lab: String,
    dir: PathBuf,
    pins: PathBuf,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Lab::down(&self.lab);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// n1-p2 accepts TCP 80 from n1-p1 only; n1-p3 is not selected by any policy.
const ALLOW_P1_TO_P2: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p2-from-p1, namespace: obs-demo}
spec:
  podSelector: {matchLabels: {app: n1-p2}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: n1-p1}}}]
      ports: [{port: 80, protocol: TCP}]
";

struct Env {
    lab: Lab,
    netns: String,
    server: String,
    metrics: std::net::SocketAddr,
    identities: BTreeMap<String, u32>,
}

/// Starts a one-node lab with three pods and an agent enforcing `policy_files` (name, YAML)
/// from its policy directory.
fn start(name: &str, dir: &Path, pins: &Path, policy_files: &[(&str, &str)]) -> Env {
    let (socket, state, policies) = (
        dir.join("agent.sock"),
        dir.join("state"),
        dir.join("policies"),
    );
    std::fs::create_dir_all(&policies).expect("dirs");
    for (file, yaml) in policy_files {
        std::fs::write(policies.join(file), yaml).expect("policy");
    }
    let mut lab = Lab::up(&LabSpec::new(name, 1, 3, BIN)).expect("lab up");
    let node = lab.state().nodes[0].clone();
    let server = format!("{}:4244", node.underlay_ip);
    let metrics: std::net::SocketAddr = format!("{}:9962", node.underlay_ip).parse().expect("addr");
    let args: Vec<String> = [
        "agent",
        "run",
        "--node",
        &node.name,
        "--pod-cidr",
        &node.pod_cidr.to_string(),
        "--node-ip",
        &node.underlay_ip.to_string(),
        "--socket",
        socket.to_str().expect("utf8"),
        "--state-dir",
        state.to_str().expect("utf8"),
        "--policy-dir",
        policies.to_str().expect("utf8"),
        "--small-maps",
        "--netns",
        &node.netns,
        "--bpf-pin-dir",
        pins.to_str().expect("utf8"),
        "--hubble-listen",
        &server,
        "--metrics-listen",
        &metrics.to_string(),
        "--flow-ring-size",
        &RING.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rec = lab
        .spawn(
            ProcessRole::NodeAgent,
            "agent-n1",
            None,
            Path::new(BIN),
            &args,
        )
        .expect("spawn agent");
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent::request(&socket, &AgentRequest::Status {}).is_err() {
        assert!(
            Instant::now() < deadline,
            "agent did not start; see {}",
            rec.log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut identities = BTreeMap::new();
    for pod in lab.state().pods.clone() {
        let spec = EndpointSpec {
            container_id: format!("c-{}", pod.name),
            ifname: "eth0".into(),
            netns: format!("/run/netns/{}", pod.netns),
            host_iface: pod.host_iface.clone(),
            pod_namespace: NS.into(),
            pod_name: pod.name.clone(),
            labels: BTreeMap::from([("app".to_string(), pod.name.clone())]).into(),
            service_account: None,
            ips: vec![pod.ip],
            ports: vec![],
            from_pod_record: false,
            pod_uid: None,
        };
        match agent::request(&socket, &AgentRequest::EndpointAdd(spec)).expect("endpoint add") {
            AgentResponse::EndpointAdded { identity, .. } => {
                identities.insert(pod.name.clone(), identity);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    Env {
        lab,
        netns: node.netns,
        server,
        metrics,
        identities,
    }
}

impl Env {
    fn ip(&self, pod: &str) -> IpAddr {
        self.lab.state().pod(pod).expect("pod").ip
    }

    fn probe(&self, from: &str, to: &str) -> bool {
        self.probe_port(from, to, 80)
    }

    fn probe_port(&self, from: &str, to: &str, port: u16) -> bool {
        self.lab
            .probe(
                from,
                self.ip(to),
                port,
                Protocol::Tcp,
                Duration::from_millis(600),
            )
            .expect("probe")
            .reachable
    }

    /// `palisade observe --server <agent> ARGS` from inside the node.
    fn observe(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                BIN,
                "observe",
                "--server",
                &self.server,
            ])
            .args(args)
            .output()
            .expect("run palisade observe")
    }

    /// The flows of `observe -o json ARGS` (asserting success).
    fn flows(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.observe(&all);
        assert!(
            out.status.success(),
            "observe {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    fn metrics(&self) -> String {
        let addr = self.metrics;
        spawn_in_netns(&self.netns, move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect metrics");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            let mut body = String::new();
            s.read_to_string(&mut body).expect("read");
            body
        })
        .join()
        .expect("thread")
        .expect("netns")
    }
}

fn pod_of(flow: &Value, side: &str) -> String {
    format!(
        "{}/{}",
        flow[side]["namespace"].as_str().unwrap_or(""),
        flow[side]["pod_name"].as_str().unwrap_or("")
    )
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn observe_shows_real_flows_with_hubble_filters_follow_and_loss_accounting() {
    let name = format!("obs{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("pal-observe-{}", std::process::id()));
    let pins = PathBuf::from(format!("/sys/fs/bpf/palisade-obs-{}", std::process::id()));
    let _cleanup = Cleanup {
        lab: name.clone(),
        dir: dir.clone(),
        pins: pins.clone(),
    };
    let env = start(&name, &dir, &pins, &[("p2.yaml", ALLOW_P1_TO_P2)]);
    let (p1, p2, p3) = (
        env.identities["n1-p1"],
        env.identities["n1-p2"],
        env.identities["n1-p3"],
    );

    // Real packets: one allowed connection, one denied.
    assert!(env.probe("n1-p1", "n1-p2"), "p1 -> p2 is allowed");
    assert!(!env.probe("n1-p3", "n1-p2"), "p3 -> p2 is denied");
    std::thread::sleep(Duration::from_millis(500));

    let all = env.flows(&["--last", "100"]);
    let forwarded = all
        .iter()
        .find(|f| {
            f["verdict"] == "FORWARDED"
                && f["event_type"]["type"] == 9
                && f["traffic_direction"] == "INGRESS"
                && pod_of(f, "destination") == "obs-demo/n1-p2"
        })
        .unwrap_or_else(|| panic!("no forwarded ingress flow to p2 in {all:#?}"));
    assert_eq!(pod_of(forwarded, "source"), "obs-demo/n1-p1");
    assert_eq!(forwarded["source"]["identity"], p1);
    assert_eq!(forwarded["destination"]["identity"], p2);
    assert_eq!(forwarded["l4"]["TCP"]["destination_port"], 80);
    // The connection's first packet, and the rule that let it in names the peer and a port.
    assert_eq!(forwarded["l4"]["TCP"]["flags"]["SYN"], true, "{forwarded}");
    // (JSON leaves out false and zero fields, as protojson does.)
    assert!(
        forwarded["l4"]["TCP"]["flags"]["ACK"].is_null(),
        "{forwarded}"
    );
    assert_eq!(
        forwarded["policy_match_type"], 2,
        "Hubble's L3_L4: {forwarded}"
    );
    assert_eq!(forwarded["IP"]["destination"], env.ip("n1-p2").to_string());
    assert_eq!(forwarded["Type"], "L3_L4");
    assert_eq!(forwarded["node_name"], "n1");
    assert!(forwarded["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(
        forwarded["destination"]["labels"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l == "k8s:app=n1-p2")),
        "labels from the identity: {forwarded}"
    );
    let dropped = all
        .iter()
        .find(|f| f["verdict"] == "DROPPED")
        .unwrap_or_else(|| panic!("no dropped flow in {all:#?}"));
    assert_eq!(pod_of(dropped, "source"), "obs-demo/n1-p3");
    assert_eq!(pod_of(dropped, "destination"), "obs-demo/n1-p2");
    assert_eq!(dropped["source"]["identity"], p3);
    assert_eq!(dropped["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(dropped["traffic_direction"], "INGRESS");
    assert_eq!(dropped["event_type"]["type"], 1);
    assert_eq!(dropped["l4"]["TCP"]["flags"]["SYN"], true, "{dropped}");
    // Default deny: no entry decided.
    assert!(dropped["policy_match_type"].is_null(), "{dropped}");
    // The policy that let p1 in is named, as Hubble names it; default deny names none.
    let by = &forwarded["ingress_allowed_by"];
    assert_eq!(by.as_array().map(Vec::len), Some(1), "{forwarded}");
    assert_eq!(by[0]["kind"], "NetworkPolicy", "{forwarded}");
    assert_eq!(by[0]["name"], "p2-from-p1");
    assert_eq!(by[0]["namespace"], NS);
    assert!(
        by[0]["revision"]
            .as_str()
            .is_some_and(|r| r.parse::<u64>().is_ok_and(|r| r > 0)),
        "revision as protojson's uint64 string: {forwarded}"
    );
    assert!(
        by[0]["labels"].as_array().is_some_and(|l| {
            l.iter()
                .any(|l| l == "k8s:io.cilium.k8s.policy.derived-from=NetworkPolicy")
                && l.iter()
                    .any(|l| l == "k8s:io.cilium.k8s.policy.name=p2-from-p1")
                && l.iter()
                    .any(|l| l == "k8s:io.cilium.k8s.policy.namespace=obs-demo")
        }),
        "{forwarded}"
    );
    for k in [
        "egress_allowed_by",
        "ingress_denied_by",
        "egress_denied_by",
        "ingress_allowed_by",
    ] {
        assert!(
            dropped.get(k).is_none(),
            "default deny names no {k}: {dropped}"
        );
    }

    // Compact output reads like Hubble's.
    let out = env.observe(&["--verdict", "DROPPED"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no compact line: {out:?}"));
    assert!(
        line.contains("obs-demo/n1-p3:")
            && line.contains(&format!("(ID:{p3}) -> obs-demo/n1-p2:80 (ID:{p2})"))
            && line.ends_with("DROPPED (Policy denied) (TCP Flags: SYN)"),
        "{line}"
    );

    // Every filter flag, against the real flows: each selects what it names and nothing else.
    let check = |args: &[&str], want: &dyn Fn(&Value) -> bool| {
        let got = env.flows(&[&["--last", "100"], args].concat());
        assert!(!got.is_empty(), "{args:?} selected nothing");
        for f in &got {
            assert!(want(f), "{args:?} selected {f}");
        }
        got.len()
    };
    let total = all.len();
    check(&["--verdict", "DROPPED"], &|f| f["verdict"] == "DROPPED");
    check(&["--verdict", "forwarded"], &|f| {
        f["verdict"] == "FORWARDED"
    });
    check(&["--type", "drop"], &|f| f["verdict"] == "DROPPED");
    check(&["-t", "policy-verdict"], &|f| f["verdict"] == "FORWARDED");
    // Trace flows: the allowed connection's state changes (SYN-ACK, FIN or RST), from both
    // endpoints' hooks; p2's answers are replies.
    check(&["-t", "trace"], &|f| {
        f["event_type"]["type"] == 4
            && f["verdict"] == "FORWARDED"
            && f["l4"]["TCP"]["flags"].is_object()
            && pod_of(f, "source") != "obs-demo/n1-p3"
    });
    let traces = env.flows(&["--last", "100", "-t", "trace"]);
    assert!(
        traces
            .iter()
            .any(|f| pod_of(f, "source") == "obs-demo/n1-p2" && f["is_reply"] == true),
        "p2's answer is a reply: {traces:#?}"
    );
    assert!(
        traces
            .iter()
            .any(|f| pod_of(f, "source") == "obs-demo/n1-p1" && f["is_reply"] == false),
        "p1's packets are not: {traces:#?}"
    );
    check(&["--from-pod", "obs-demo/n1-p3"], &|f| {
        pod_of(f, "source") == "obs-demo/n1-p3"
    });
    // (`-n` also selects any flow *to* the namespace, so p2's replies to p1 would match too:
    // only the connections' first packets here.)
    check(
        &["-n", NS, "--to-pod", "n1-p2", "-t", "policy-verdict"],
        &|f| pod_of(f, "destination") == "obs-demo/n1-p2",
    );
    check(&["--pod", "obs-demo/n1-p1"], &|f| {
        pod_of(f, "source") == "obs-demo/n1-p1" || pod_of(f, "destination") == "obs-demo/n1-p1"
    });
    let p3ip = env.ip("n1-p3").to_string();
    check(&["--from-ip", &p3ip], &|f| {
        f["IP"]["source"] == p3ip.as_str()
    });
    check(&["--ip", &p3ip], &|f| {
        f["IP"]["source"] == p3ip.as_str() || f["IP"]["destination"] == p3ip.as_str()
    });
    let p2ip = env.ip("n1-p2").to_string();
    check(&["--to-ip", &format!("{p2ip}/32")], &|f| {
        f["IP"]["destination"] == p2ip.as_str()
    });
    check(&["--from-label", "app=n1-p1"], &|f| {
        f["source"]["identity"] == p1
    });
    check(&["--to-label", "k8s:app=n1-p2"], &|f| {
        f["destination"]["identity"] == p2
    });
    check(&["--label", "app=n1-p3"], &|f| {
        f["source"]["identity"] == p3 || f["destination"]["identity"] == p3
    });
    check(&["--from-namespace", NS], &|f| {
        f["source"]["namespace"] == NS
    });
    check(&["--to-namespace", NS], &|f| {
        f["destination"]["namespace"] == NS
    });
    check(&["--from-identity", &p3.to_string()], &|f| {
        f["source"]["identity"] == p3
    });
    check(&["--to-identity", &p2.to_string()], &|f| {
        f["destination"]["identity"] == p2
    });
    check(&["--to-port", "80"], &|f| {
        f["l4"]["TCP"]["destination_port"] == 80
    });
    check(&["--protocol", "tcp"], &|f| f["l4"]["TCP"].is_object());
    check(&["--traffic-direction", "ingress"], &|f| {
        f["traffic_direction"] == "INGRESS"
    });
    check(&["--drop-reason-desc", "POLICY_DENIED"], &|f| {
        f["drop_reason_desc"] == "POLICY_DENIED"
    });
    check(&["--node-name", "n*"], &|f| f["node_name"] == "n1");
    check(&["--since", "5m"], &|_| true);
    check(&["-A"], &|_| true);
    let not_p3 = check(&["--not", "--from-pod", "obs-demo/n1-p3"], &|f| {
        pod_of(f, "source") != "obs-demo/n1-p3"
    });
    assert!(not_p3 < total, "--not removed p3's flows");
    // From port 80: only p2's answers, which are traces of the connection p1 opened.
    check(&["--from-port", "80"], &|f| {
        f["l4"]["TCP"]["source_port"] == 80
            && f["is_reply"] == true
            && f["event_type"]["type"] == 4
            && pod_of(f, "source") == "obs-demo/n1-p2"
    });
    // Filters that match none of this traffic select nothing.
    for args in [
        &["--protocol", "udp"][..],
        &["-n", "elsewhere"],
        &["--http-method", "GET"],
        &["--http-path", "/api"],
        &["--http-status", "5+"],
        &["--from-port", "81"],
        &["--node-name", "other"],
        &["--until", "2000-01-01T00:00:00Z"],
    ] {
        assert!(
            env.flows(&[&["--last", "100"], args].concat()).is_empty(),
            "{args:?}"
        );
    }

    // --last and --first pick from the right end.
    let last = env.flows(&["--last", "1"]);
    let first = env.flows(&["--first", "1"]);
    assert_eq!(last.len(), 1);
    assert_eq!(first.len(), 1);
    assert_eq!(last[0]["uuid"], all.last().expect("flows")["uuid"]);
    assert_eq!(first[0]["uuid"], all[0]["uuid"]);

    // jsonpb is the whole response; table has a header.
    let out = env.observe(&["-o", "jsonpb", "--last", "1"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("jsonpb");
    assert_eq!(v["node_name"], "n1");
    assert!(v["flow"]["verdict"].is_string(), "{v}");
    let out = env.observe(&["-o", "table", "--last", "1"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("TIMESTAMP\tNODE\tSOURCE"));

    // grpc.health.v1 reports the observer service SERVING.
    let addr = format!("http://{}", env.server);
    let health = spawn_in_netns(&env.netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(addr)
                .expect("uri")
                .connect()
                .await
                .expect("connect");
            let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
            c.check(tonic_health::pb::HealthCheckRequest {
                service: "observer.Observer".into(),
            })
            .await
            .expect("check")
            .into_inner()
            .status
        })
    })
    .join()
    .expect("thread")
    .expect("netns");
    assert_eq!(
        health,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Bad filter values: exit 2, the message names the flag.
    for (args, flag) in [
        (&["--from-ip", "10.0.0.300"][..], "--from-ip"),
        (&["--verdict", "MAYBE"], "--verdict"),
        (&["--to-port", "http"], "--to-port"),
        (&["--protocol", "carrier-pigeon"], "--protocol"),
        (&["--since", "the day before"], "--since"),
        (&["--http-status", "700"], "--http-status"),
        (&["-t", "everything"], "--type"),
    ] {
        let out = env.observe(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }

    // Follow: a new denied connection shows up on a running `observe -f`.
    let mut follower = Command::new("ip")
        .args([
            "netns",
            "exec",
            &env.netns,
            BIN,
            "observe",
            "--server",
            &env.server,
        ])
        .args([
            "-f",
            "-o",
            "json",
            "--from-pod",
            "obs-demo/n1-p3",
            "--verdict",
            "DROPPED",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("follow");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!env.probe("n1-p3", "n1-p2"), "still denied");
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a followed flow within 10 s");
    let _ = follower.kill();
    let _ = follower.wait();
    let f: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(f["verdict"], "DROPPED");
    assert_eq!(pod_of(&f, "source"), "obs-demo/n1-p3");
    let start = all.last().expect("flows")["time"]
        .as_str()
        .expect("time")
        .to_string();
    assert!(
        f["time"].as_str().expect("time") > start.as_str(),
        "a new flow"
    );

    // ICMP: real pings, one allowed (p1 -> p3, which no policy selects) and one denied (p2
    // admits TCP 80 from p1 only).
    let ping = |from: &str, to: &str| {
        let netns = env.lab.state().pod(from).expect("pod").netns.clone();
        Command::new("ip")
            .args(["netns", "exec", &netns, "ping", "-n", "-c", "1", "-W", "1"])
            .arg(env.ip(to).to_string())
            .output()
            .expect("ping")
            .status
            .success()
    };
    assert!(ping("n1-p1", "n1-p3"), "p1 pings p3");
    assert!(!ping("n1-p3", "n1-p2"), "p2 does not answer p3's ping");
    std::thread::sleep(Duration::from_millis(500));
    check(&["--protocol", "icmp"], &|f| {
        f["l4"]["ICMPv4"].is_object() && f["l4"]["TCP"].is_null()
    });
    let icmp = env.flows(&["--last", "100", "--protocol", "icmp"]);
    assert!(
        icmp.iter().any(|f| f["verdict"] == "FORWARDED"
            && pod_of(f, "source") == "obs-demo/n1-p1"
            && pod_of(f, "destination") == "obs-demo/n1-p3"
            && f["l4"]["ICMPv4"]["type"] == 8),
        "the allowed echo request: {icmp:#?}"
    );
    assert!(
        icmp.iter().any(|f| f["verdict"] == "DROPPED"
            && pod_of(f, "source") == "obs-demo/n1-p3"
            && pod_of(f, "destination") == "obs-demo/n1-p2"
            && f["drop_reason_desc"] == "POLICY_DENIED"),
        "the denied echo request: {icmp:#?}"
    );
    // --identity: either side, on these real flows (p3 is the source of some, the destination
    // of others); --not inverts it.
    let with_p3 = check(&["--identity", &p3.to_string()], &|f| {
        f["source"]["identity"] == p3 || f["destination"]["identity"] == p3
    });
    let p3_flows = env.flows(&["--last", "100", "--identity", &p3.to_string()]);
    assert!(
        p3_flows.iter().any(|f| f["source"]["identity"] == p3)
            && p3_flows.iter().any(|f| f["destination"]["identity"] == p3),
        "both sides: {p3_flows:#?}"
    );
    let without_p3 = check(&["--not", "--identity", &p3.to_string()], &|f| {
        f["source"]["identity"] != p3 && f["destination"]["identity"] != p3
    });
    assert_eq!(
        with_p3 + without_p3,
        env.flows(&["--last", "100"]).len(),
        "--identity and --not --identity split the flows"
    );

    // Metrics: flows and drops counted as Hubble names them, with Hubble's protocol label
    // and drops by direction (Hubble's `traffic_direction` context label).
    let m = env.metrics();
    assert!(
        metric(
            &m,
            "hubble_flows_processed_total{protocol=\"TCP\",type=\"Drop\",subtype=\"\",verdict=\"DROPPED\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "hubble_flows_processed_total{protocol=\"ICMPv4\",type=\"Drop\",subtype=\"\",verdict=\"DROPPED\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "hubble_flows_processed_total{protocol=\"ICMPv4\",type=\"PolicyVerdict\",subtype=\"\",verdict=\"FORWARDED\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "hubble_drop_total{traffic_direction=\"ingress\",reason=\"POLICY_DENIED\",protocol=\"TCP\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "hubble_drop_total{traffic_direction=\"ingress\",reason=\"POLICY_DENIED\",protocol=\"ICMPv4\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "hubble_policy_verdicts_total{direction=\"ingress\",match=\"l3-l4\",action=\"forwarded\"}"
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "palisade_agent_flows_lost_total{source=\"ring\"}")
            + metric(&m, "palisade_agent_flows_lost_total{source=\"kernel\"}"),
        0.0,
        "nothing lost yet: {m}"
    );

    // Loss accounting: more connections than the ring holds; the overwritten ones are counted.
    for _ in 0..RING {
        env.probe("n1-p1", "n1-p2");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let held = env.flows(&["--last", "1000"]);
    assert_eq!(held.len(), RING, "the ring holds its size");
    let m = env.metrics();
    let lost = metric(&m, "palisade_agent_flows_lost_total{source=\"ring\"}");
    assert_eq!(
        metric(&m, "palisade_agent_flows_lost_total{source=\"kernel\"}"),
        0.0,
        "the reader kept up: {m}"
    );
    // Every flow read, whatever its labels.
    let seen: f64 = m
        .lines()
        .filter(|l| l.starts_with("hubble_flows_processed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        lost,
        seen - RING as f64,
        "every flow not held is counted lost: {m}"
    );
}

/// p2 lets p1 in on port 80 (a CiliumNetworkPolicy) and denies p3 by a deny rule (another);
/// p1's egress is limited to p2 by a cluster-wide policy. p3's egress is selected by none.
const DECIDING_POLICIES: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p2-ingress, namespace: obs-demo}
spec:
  endpointSelector: {matchLabels: {app: n1-p2}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: n1-p1}}]
      toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p2-deny-p3, namespace: obs-demo}
spec:
  endpointSelector: {matchLabels: {app: n1-p2}}
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: n1-p3}}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: p1-egress}
spec:
  endpointSelector: {matchLabels: {app: n1-p1}}
  egress:
    - toEndpoints: [{matchLabels: {app: n1-p2}}]
";

/// `(kind, namespace, name)` of every policy in `flow[field]`.
fn policies_in(flow: &Value, field: &str) -> Vec<(String, String, String)> {
    flow[field]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
                    (s("kind"), s("namespace"), s("name"))
                })
                .collect()
        })
        .unwrap_or_default()
}

const POLICY_FIELDS: [&str; 4] = [
    "ingress_allowed_by",
    "egress_allowed_by",
    "ingress_denied_by",
    "egress_denied_by",
];

/// Issue 7's "policy verdict with the deciding rule", on real packets: each policy-verdict and
/// drop flow names the policy whose rule decided, on the side (ingress or egress) that decided,
/// in Hubble's fields; flows no rule decided name none.
#[test]
fn observe_names_the_policy_that_decided_on_its_side() {
    let name = format!("obp{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("pal-observe-pol-{}", std::process::id()));
    let pins = PathBuf::from(format!("/sys/fs/bpf/palisade-obp-{}", std::process::id()));
    let _cleanup = Cleanup {
        lab: name.clone(),
        dir: dir.clone(),
        pins: pins.clone(),
    };
    let env = start(&name, &dir, &pins, &[("policies.yaml", DECIDING_POLICIES)]);

    assert!(env.probe("n1-p1", "n1-p2"), "p1 -> p2:80 is allowed");
    assert!(
        !env.probe("n1-p3", "n1-p2"),
        "p3 -> p2 is denied by a deny rule"
    );
    assert!(
        !env.probe_port("n1-p1", "n1-p2", 81),
        "p1 -> p2:81 passes p1's egress, then meets p2's default deny"
    );
    std::thread::sleep(Duration::from_millis(500));
    let all = env.flows(&["--last", "200"]);
    let find = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        all.iter()
            .find(|f| pred(f))
            .cloned()
            .unwrap_or_else(|| panic!("no {what} in {all:#?}"))
    };
    let port = |f: &Value| f["l4"]["TCP"]["destination_port"].as_u64().unwrap_or(0);
    let verdict = |f: &Value, v: &str, dir: &str, src: &str| {
        f["verdict"] == v
            && f["traffic_direction"] == dir
            && pod_of(f, "source") == format!("obs-demo/{src}")
            && pod_of(f, "destination") == "obs-demo/n1-p2"
            && f["event_type"]["type"] != 4
    };
    let only = |f: &Value, field: &str, want: (&str, &str, &str)| {
        assert_eq!(
            policies_in(f, field),
            vec![(want.0.to_string(), want.1.to_string(), want.2.to_string())],
            "{field}: {f}"
        );
        for other in POLICY_FIELDS.iter().filter(|o| **o != field) {
            assert!(f.get(*other).is_none(), "no {other}: {f}");
        }
    };

    // p1 -> p2:80: the cluster-wide policy allowed it out of p1, the CNP into p2.
    let out = find("p1's forwarded egress verdict to :80", &|f| {
        verdict(f, "FORWARDED", "EGRESS", "n1-p1") && port(f) == 80
    });
    only(
        &out,
        "egress_allowed_by",
        ("CiliumClusterwideNetworkPolicy", "", "p1-egress"),
    );
    assert!(
        out["egress_allowed_by"][0]["labels"]
            .as_array()
            .is_some_and(|l| !l.iter().any(|l| l
                .as_str()
                .is_some_and(|l| l.starts_with("k8s:io.cilium.k8s.policy.namespace=")))),
        "a cluster-wide policy has no namespace label: {out}"
    );
    let inn = find("p2's forwarded ingress verdict from p1", &|f| {
        verdict(f, "FORWARDED", "INGRESS", "n1-p1") && port(f) == 80
    });
    only(
        &inn,
        "ingress_allowed_by",
        ("CiliumNetworkPolicy", NS, "p2-ingress"),
    );
    assert!(
        inn["ingress_allowed_by"][0]["labels"]
            .as_array()
            .is_some_and(|l| l
                .iter()
                .any(|l| l == "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy")),
        "{inn}"
    );

    // p3 -> p2: its own egress is selected by no policy (default allow: none), p2's deny rule
    // dropped it.
    let p3_out = find("p3's forwarded egress verdict", &|f| {
        verdict(f, "FORWARDED", "EGRESS", "n1-p3")
    });
    for k in POLICY_FIELDS {
        assert!(
            p3_out.get(k).is_none(),
            "default allow names no {k}: {p3_out}"
        );
    }
    let denied = find("p3's drop at p2", &|f| {
        verdict(f, "DROPPED", "INGRESS", "n1-p3")
    });
    assert_eq!(denied["drop_reason_desc"], "POLICY_DENY", "{denied}");
    only(
        &denied,
        "ingress_denied_by",
        ("CiliumNetworkPolicy", NS, "p2-deny-p3"),
    );

    // p1 -> p2:81: allowed out by the cluster-wide policy, dropped by p2's default deny, which
    // names no policy.
    let out81 = find("p1's forwarded egress verdict to :81", &|f| {
        verdict(f, "FORWARDED", "EGRESS", "n1-p1") && port(f) == 81
    });
    only(
        &out81,
        "egress_allowed_by",
        ("CiliumClusterwideNetworkPolicy", "", "p1-egress"),
    );
    let default_deny = find("the default-deny drop at p2", &|f| {
        verdict(f, "DROPPED", "INGRESS", "n1-p1") && port(f) == 81
    });
    assert_eq!(default_deny["drop_reason_desc"], "POLICY_DENIED");
    for k in POLICY_FIELDS {
        assert!(
            default_deny.get(k).is_none(),
            "default deny names no {k}: {default_deny}"
        );
    }

    // jsonpb carries them too; compact prints none of them, as Hubble's does.
    let out = env.observe(&["-o", "jsonpb", "--last", "200", "--verdict", "DROPPED"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                policies_in(&v["flow"], "ingress_denied_by")
                    .iter()
                    .any(|p| p.2 == "p2-deny-p3")
            })
        }),
        "{text}"
    );
    let out = env.observe(&["--last", "200"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.is_empty());
    assert!(
        !text.contains("p2-deny-p3") && !text.contains("p1-egress"),
        "{text}"
    );
}
