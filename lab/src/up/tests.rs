//! The exact command sequence of `build_network`, through a fake runner (no root needed).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output};
use std::sync::Mutex;

use super::build_network;
use crate::exec::{Cmds, Runner};
use crate::{LabError, LabSpec, plan};

const MAC: &str = "02:00:00:00:00:01";

/// Records every command (with its stdin lines as `  | ...`); fails the first command whose
/// text contains `fail_on`.
struct Fake {
    log: Mutex<Vec<String>>,
    fail_on: Option<&'static str>,
}

impl Fake {
    fn new(fail_on: Option<&'static str>) -> Self {
        Fake {
            log: Mutex::new(Vec::new()),
            fail_on,
        }
    }

    fn commands(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Runner for Fake {
    fn output(&self, cmd: &mut Command, stdin: Option<&str>) -> Result<Output, LabError> {
        let mut line = cmd.get_program().to_string_lossy().into_owned();
        for a in cmd.get_args() {
            line.push(' ');
            line.push_str(&a.to_string_lossy());
        }
        for l in stdin.unwrap_or("").lines() {
            line.push_str("\n  | ");
            line.push_str(l);
        }
        let fail = self.fail_on.is_some_and(|f| line.contains(f));
        let stdout = if line.contains("-j link show") {
            format!(r#"[{{"ifname":"lxc1","address":"{MAC}"}}]"#).into_bytes()
        } else {
            Vec::new()
        };
        self.log.lock().unwrap().push(line);
        Ok(Output {
            status: ExitStatus::from_raw(if fail { 1 << 8 } else { 0 }),
            stdout,
            stderr: if fail { b"boom".to_vec() } else { Vec::new() },
        })
    }
}

fn state(nodes: usize, pods: usize) -> crate::LabState {
    plan::plan(&LabSpec::new("t", nodes, pods, "/bin/true")).unwrap()
}

#[test]
fn nothing_is_created_in_the_root_namespace() {
    let fake = Fake::new(None);
    build_network(Cmds(&fake), &state(2, 2)).unwrap();
    let cmds = fake.commands();
    assert!(!cmds.is_empty());
    for c in &cmds {
        assert!(c.starts_with("ip "), "{c}");
        if c.starts_with("ip link add") {
            // Both ends of every veth are created straight inside a lab namespace.
            assert_eq!(c.matches(" netns pal-t-").count(), 2, "{c}");
        } else {
            let scoped = c.starts_with("ip -n pal-t-")
                || c.starts_with("ip netns add pal-t-")
                || c.starts_with("ip netns exec pal-t-");
            assert!(scoped, "command outside the lab namespaces: {c}");
        }
    }
    // 1 fabric + 2 nodes + 4 pods.
    assert_eq!(
        cmds.iter()
            .filter(|c| c.starts_with("ip netns add"))
            .count(),
        7
    );
}

#[test]
fn address_plan_routes_and_sysctls() {
    let fake = Fake::new(None);
    build_network(Cmds(&fake), &state(2, 1)).unwrap();
    let cmds = fake.commands();
    let all = cmds.join("\n");
    let pos = |needle: &str| {
        cmds.iter()
            .position(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("`{needle}` not in:\n{all}"))
    };
    for needle in [
        "ip -n pal-t-fabric -batch -\n  | link set lo up\n  | link add br0 type bridge\n  | link set br0 up",
        "ip link add eth0 netns pal-t-n1 type veth peer name n1 netns pal-t-fabric",
        "  | link set n2 master br0\n  | link set n2 up",
        "  | addr add 10.98.0.12/24 dev eth0",
        "  | route add 10.200.2.0/24 via 10.98.0.12 dev eth0",
        "  | route add 10.200.1.0/24 via 10.98.0.11 dev eth0",
        "ip link add eth0 netns pal-t-n2-p1 type veth peer name lxc1 netns pal-t-n2",
        "  | addr add 10.200.2.11/32 dev eth0",
        "  | route add 169.254.1.1 dev eth0 scope link\n  | route add default via 169.254.1.1 dev eth0",
        "  | neigh replace 169.254.1.1 lladdr 02:00:00:00:00:01 dev eth0 nud permanent",
        "ip -n pal-t-n1 -batch -\n  | link set lxc1 up\n  | route add 10.200.1.11/32 dev lxc1",
    ] {
        pos(needle);
    }
    // Node sysctls (forwarding on, rp_filter off, IPv6 off) come before any interface exists
    // in the node, so `default.*` applies to every interface created later.
    let sysctl_n1 = pos(
        "ip netns exec pal-t-n1 sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
                         net.ipv4.conf.default.rp_filter=0 net.ipv6.conf.all.disable_ipv6=1",
    );
    assert!(sysctl_n1 < pos("ip link add eth0 netns pal-t-n1 "));
    let sysctl_pod = pos("ip netns exec pal-t-n1-p1 sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
    assert!(sysctl_pod < pos("ip link add eth0 netns pal-t-n1-p1 "));
    // The MAC is read from the host-side veth before the pod's neighbour entry is written.
    assert!(pos("ip -n pal-t-n1 -j link show dev lxc1") < pos("lladdr 02:00:00:00:00:01"));
}

#[test]
fn the_first_failing_command_stops_the_build_and_is_named() {
    let fake = Fake::new(Some("netns add pal-t-n2-p1"));
    let err = build_network(Cmds(&fake), &state(2, 2)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("`ip netns add pal-t-n2-p1` failed") && msg.ends_with("boom"),
        "{msg}"
    );
    let cmds = fake.commands();
    assert!(
        cmds.last().unwrap().contains("netns add pal-t-n2-p1"),
        "commands went on after the failure"
    );
}
