//! DNS and `toFQDNs`: a real DNS server (dnsmasq) in pod n2-p1 (another node, across the
//! WireGuard tunnel, as kube-dns usually is) serves a test zone, real servers (lab externals)
//! sit behind its names, and n1-p1's egress policy allows DNS to n2-p1 with
//! `rules.dns` and TCP 80 only to `toFQDNs` names. The agent's DNS proxy intercepts n1-p1's
//! queries (UDP and TCP; the pod changes nothing): names no DNS rule allows are REFUSED, the
//! addresses of allowed answers are programmed before the answer is released so the first
//! connection passes, `*.example.test` matches exactly one label, addresses never resolved are
//! dropped, a name moving to another address after its TTL is followed (the old address
//! dropped after the grace period), malformed packets break nothing, and every query is a
//! Hubble `l7.dns` flow.

use std::net::IpAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use palisade_lab::Lab;
use palisade_lab::dns::{DnsRecord, Dnsmasq};
use palisade_lab::state::{agent_socket, state_dir};

use crate::util::{Cleanup, apply_policy, down_and_assert_gone, lab_name, ok};

/// The DNS server pod's address (n2-p1).
pub(crate) const DNS: &str = "10.200.2.11";
/// TTL dnsmasq answers with (s); the agent's default grace period is 5 s.
const TTL: u32 = 2;

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn-egress}
spec:
  endpointSelector: {matchLabels: {app: n1-p1}}
  egress:
  - toEndpoints: [{matchLabels: {app: n2-p1}}]
    toPorts:
    - ports: [{port: '53', protocol: UDP}, {port: '53', protocol: TCP}]
      rules:
        dns:
        - matchPattern: '*.example.test'
        - matchName: a.b.example.test
        - matchName: api.corp.test
  - toFQDNs: [{matchName: api.corp.test}, {matchPattern: '*.example.test'}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

pub(crate) fn in_pod(lab: &str, pod: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &format!("pal-{lab}-{pod}")])
        .arg(crate::util::bin())
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// `palisade workload resolve` from n1-p1: (rcode, addresses).
pub(crate) fn resolve(lab: &str, name: &str, tcp: bool) -> (String, Vec<IpAddr>) {
    let mut args = vec!["workload", "resolve", name, "--server", DNS];
    if tcp {
        args.push("--tcp");
    }
    let out = in_pod(lab, "n1-p1", &args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("resolve {name}: {e}: {out:?}"));
    let ips = v["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|i| i.as_str().expect("ip").parse().expect("ip"))
        .collect();
    (v["rcode"].as_str().expect("rcode").to_string(), ips)
}

/// A TCP probe from n1-p1 to port 80 (the externals' workload servers).
pub(crate) fn reachable(lab: &str, ip: &str) -> bool {
    let out = in_pod(
        lab,
        "n1-p1",
        &[
            "workload",
            "probe",
            "--to",
            ip,
            "--port",
            "80",
            "--protocol",
            "tcp",
            "--timeout",
            "1s",
        ],
    );
    out.status.code() == Some(0)
}

pub(crate) fn dns_status(lab: &str) -> serde_json::Value {
    let socket = agent_socket(lab, "n1");
    let out = ok(&[
        "agent",
        "status",
        "--socket",
        socket.to_str().expect("utf8"),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["dnsProxy"].clone()
}

fn records(api: &str) -> Vec<DnsRecord> {
    [
        ("api.corp.test", api),
        ("web.example.test", "10.96.0.12"),
        ("a.b.example.test", "10.96.0.13"),
        ("blocked.test", "10.96.0.14"),
    ]
    .iter()
    .map(|(n, ip)| DnsRecord::new(n, ip.parse().expect("ip")))
    .collect()
}

#[test]
fn dns_rules_and_to_fqdns_are_enforced_through_the_agents_dns_proxy() {
    let lab = lab_name("dnsfqdn");
    let _ = Lab::down(&lab);
    let _cleanup = Cleanup(lab.clone());
    let mut args = vec![
        "lab",
        "up",
        "--name",
        &lab,
        "--nodes",
        "2",
        "--pods-per-node",
        "2",
        "--control-plane-voters",
        "1",
    ];
    for x in [
        "web1=10.96.0.11",
        "web2=10.96.0.12",
        "web3=10.96.0.13",
        "web4=10.96.0.14",
        "web5=10.96.0.15",
    ] {
        args.extend(["--external", x]);
    }
    ok(&args);
    let dnsmasq = Dnsmasq::start(
        &format!("pal-{lab}-n2-p1"),
        &state_dir(&lab).join("dns"),
        &records("10.96.0.11"),
        TTL,
    )
    .expect("dnsmasq");

    // No policy: the server answers directly, every address is reachable.
    assert_eq!(
        resolve(&lab, "blocked.test", false),
        ("NOERROR".into(), vec!["10.96.0.14".parse().unwrap()])
    );
    assert!(reachable(&lab, "10.96.0.14"));

    apply_policy(&lab, POLICY);
    ok(&["policy", "wait", "--lab", &lab, "--timeout", "20s"]);
    // The redirect is in place once the agent's table holds it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns_status(&lab)["redirects"]
        .as_array()
        .is_none_or(|r| r.is_empty())
    {
        assert!(Instant::now() < deadline, "{}", dns_status(&lab));
        std::thread::sleep(Duration::from_millis(100));
    }

    // Never resolved: world, which toFQDNs does not allow.
    assert!(!reachable(&lab, "10.96.0.11"), "never resolved: dropped");

    // matchName: the very first connection after the answer passes.
    let (rcode, ips) = resolve(&lab, "api.corp.test", false);
    assert_eq!((rcode.as_str(), ips.len()), ("NOERROR", 1), "{ips:?}");
    assert_eq!(ips[0].to_string(), "10.96.0.11");
    assert!(
        reachable(&lab, "10.96.0.11"),
        "first connection after the answer"
    );

    // matchPattern `*.example.test`, over TCP this time: one label matches…
    let (rcode, ips) = resolve(&lab, "web.example.test", true);
    assert_eq!(rcode, "NOERROR");
    assert_eq!(ips, vec!["10.96.0.12".parse::<IpAddr>().unwrap()]);
    assert!(reachable(&lab, "10.96.0.12"));
    // …two do not: the DNS rule lets the name resolve, toFQDNs does not allow its address.
    let (rcode, ips) = resolve(&lab, "a.b.example.test", false);
    assert_eq!(rcode, "NOERROR");
    assert_eq!(ips, vec!["10.96.0.13".parse::<IpAddr>().unwrap()]);
    assert!(
        !reachable(&lab, "10.96.0.13"),
        "`*` matches exactly one label"
    );

    // A name no DNS rule allows: REFUSED by the proxy (dnsmasq would answer it), UDP and TCP;
    // its address was never learned and stays dropped.
    assert_eq!(
        resolve(&lab, "blocked.test", false),
        ("REFUSED".into(), vec![])
    );
    assert_eq!(
        resolve(&lab, "blocked.test", true),
        ("REFUSED".into(), vec![])
    );
    assert!(!reachable(&lab, "10.96.0.14"));

    // n1's /metrics counts those five queries as Hubble's DNS metrics do: three answered with
    // one address each, two refused by policy (L7 drops, egress). (A UDP query the client
    // resent after a second without an answer counts again: at least, and consistently.)
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("pal-{lab}-n1"),
            "curl",
            "-s",
            "-m",
            "3",
        ])
        .arg("http://10.98.0.11:9962/metrics")
        .output()
        .expect("curl metrics");
    let metrics = String::from_utf8_lossy(&out.stdout);
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
    };
    let asked = value("hubble_dns_queries_total{rcode=\"\",qtypes=\"A\",ips_returned=\"0\"}");
    let refused =
        value("hubble_dns_queries_total{rcode=\"Policy denied\",qtypes=\"A\",ips_returned=\"0\"}");
    assert!(asked >= 3.0 && refused >= 2.0, "{metrics}");
    for (series, want) in [
        (
            "hubble_dns_responses_total{rcode=\"No Error\",qtypes=\"A\",ips_returned=\"1\"}",
            asked,
        ),
        (
            "hubble_flows_processed_total{protocol=\"DNS\",type=\"L7\",subtype=\"DNS\",verdict=\"FORWARDED\"}",
            asked,
        ),
        (
            "hubble_flows_processed_total{protocol=\"DNS\",type=\"L7\",subtype=\"DNS\",verdict=\"DROPPED\"}",
            refused,
        ),
        (
            "hubble_drop_total{traffic_direction=\"egress\",reason=\"DROP_REASON_UNKNOWN\",protocol=\"DNS\"}",
            refused,
        ),
    ] {
        assert_eq!(value(series), want, "{series} in:\n{metrics}");
    }

    // Malformed DNS from the pod: answered FORMERR or ignored; the proxy keeps serving.
    let before = dns_status(&lab)["queriesTotal"].as_u64().expect("total");
    for junk in [
        "\\x00",
        "\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07truncat",
        "\\x12\\x34\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00",
        "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff",
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("pal-{lab}-n1-p1"), "bash", "-c"])
            .arg(format!(
                "exec 3<>/dev/udp/{DNS}/53; printf '{junk}' >&3; timeout 1 head -c 12 <&3 | od -An -tx1"
            ))
            .output()
            .expect("junk");
        let answer = String::from_utf8_lossy(&out.stdout).replace([' ', '\n'], "");
        assert!(
            answer.is_empty() || (answer.len() == 24 && answer.ends_with("0000000000000000")),
            "{junk}: {answer}"
        );
        // TCP: a length prefix and then nothing usable.
        let _ = Command::new("ip")
            .args(["netns", "exec", &format!("pal-{lab}-n1-p1"), "bash", "-c"])
            .arg(format!(
                "exec 3<>/dev/tcp/{DNS}/53; printf '\\x00\\x05{junk}' >&3; timeout 1 cat <&3 >/dev/null"
            ))
            .output()
            .expect("junk tcp");
        assert_eq!(resolve(&lab, "api.corp.test", false).0, "NOERROR");
    }
    assert!(dns_status(&lab)["queriesTotal"].as_u64().expect("total") > before + 4);

    // The name moves: after the TTL the new answer is followed, the old address is dropped
    // once TTL and grace (5 s) are over, while the new one is allowed at once.
    dnsmasq
        .set_records(&records("10.96.0.15"))
        .expect("new records");
    std::thread::sleep(Duration::from_secs(u64::from(TTL) + 1));
    let (rcode, ips) = resolve(&lab, "api.corp.test", false);
    assert_eq!(rcode, "NOERROR");
    assert_eq!(ips, vec!["10.96.0.15".parse::<IpAddr>().unwrap()]);
    assert!(reachable(&lab, "10.96.0.15"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while reachable(&lab, "10.96.0.11") {
        assert!(
            Instant::now() < deadline,
            "old address still allowed: {}",
            dns_status(&lab)["names"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let names = dns_status(&lab)["names"].clone();
    assert!(
        names["api.corp.test"].get("10.96.0.11").is_none(),
        "{names}"
    );
    assert!(
        names["api.corp.test"].get("10.96.0.15").is_some(),
        "{names}"
    );

    // Every query is an l7.dns flow; refused ones are DROPPED with rcode 5.
    let out = ok(&[
        "observe",
        "--lab",
        &lab,
        "--protocol",
        "dns",
        "--last",
        "200",
        "-o",
        "json",
    ]);
    let flows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let refused: Vec<&serde_json::Value> = flows
        .iter()
        .filter(|f| f["l7"]["dns"]["query"] == "blocked.test.")
        .collect();
    assert_eq!(refused.len(), 2, "{out}");
    for f in refused {
        assert_eq!(f["verdict"], "DROPPED", "{f}");
        assert_eq!(f["l7"]["dns"]["rcode"], 5, "{f}");
        assert_eq!(f["Type"], "L7", "{f}");
    }
    assert!(
        flows
            .iter()
            .any(|f| f["l7"]["dns"]["query"] == "api.corp.test."
                && f["verdict"] == "FORWARDED"
                && f["l7"]["dns"]["ips"][0] == "10.96.0.15"),
        "{out}"
    );
    let compact = ok(&["observe", "--lab", &lab, "-t", "l7", "--last", "200"]);
    assert!(compact.contains("web.example.test"), "{compact}");

    // Deleting the policy removes the interception: blocked.test resolves again.
    ok(&[
        "policy",
        "delete",
        "--lab",
        &lab,
        "CiliumNetworkPolicy/default/fqdn-egress",
    ]);
    ok(&["policy", "wait", "--lab", &lab, "--timeout", "20s"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while resolve(&lab, "blocked.test", false).0 != "NOERROR" {
        assert!(Instant::now() < deadline, "{}", dns_status(&lab));
        std::thread::sleep(Duration::from_millis(200));
    }

    drop(dnsmasq);
    let processes = Lab::load(&lab).expect("state").state().processes.clone();
    down_and_assert_gone(&lab, &processes);
}
