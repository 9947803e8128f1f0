use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};

/// Serves in the root namespace on free loopback-reachable ports, probes over loopback only.
#[test]
fn probe_exit_codes_and_json() {
    let tcp = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let udp = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "workload",
            "serve",
            "--tcp",
            &tcp.to_string(),
            "--udp",
            &udp.to_string(),
            "--name",
            "cli-test",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The start line is printed once every socket is bound.
    let mut line = String::new();
    BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("palisade-workload cli-test: serving"),
        "{line}"
    );

    let probe = |port: u16, proto: &str| {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args([
                "workload",
                "probe",
                "--to",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--protocol",
                proto,
            ])
            .args(["--timeout", "500ms"])
            .output()
            .unwrap()
    };
    for (port, proto) in [(tcp, "tcp"), (udp, "udp")] {
        let out = probe(port, proto);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["reachable"], true);
        assert_eq!(v["result"], "ok");
        assert_eq!(v["protocol"], proto);
        assert_eq!(
            v["detail"],
            format!("palisade-workload cli-test {proto} {port}")
        );
        assert!(v["rtt_us"].is_u64());
    }
    server.kill().unwrap();
    server.wait().unwrap();

    // Nothing listens any more: refused, exit 1, JSON still printed.
    let out = probe(tcp, "tcp");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reachable"], false);
    assert_eq!(v["result"], "refused");
    assert!(v["rtt_us"].is_null());
}
