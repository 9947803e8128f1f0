//! Every filter field: a flow it selects, one it does not, and the errors for bad values.

use palisade_api::flow::{
    self, CiliumEventType, DropReason, Endpoint, Flow, FlowFilter, IpVersion, Layer4, Layer7,
    TcpFlags, TrafficDirection, Verdict, layer4::Protocol as L4, layer7::Record,
};

use super::{FilterError, FlowFilters};

fn ep(ns: &str, pod: &str, identity: u32, labels: &[&str]) -> Endpoint {
    Endpoint {
        id: 0,
        identity,
        namespace: ns.into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        pod_name: pod.into(),
        workloads: Vec::new(),
    }
}

/// demo/frontend-1 10.0.1.2:41234 -> demo/api-1 10.0.1.3:80, TCP, dropped by default deny.
fn drop_flow() -> Flow {
    Flow {
        uuid: "n1/1".into(),
        verdict: Verdict::Dropped as i32,
        drop_reason_desc: DropReason::PolicyDenied as i32,
        ip: Some(flow::Ip {
            source: "10.0.1.2".into(),
            destination: "10.0.1.3".into(),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
        }),
        l4: Some(Layer4 {
            protocol: Some(L4::Tcp(flow::Tcp {
                source_port: 41234,
                destination_port: 80,
                flags: Some(TcpFlags {
                    syn: true,
                    ..TcpFlags::default()
                }),
            })),
        }),
        source: Some(ep(
            "demo",
            "frontend-1",
            1234,
            &["k8s:app=frontend", "k8s:tier=web"],
        )),
        destination: Some(ep("demo", "api-1", 5678, &["k8s:app=api"])),
        node_name: "lab-n1".into(),
        event_type: Some(CiliumEventType {
            r#type: 1,
            sub_type: 133,
        }),
        traffic_direction: TrafficDirection::Ingress as i32,
        ..Flow::default()
    }
}

fn http_flow() -> Flow {
    Flow {
        verdict: Verdict::Forwarded as i32,
        drop_reason_desc: 0,
        l7: Some(Layer7 {
            r#type: 1,
            latency_ns: 0,
            record: Some(Record::Http(flow::Http {
                code: 404,
                method: "GET".into(),
                url: "http://api/v1/items?x=1".into(),
                protocol: "HTTP/1.1".into(),
                headers: Vec::new(),
            })),
        }),
        is_reply: Some(false),
        ..drop_flow()
    }
}

fn sel(f: FlowFilter) -> FlowFilters {
    FlowFilters::new(&[f], &[]).expect("valid filter")
}

