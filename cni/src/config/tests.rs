use serde_json::json;

use super::*;

fn parse(v: Value) -> Result<NetConf, CniError> {
    NetConf::parse(v.to_string().as_bytes())
}

fn base() -> Value {
    json!({"cniVersion": "1.0.0", "name": "palisade", "type": "palisade-cni"})
}

fn with(key: &str, v: Value) -> Value {
    let mut b = base();
    b[key] = v;
    b
}

fn err(v: Value) -> (u32, String) {
    let e = parse(v).unwrap_err();
    (e.code(), e.to_string())
}

#[test]
fn the_documented_config_parses() {
    let c = parse(json!({
        "cniVersion": "1.0.0", "name": "palisade", "type": "palisade-cni",
        "agentSocket": "/run/palisade/agent.sock", "mtu": 1400,
        "args": {"cni": {"labels": [{"key": "app", "value": "api"}],
                          "ips": ["10.200.1.20"], "serviceAccount": "api-sa",
                          "portMappings": []}}
    }))
    .unwrap();
    assert_eq!(c.cni_version, CniVersion::V1_0_0);
    assert_eq!(c.mtu, 1400);
    assert_eq!(
        c.labels,
        Some(BTreeMap::from([("app".to_string(), "api".to_string())]))
    );
    assert_eq!(c.ips, vec!["10.200.1.20".parse::<IpAddr>().unwrap()]);
    assert_eq!(c.service_account.as_deref(), Some("api-sa"));
    let d = parse(base()).unwrap();
    assert_eq!(d.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
    assert_eq!(d.mtu, DEFAULT_MTU);
    assert!(d.labels.is_none() && d.ips.is_empty() && d.prev_result.is_none());
    // An empty list is labels given (none): only an absent one defers to the Pod record.
    let e = parse(with("args", json!({"cni": {"labels": []}}))).unwrap();
    assert_eq!(e.labels, Some(BTreeMap::new()));
    // Runtime keys are accepted.
    let mut r = base();
    r["runtimeConfig"] = json!({});
    r["cni.dev/foo"] = json!(1);
    r["capabilities"] = json!({});
    assert!(parse(r).is_ok());
}

#[test]
fn decode_errors_are_code_6() {
    for input in [&b""[..], b"{", b"not json", b"\xff\xfe"] {
        let e = NetConf::parse(input).unwrap_err();
        assert_eq!(e.code(), 6, "{input:?}");
    }
    // Valid JSON that is not an object is an invalid config.
    assert_eq!(err(json!([1])).0, 7);
}

#[test]
fn versions() {
    let (code, msg) = err(with("cniVersion", json!("0.2.0")));
    assert_eq!(code, 1);
    assert!(msg.contains("`cniVersion` = `0.2.0`"), "{msg}");
    assert_eq!(err(with("cniVersion", json!("1.1.0"))).0, 1);
    let (code, msg) = err(json!({"name": "x", "type": "y"}));
    assert_eq!(
        (code, msg.as_str()),
        (7, "invalid network config: `cniVersion`: is required")
    );
    assert_eq!(err(with("cniVersion", json!(1))).0, 7);
    for v in ["0.3.0", "0.3.1", "0.4.0"] {
        assert!(parse(with("cniVersion", json!(v))).is_ok());
    }
}

#[test]
fn unknown_keys_are_code_2_with_key_and_value() {
    let (code, msg) = err(with("ipam", json!({"type": "host-local"})));
    assert_eq!(code, 2);
    assert_eq!(
        msg,
        r#"unsupported field in network config: `ipam` = {"type":"host-local"} (not a palisade-cni setting)"#
    );
    assert!(
        err(with("agentsocket", json!("/x")))
            .1
            .contains("`agentsocket`")
    );
}

#[test]
fn bad_values_are_code_7_naming_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (with("name", json!("")), "`name`: is required"),
        (with("name", json!("-bad")), "`name` = \"-bad\""),
        (with("type", json!("../x")), "`type` = \"../x\""),
        (with("type", json!(3)), "`type` = 3: must be a string"),
        (
            with("agentSocket", json!("relative.sock")),
            "`agentSocket` = \"relative.sock\"",
        ),
        (
            with("mtu", json!(67)),
            "`mtu` = 67: must be an integer from 68 to 65535",
        ),
        (with("mtu", json!(70000)), "`mtu` = 70000"),
        (with("mtu", json!("1500")), "`mtu` = \"1500\""),
        (with("mtu", json!(-1)), "`mtu` = -1"),
        (with("dns", json!([])), "`dns` = []: must be an object"),
        (
            with("dns", json!({"nameservers": ["x"]})),
            "`dns.nameservers[0]` = \"x\"",
        ),
        (with("args", json!(1)), "`args` = 1"),
        (with("args", json!({"cni": []})), "`args.cni` = []"),
        (
            with("args", json!({"cni": {"ips": ["10.0.0.300"]}})),
            "`args.cni.ips[0]` = \"10.0.0.300\": not an IP address",
        ),
        (
            with("args", json!({"cni": {"ips": "10.0.0.1"}})),
            "`args.cni.ips` = \"10.0.0.1\"",
        ),
        (
            with("args", json!({"cni": {"labels": {"app": "x"}}})),
            "`args.cni.labels` = {",
        ),
        (
            with("args", json!({"cni": {"labels": [{"value": "x"}]}})),
            "`args.cni.labels[0].key`: is required",
        ),
        (
            with(
                "args",
                json!({"cni": {"labels": [{"key": "a"}, {"key": "b c"}]}}),
            ),
            "`args.cni.labels[1].key` = \"b c\"",
        ),
        (
            with(
                "args",
                json!({"cni": {"labels": [{"key": "a", "value": "x y"}]}}),
            ),
            "`args.cni.labels[0].value` = \"x y\"",
        ),
        (
            with(
                "args",
                json!({"cni": {"labels": [{"key": "a"}, {"key": "a"}]}}),
            ),
            "`args.cni.labels[1].key` = \"a\": appears twice",
        ),
        (
            with(
                "args",
                json!({"cni": {"labels": [{"key": "io.kubernetes.pod.namespace", "value": "kube-system"}]}}),
            ),
            "`args.cni.labels[0].key` = \"io.kubernetes.pod.namespace\": is reserved",
        ),
        (
            with("args", json!({"cni": {"serviceAccount": "Admin"}})),
            "`args.cni.serviceAccount` = \"Admin\"",
        ),
        (
            with("args", json!({"cni": {"serviceAccount": 7}})),
            "`args.cni.serviceAccount` = 7",
        ),
        (
            with("prevResult", json!({"ips": [{"address": "nope"}]})),
            "`prevResult`: not a CNI result",
        ),
        (
            with("args", json!({"cni": {"ports": {"http": 80}}})),
            "`args.cni.ports` = {",
        ),
        (
            with("args", json!({"cni": {"ports": [{"name": "http"}]}})),
            "`args.cni.ports[0].containerPort`: must be an integer from 1 to 65535",
        ),
        (
            with(
                "args",
                json!({"cni": {"ports": [{"name": "http", "containerPort": 70000}]}}),
            ),
            "`args.cni.ports[0].containerPort` = 70000",
        ),
        (
            with(
                "args",
                json!({"cni": {"ports": [{"name": "HTTP", "containerPort": 80}]}}),
            ),
            "`args.cni.ports[0].name` = \"HTTP\"",
        ),
        (
            with(
                "args",
                json!({"cni": {"ports": [{"name": "a-very-long-port-name", "containerPort": 80}]}}),
            ),
            "`args.cni.ports[0].name` = \"a-very-long-port-name\": must be 1 to 15 characters",
        ),
        (
            with(
                "args",
                json!({"cni": {"ports": [{"name": "80", "containerPort": 80}]}}),
            ),
            "at least one letter",
        ),
        (
            with(
                "args",
                json!({"cni": {"ports": [{"name": "dns", "containerPort": 53, "protocol": "ICMP"}]}}),
            ),
            "`args.cni.ports[0].protocol` = \"ICMP\": must be TCP, UDP or SCTP",
        ),
        (
            with(
                "args",
                json!({"cni": {"ports": [{"name": "a", "containerPort": 1}, {"name": "a", "containerPort": 2}]}}),
            ),
            "`args.cni.ports[1].name` = \"a\": appears twice",
        ),
        (
            with(
                "args",
                json!({"cni": {"ports": [{"name": "a", "containerPort": 1, "port": 2}]}}),
            ),
            "`args.cni.ports[0].port` = 2: unknown field",
        ),
    ];
    for (v, want) in cases {
        let (code, msg) = err(v.clone());
        assert_eq!(code, 7, "{v}: {msg}");
        assert!(msg.contains(want), "{v}: got {msg:?}, want {want:?}");
    }
}

#[test]
fn named_ports_are_read_in_kubernetes_container_port_shape() {
    let c = parse(with(
        "args",
        json!({"cni": {"ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"containerPort": 9000, "hostPort": 9000}
        ]}}),
    ))
    .unwrap();
    let got: Vec<(String, u16, String)> = c
        .ports
        .iter()
        .map(|p| (p.name.clone(), p.container_port, p.protocol.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("http".to_string(), 8080, "TCP".to_string()),
            ("dns".to_string(), 53, "UDP".to_string())
        ],
        "unnamed ports are skipped, TCP is the default"
    );
}

#[test]
fn unknown_args_are_ignored() {
    let c = parse(with("args", json!({"other": 1, "cni": {"future": true}}))).unwrap();
    assert!(c.labels.is_none());
}
