//! `toFQDNs` across an agent restart, and expiry that respects open connections. A real DNS
//! server (dnsmasq) in n2-p1, real servers behind its names (lab externals, plus a long-lived
//! TCP echo server of this test in two of them), n1-p1 allowed TCP 80 and 7000 only to
//! `toFQDNs` names:
//!
//! 1. the agent of n1 is SIGKILLed and started again: an address resolved before stays allowed
//!    the whole time (while the agent is down, while it starts, after) with no new query, an
//!    established TCP connection carries on, and an address whose TTL ran out while the agent
//!    was down is dropped (the saved state is read back, expired entries are not trusted);
//! 2. with a 2 s TTL, an address to which a pod opened a connection before the TTL ran out
//!    stays allowed past TTL and grace while that connection carries packets (the datapath's
//!    conntrack says so); once it goes quiet the address leaves after `--dns-connection-idle`
//!    and the grace: a new connection is dropped, while the quiet connection itself still
//!    works;
//! 3. a saved state with one wrong field is refused whole (reported in `agent status`, moved
//!    aside): nothing it names is allowed until the pod resolves again.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_lab::cluster::agent_args;
use palisade_lab::dns::{DnsRecord, Dnsmasq};
use palisade_lab::exec::spawn_in_netns;
use palisade_lab::procs::is_alive;
use palisade_lab::state::{agent_dir, agent_socket, state_dir};
use palisade_lab::{Lab, ProcessRole};

use crate::t61_dns_fqdn::{dns_status, reachable, resolve};
use crate::util::{Cleanup, apply_policy, down_and_assert_gone, lab_name, ok};

/// TTL of the first part (s): long enough for one name to outlive the restart, short enough
/// for the other to run out while the agent is down.
const LONG_TTL: u32 = 20;
/// TTL of the second part (s).
const SHORT_TTL: u32 = 2;
/// The agent's default grace (s).
const GRACE: u64 = 5;
/// `--dns-connection-idle` of the restarted agent (s).
const IDLE: u64 = 3;
/// The port of this test's long-lived echo servers.
const ECHO_PORT: u16 = 7000;

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn-restart}
spec:
  endpointSelector: {matchLabels: {app: n1-p1}}
  egress:
  - toEndpoints: [{matchLabels: {app: n2-p1}}]
    toPorts:
    - ports: [{port: '53', protocol: UDP}, {port: '53', protocol: TCP}]
      rules:
        dns:
        - matchPattern: '*.example.test'
        - matchName: api.corp.test
  - toFQDNs: [{matchName: api.corp.test}, {matchPattern: '*.example.test'}]
    toPorts: [{ports: [{port: '80', protocol: TCP}, {port: '7000', protocol: TCP}]}]
";

fn records() -> Vec<DnsRecord> {
    [
        ("api.corp.test", "10.96.0.11"),
        ("web.example.test", "10.96.0.12"),
        ("db.example.test", "10.96.0.13"),
    ]
    .iter()
    .map(|(n, ip)| DnsRecord::new(n, ip.parse().expect("ip")))
    .collect()
}

/// A TCP server in `netns` on `ip:ECHO_PORT` echoing lines of one connection at a time, for as
/// long as the test runs (its thread dies with the test process).
fn echo_server(netns: &str, ip: &str) {
    let addr: SocketAddr = format!("{ip}:{ECHO_PORT}").parse().expect("addr");
    let bound = spawn_in_netns(netns, move || {
        let l = TcpListener::bind(addr)?;
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut w = s.try_clone().expect("clone");
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if writeln!(w, "{line}").is_err() {
                        break;
                    }
                }
            }
        });
        Ok::<_, std::io::Error>(())
    })
    .join()
    .expect("thread");
    bound.expect("netns").expect("bind the echo server");
}