/// The filter selects the first flow and not the second.
fn check(f: FlowFilter, yes: &Flow, no: &Flow) {
    let s = sel(f.clone());
    assert!(s.matches(yes), "{f:?} should select {yes:?}");
    assert!(!s.matches(no), "{f:?} should not select {no:?}");
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn no_filters_select_everything_and_blacklist_subtracts() {
    let all = FlowFilters::new(&[], &[]).expect("empty");
    assert!(all.matches(&drop_flow()));
    let black = FlowFilter {
        verdict: vec![Verdict::Dropped as i32],
        ..FlowFilter::default()
    };
    let not_dropped = FlowFilters::new(&[], &[black]).expect("valid");
    assert!(!not_dropped.matches(&drop_flow()));
    assert!(not_dropped.matches(&http_flow()));
}

#[test]
fn whitelist_entries_are_alternatives() {
    let a = FlowFilter {
        source_pod: strings(&["demo/nothing"]),
        ..FlowFilter::default()
    };
    let b = FlowFilter {
        destination_pod: strings(&["demo/api"]),
        ..FlowFilter::default()
    };
    assert!(
        !FlowFilters::new(std::slice::from_ref(&a), &[])
            .expect("a")
            .matches(&drop_flow())
    );
    assert!(
        FlowFilters::new(&[a, b], &[])
            .expect("a|b")
            .matches(&drop_flow())
    );
}

#[test]
fn ips_exact_and_cidr() {
    let mut other = drop_flow();
    other.ip.as_mut().expect("ip").source = "192.168.9.9".into();
    other.ip.as_mut().expect("ip").destination = "192.168.9.8".into();
    check(
        FlowFilter {
            source_ip: strings(&["10.0.1.2"]),
            ..FlowFilter::default()
        },
        &drop_flow(),
        &other,
    );
    check(
        FlowFilter {
            destination_ip: strings(&["10.0.0.0/16"]),
            ..FlowFilter::default()
        },
        &drop_flow(),
        &other,
    );
}

#[test]
fn pods_by_namespace_and_prefix() {
    let mut other = drop_flow();
    other.source = Some(ep("prod", "frontend-1", 1234, &[]));
    other.destination = Some(ep("prod", "db-0", 9, &[]));
    for s in ["demo/frontend", "demo/", "frontend-"] {
        let f = FlowFilter {
            source_pod: strings(&[s]),
            ..FlowFilter::default()
        };
        assert!(sel(f).matches(&drop_flow()), "{s}");
    }
    check(
        FlowFilter {
            source_pod: strings(&["demo/"]),
            ..FlowFilter::default()
        },
        &drop_flow(),
        &other,
    );
    check(
        FlowFilter {
            destination_pod: strings(&["demo/api-"]),
            ..FlowFilter::default()
        },
        &drop_flow(),
        &other,
    );
}

#[test]
fn labels_with_and_without_source() {
    let mut other = drop_flow();
    other.source = Some(ep("demo", "x", 1, &["k8s:app=backend"]));
    other.destination = Some(ep("demo", "y", 2, &["k8s:app=api", "k8s:debug"]));
    for s in [
        "app=frontend",
        "k8s:app=frontend",
        "app=frontend,tier",
        "app!=backend",
        "any:tier=web",
    ] {
        check(
            FlowFilter {
                source_label: strings(&[s]),
                ..FlowFilter::default()
            },
            &drop_flow(),
            &other,
        );
    }
    check(
        FlowFilter {
            destination_label: strings(&["!debug"]),
            ..FlowFilter::default()
        },
        &drop_flow(),
        &other,
    );
    let wrong_source = FlowFilter {
        source_label: strings(&["reserved:app=frontend"]),
        ..FlowFilter::default()
    };
    assert!(!sel(wrong_source).matches(&drop_flow()));
}

#[test]
fn identities_verdicts_reasons_directions() {
    let other = http_flow();
    let mut egress = drop_flow();
    egress.traffic_direction = TrafficDirection::Egress as i32;
    egress.drop_reason_desc = DropReason::PolicyDeny as i32;
    egress.source.as_mut().expect("src").identity = 1;
    egress.destination.as_mut().expect("dst").identity = 2;
    check(
        FlowFilter {
            source_identity: vec![1234],
            ..FlowFilter::default()
        },
        &drop_flow(),
        &egress,
    );
    check(
        FlowFilter {
            destination_identity: vec![5678],
            ..FlowFilter::default()
        },
        &drop_flow(),
        &egress,
    );
    check(
        FlowFilter {
            verdict: vec![Verdict::Dropped as i32],
            ..FlowFilter::default()
        },
        &drop_flow(),
        &other,
    );
    check(
        FlowFilter {
            drop_reason_desc: vec![DropReason::PolicyDenied as i32],
            ..FlowFilter::default()
        },
        &drop_flow(),
        &egress,
    );
    check(
        FlowFilter {
            traffic_direction: vec![TrafficDirection::Ingress as i32],
            ..FlowFilter::default()
        },
        &drop_flow(),
        &egress,
    );
}

#[test]
fn protocols_ports_and_tcp_flags() {
    let mut udp = drop_flow();
    udp.l4 = Some(Layer4 {
        protocol: Some(L4::Udp(flow::Udp {
            source_port: 5353,
            destination_port: 53,
        })),
    });
    check(
        FlowFilter {
            protocol: strings(&["TCP"]),
            ..FlowFilter::default()
        },
        &drop_flow(),
        &udp,
    );
    check(
        FlowFilter {
            protocol: strings(&["udp"]),
            ..FlowFilter::default()
        },
        &udp,
        &drop_flow(),
    );
    check(
        FlowFilter {
            protocol: strings(&["http"]),
            ..FlowFilter::default()
        },
        &http_flow(),
        &drop_flow(),
    );
    check(
        FlowFilter {
            destination_port: strings(&["80"]),
            ..FlowFilter::default()
        },
        &drop_flow(),
        &udp,
    );
    check(
        FlowFilter {
            source_port: strings(&["5353"]),
            ..FlowFilter::default()
        },
        &udp,
        &drop_flow(),
    );
    check(
        FlowFilter {
            tcp_flags: vec![TcpFlags {
                syn: true,
                ..TcpFlags::default()
            }],
            ..FlowFilter::default()
        },
        &drop_flow(),
        &udp,
    );
}

#[test]
fn http_fields_and_reply() {
    let plain = drop_flow();
    for f in [
        FlowFilter {
            http_method: strings(&["get"]),
            ..FlowFilter::default()
        },
        FlowFilter {
            http_path: strings(&["^/v1/.*"]),
            ..FlowFilter::default()
        },
        FlowFilter {
            http_status_code: strings(&["4+"]),
            ..FlowFilter::default()
        },
        FlowFilter {
            http_status_code: strings(&["404"]),
            ..FlowFilter::default()
        },
        FlowFilter {
            reply: vec![false],
            ..FlowFilter::default()
        },
    ] {
        check(f, &http_flow(), &plain);
    }
    let f = FlowFilter {
        http_status_code: strings(&["5+"]),
        ..FlowFilter::default()
    };
    assert!(!sel(f).matches(&http_flow()));
}

#[test]
fn node_names_event_types_ip_versions_uuids() {
    let mut other = drop_flow();
    other.node_name = "lab-n2".into();
    other.uuid = "n2/1".into();
    other.event_type = Some(CiliumEventType {
        r#type: 9,
        sub_type: 0,
    });
    other.ip.as_mut().expect("ip").ip_version = IpVersion::IPv6 as i32;
    for f in [
        FlowFilter {
            node_name: strings(&["*-n1"]),
            ..FlowFilter::default()
        },
        FlowFilter {
            node_name: strings(&["lab-n1"]),
            ..FlowFilter::default()
        },
        FlowFilter {
            uuid: strings(&["n1/1"]),
            ..FlowFilter::default()
        },
        FlowFilter {
            event_type: vec![flow::EventTypeFilter {
                r#type: 1,
                match_sub_type: true,
                sub_type: 133,
            }],
            ..FlowFilter::default()
        },
        FlowFilter {
            ip_version: vec![IpVersion::IPv4 as i32],
            ..FlowFilter::default()
        },
    ] {
        check(f, &drop_flow(), &other);
    }
}

#[test]
fn fields_palisade_does_not_fill_match_nothing() {
    let f = FlowFilter {
        source_fqdn: strings(&["example.com"]),
        ..FlowFilter::default()
    };
    assert!(!sel(f).matches(&drop_flow()));
}

fn bad(f: FlowFilter) -> FilterError {
    FlowFilters::new(&[], &[FlowFilter::default(), f]).expect_err("invalid filter")
}

#[test]
fn bad_values_name_the_filter_and_field() {
    let cases: Vec<(FlowFilter, &str)> = vec![
        (
            FlowFilter {
                source_ip: strings(&["10.0.0.300"]),
                ..FlowFilter::default()
            },
            "blacklist[1].source_ip",
        ),
        (
            FlowFilter {
                destination_pod: strings(&["/api"]),
                ..FlowFilter::default()
            },
            "blacklist[1].destination_pod",
        ),
        (
            FlowFilter {
                source_label: strings(&["app=x,=y"]),
                ..FlowFilter::default()
            },
            "blacklist[1].source_label",
        ),
        (
            FlowFilter {
                protocol: strings(&["carrier-pigeon"]),
                ..FlowFilter::default()
            },
            "blacklist[1].protocol",
        ),
        (
            FlowFilter {
                destination_port: strings(&["70000"]),
                ..FlowFilter::default()
            },
            "blacklist[1].destination_port",
        ),
        (
            FlowFilter {
                http_status_code: strings(&["9+"]),
                ..FlowFilter::default()
            },
            "blacklist[1].http_status_code",
        ),
        (
            FlowFilter {
                http_path: strings(&["(unclosed"]),
                ..FlowFilter::default()
            },
            "blacklist[1].http_path",
        ),
        (
            FlowFilter {
                verdict: vec![42],
                ..FlowFilter::default()
            },
            "blacklist[1].verdict",
        ),
        (
            FlowFilter {
                drop_reason_desc: vec![7],
                ..FlowFilter::default()
            },
            "blacklist[1].drop_reason_desc",
        ),
        (
            FlowFilter {
                node_name: strings(&[""]),
                ..FlowFilter::default()
            },
            "blacklist[1].node_name",
        ),
    ];
    for (f, field) in cases {
        let e = bad(f);
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().starts_with(&format!("`{field}`")), "{e}");
    }
}