/// A TCP connection from pod n1-p1 (the socket lives in the pod's namespace; this thread only
/// uses it).
fn connect_from_pod(lab: &str, ip: &str) -> (TcpStream, BufReader<TcpStream>) {
    let addr: SocketAddr = format!("{ip}:{ECHO_PORT}").parse().expect("addr");
    let s = spawn_in_netns(&format!("pal-{lab}-n1-p1"), move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })
    .join()
    .expect("thread")
    .expect("netns")
    .unwrap_or_else(|e| panic!("connect to {addr} from n1-p1: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let r = BufReader::new(s.try_clone().expect("clone"));
    (s, r)
}

/// One line there and back on an established connection.
fn echo(c: &mut (TcpStream, BufReader<TcpStream>), line: &str) -> bool {
    if writeln!(c.0, "{line}").is_err() {
        return false;
    }
    let mut got = String::new();
    c.1.read_line(&mut got).is_ok() && got.trim_end() == line
}

/// `agent status` of n1's DNS proxy, `None` while the agent does not answer.
fn try_dns_status(lab: &str) -> Option<serde_json::Value> {
    let socket = agent_socket(lab, "n1");
    let out = Command::new(crate::util::bin())
        .args(["agent", "status", "--socket"])
        .arg(&socket)
        .args(["-o", "json"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["dnsProxy"].clone())
}

/// The last lines of n1's agent log (all its runs), for failure messages.
fn agent_log_tail(lab: &str) -> String {
    let log = palisade_lab::state::log_dir(lab).join("agent-n1.log");
    let text =
        std::fs::read_to_string(&log).unwrap_or_else(|e| format!("({}: {e})", log.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// SIGKILLs n1's agent and waits until it is gone: every thread, so its listening sockets are
/// closed before the next agent binds them (`is_alive`, issue 8).
fn kill_agent(lab: &str) {
    let l = Lab::load(lab).expect("state");
    let old = l
        .state()
        .processes
        .iter()
        .rev()
        .find(|p| p.name == "agent-n1")
        .cloned()
        .expect("agent-n1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(old.pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(old.pid, old.start_time) {
        assert!(Instant::now() < deadline, "agent-n1 survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts n1's agent again with its own arguments and `extra`.
fn start_agent(lab: &str, extra: &[&str]) {
    let mut l = Lab::load(lab).expect("state");
    let st = l.state().clone();
    let c = st.cluster.as_ref().expect("cluster lab");
    let mut args = agent_args(&st, c, 0);
    args.extend(extra.iter().map(|s| s.to_string()));
    let bin = st.palisade_bin.clone();
    l.spawn(ProcessRole::NodeAgent, "agent-n1", None, &bin, &args)
        .expect("start agent-n1");
}

fn held_ips(status: &serde_json::Value) -> Vec<String> {
    status["heldByConnections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["ip"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn learned_addresses_survive_an_agent_restart_and_open_connections_hold_expired_ones() {
    let lab = lab_name("dnsrestart");
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
    for x in ["web1=10.96.0.11", "web2=10.96.0.12", "web3=10.96.0.13"] {
        args.extend(["--external", x]);
    }
    ok(&args);
    let externals = Lab::load(&lab).expect("state").state().externals.clone();
    for x in &externals {
        if x.name != "web1" {
            echo_server(&x.netns, &x.ip.to_string());
        }
    }
    let dns_dir = state_dir(&lab).join("dns");
    let dnsmasq = Dnsmasq::start(&format!("pal-{lab}-n2-p1"), &dns_dir, &records(), LONG_TTL)
        .expect("dnsmasq");
    apply_policy(&lab, POLICY);
    ok(&["policy", "wait", "--lab", &lab, "--timeout", "20s"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns_status(&lab)["redirects"]
        .as_array()
        .is_none_or(|r| r.is_empty())
    {
        assert!(Instant::now() < deadline, "{}", dns_status(&lab));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!reachable(&lab, "10.96.0.12"), "never resolved: dropped");

    // === 1. restart ===
    // api.corp.test first: its TTL runs out while the agent is down.
    let t0 = Instant::now();
    let (rcode, ips) = resolve(&lab, "api.corp.test", false);
    assert_eq!((rcode.as_str(), ips.len()), ("NOERROR", 1), "{ips:?}");
    assert!(reachable(&lab, "10.96.0.11"));
    std::thread::sleep(Duration::from_secs(12));
    // web.example.test 12 s later: 20 s left at the kill, still valid after the restart.
    let (rcode, ips) = resolve(&lab, "web.example.test", false);
    assert_eq!(rcode, "NOERROR");
    assert_eq!(ips, vec!["10.96.0.12".parse::<IpAddr>().unwrap()]);
    assert!(reachable(&lab, "10.96.0.12"));
    let mut conn = connect_from_pod(&lab, "10.96.0.12");
    assert!(echo(&mut conn, "before the restart"));
    // The saved state: private, and naming both.
    let saved = agent_dir(&lab, "n1").join("state").join("fqdn-cache.json");
    let mode = std::fs::metadata(&saved)
        .expect("saved DNS cache")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", saved.display());
    let text = std::fs::read_to_string(&saved).expect("read");
    assert!(
        text.contains("web.example.test") && text.contains("api.corp.test"),
        "{text}"
    );

    kill_agent(&lab);
    // While the agent is down the pinned datapath keeps enforcing what it held.
    assert!(reachable(&lab, "10.96.0.12"), "agent down: still allowed");
    let until = t0 + Duration::from_secs(u64::from(LONG_TTL) + 2);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    start_agent(&lab, &["--dns-connection-idle", &format!("{IDLE}s")]);
    // From the start to the first status answer (the restart done), and with no query: the
    // address never stops being allowed, and the established connection carries on.
    let started = Instant::now();
    let mut probes = 0;
    let status = loop {
        assert!(
            reachable(&lab, "10.96.0.12"),
            "web.example.test dropped {:?} into the restart",
            started.elapsed()
        );
        probes += 1;
        if let Some(s) = try_dns_status(&lab) {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "agent not back"
        );
    };
    assert!(probes >= 1);
    assert!(
        echo(&mut conn, "after the restart"),
        "established connection"
    );
    assert!(reachable(&lab, "10.96.0.12"));
    assert_eq!(
        status["state"]["restored"]["entries"], 1,
        "only web.example.test is restored: {status}"
    );
    assert_eq!(
        status["state"]["restored"]["expiredWhileDown"], 1,
        "{status}"
    );
    assert!(status["state"]["restoreError"].is_null(), "{status}");
    assert!(
        status["names"]["web.example.test"]["10.96.0.12"].is_u64(),
        "{status}"
    );
    // Expired while the agent was down: not trusted, so not allowed.
    assert!(status["names"].get("api.corp.test").is_none(), "{status}");
    assert!(
        !reachable(&lab, "10.96.0.11"),
        "address past its TTL while the agent was down"
    );
    // No query was needed: the proxy saw none since the restart.
    assert_eq!(status["queriesTotal"], 0, "{status}");

    // === 2. open connections hold expired addresses ===
    drop(dnsmasq);
    let dnsmasq = Dnsmasq::start(&format!("pal-{lab}-n2-p1"), &dns_dir, &records(), SHORT_TTL)
        .expect("dnsmasq");
    let t2 = Instant::now();
    let (rcode, ips) = resolve(&lab, "db.example.test", false);
    assert_eq!(rcode, "NOERROR");
    assert_eq!(ips, vec!["10.96.0.13".parse::<IpAddr>().unwrap()]);
    let mut db = connect_from_pod(&lab, "10.96.0.13");
    // Packets every 500 ms until well past TTL and grace.
    let busy = Duration::from_secs(u64::from(SHORT_TTL) + GRACE + 3);
    let mut n = 0;
    while t2.elapsed() < busy {
        assert!(echo(&mut db, &format!("ping {n}")), "long connection");
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    // The conntrack read runs on its own thread (at most one a second): while one is in flight
    // the expired address is kept, and the holders show once its result is applied. Keep the
    // connection busy meanwhile.
    let wait = Instant::now();
    loop {
        let status = dns_status(&lab);
        assert!(
            status["names"]["db.example.test"]["10.96.0.13"].is_u64(),
            "held by the open connection {:?} after the answer: {status}",
            t2.elapsed()
        );
        if held_ips(&status).contains(&"10.96.0.13".to_string()) {
            break;
        }
        assert!(
            wait.elapsed() < Duration::from_secs(10),
            "the open connection is not listed as holding 10.96.0.13: {status}"
        );
        assert!(echo(&mut db, &format!("ping {n}")), "long connection");
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        reachable(&lab, "10.96.0.13"),
        "held: new connections to it pass too (Cilium's behaviour)"
    );
    // Quiet from now on: the address leaves after the idle window and the grace.
    let quiet = Instant::now();
    let deadline = quiet + Duration::from_secs(IDLE + GRACE + 10);
    loop {
        let s = dns_status(&lab);
        if s["names"].get("db.example.test").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "still held: {s}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        quiet.elapsed() >= Duration::from_secs(IDLE + GRACE - 2),
        "left {:?} after the last packet: too early",
        quiet.elapsed()
    );
    assert!(
        !reachable(&lab, "10.96.0.13"),
        "a new connection after expiry and grace"
    );
    assert!(
        echo(&mut db, "still here"),
        "the open connection itself keeps working"
    );

    // === 3. a corrupt saved state is reported and ignored whole ===
    let (rcode, _) = resolve(&lab, "web.example.test", false);
    assert_eq!(rcode, "NOERROR");
    assert!(reachable(&lab, "10.96.0.12"));
    kill_agent(&lab);
    let text = std::fs::read_to_string(&saved).expect("read");
    assert!(text.contains("web.example.test"), "{text}");
    // Still JSON, one field wrong: the whole file is refused, not the one entry.
    std::fs::write(
        &saved,
        text.replacen("web.example.test", "WEB.example.test", 1),
    )
    .expect("corrupt");
    start_agent(&lab, &[]);
    // Generous: under `make test` other lab tests load the two cores too.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = try_dns_status(&lab) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "agent not back after 60 s; its log ends with:\n{}",
            agent_log_tail(&lab)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = status["state"]["restoreError"].as_str().unwrap_or_default();
    assert!(
        err.contains("fqdn-cache.json") && err.contains("name") && err.contains("corrupt"),
        "{status}"
    );
    assert!(status["state"]["restored"].is_null(), "{status}");
    assert_eq!(status["names"], serde_json::json!({}), "{status}");
    assert!(
        saved.with_extension("json.corrupt").exists(),
        "kept aside for a look"
    );
    assert!(
        !reachable(&lab, "10.96.0.12"),
        "nothing trusted: fail closed"
    );
    // The agent works on: the pod resolves again and is allowed again.
    let (rcode, _) = resolve(&lab, "web.example.test", false);
    assert_eq!(rcode, "NOERROR");
    assert!(reachable(&lab, "10.96.0.12"));

    drop(conn);
    drop(db);
    drop(dnsmasq);
    let processes = Lab::load(&lab).expect("state").state().processes.clone();
    down_and_assert_gone(&lab, &processes);
}
