//! Hubble's filter flags turned into `FlowFilter`s, as the `hubble observe` CLI does: every
//! flag fills a pair of filters, "left" (the flag's side is the source) and "right" (it is the
//! destination). Directional flags (`--from-*`, `--to-*`) set the same side in both, flags for
//! either side (`--pod`, `--ip`, `-n`...) set the source in one and the destination in the
//! other, and the rest apply to both; the pair is the whitelist (two alternatives, or one when
//! they are equal). `--not` sends the next filter flag into a blacklist pair instead.

use anyhow::{Result, anyhow, bail};
use palisade_api::flow::{DropReason, EventTypeFilter, FlowFilter, TrafficDirection, Verdict};

/// One filter flag and its value, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterFlag {
    /// The flag's long name, without dashes (`from-pod`).
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// Preceded by `--not`.
    pub negated: bool,
}

/// The long names of the filter flags (all take a value).
pub const FILTER_FLAGS: [&str; 29] = [
    "namespace",
    "from-pod",
    "to-pod",
    "pod",
    "from-ip",
    "to-ip",
    "ip",
    "from-label",
    "to-label",
    "label",
    "from-namespace",
    "to-namespace",
    "from-identity",
    "to-identity",
    "identity",
    "from-port",
    "to-port",
    "port",
    "verdict",
    "protocol",
    "http-method",
    "http-path",
    "http-status",
    "type",
    "node-name",
    "traffic-direction",
    "drop-reason-desc",
    "ip-version",
    "uuid",
];

/// The whitelist and blacklist of a request.
#[derive(Debug, Default, PartialEq)]
pub struct Filters {
    /// Flows must match one of these (all when empty).
    pub whitelist: Vec<FlowFilter>,
    /// And none of these.
    pub blacklist: Vec<FlowFilter>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Pair {
    left: FlowFilter,
    right: FlowFilter,
    used: bool,
}

impl Pair {
    fn into_list(self) -> Vec<FlowFilter> {
        if !self.used {
            Vec::new()
        } else if self.left == self.right {
            vec![self.left]
        } else {
            vec![self.left, self.right]
        }
    }
}

/// `ns/pod` stays; a bare pod name gets the namespace of `-n` (the first one) or `default`.
fn pod_with_namespace(pod: &str, namespace: Option<&str>) -> String {
    if pod.contains('/') {
        pod.to_string()
    } else {
        format!("{}/{pod}", namespace.unwrap_or("default"))
    }
}

fn parse_enum<T: Copy>(flag: &str, value: &str, known: &[(&str, T)]) -> Result<T> {
    let v = value.to_ascii_lowercase().replace('-', "_");
    known
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
            anyhow!(
                "--{flag} `{value}`: expected one of {}",
                names.join(", ").to_uppercase()
            )
        })
}

fn port(flag: &str, v: &str) -> Result<String> {
    v.parse::<u16>()
        .map(|p| p.to_string())
        .map_err(|_| anyhow!("--{flag} `{v}`: not a port number (0-65535)"))
}

fn identity(flag: &str, v: &str) -> Result<u32> {
    v.parse::<u32>()
        .map_err(|_| anyhow!("--{flag} `{v}`: not a numeric security identity"))
}

fn ip(flag: &str, v: &str) -> Result<String> {
    if v.parse::<std::net::IpAddr>().is_ok() || v.parse::<ipnet::IpNet>().is_ok() {
        Ok(v.to_string())
    } else {
        bail!("--{flag} `{v}`: neither an IP address nor a CIDR")
    }
}

fn label(flag: &str, v: &str) -> Result<String> {
    let ok = !v.trim().is_empty()
        && v.split(',').all(|req| {
            let key = req
                .split_once("!=")
                .or_else(|| req.split_once('='))
                .map_or(req.trim_start_matches('!'), |(k, _)| k);
            let key = key.rsplit_once(':').map_or(key, |(_, k)| k).trim();
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
        });
    if ok {
        Ok(v.to_string())
    } else {
        bail!(
            "--{flag} `{v}`: not a label selector (`key=value`, `key!=value`, `key`, `!key`, comma-separated)"
        )
    }
}

fn namespace(flag: &str, v: &str) -> Result<String> {
    if v.is_empty() || v.contains('/') {
        bail!("--{flag} `{v}`: not a namespace name");
    }
    Ok(format!("{v}/"))
}

fn http_status(v: &str) -> Result<String> {
    let ok = match v.strip_suffix('+') {
        Some(class) => matches!(class, "1" | "2" | "3" | "4" | "5"),
        None => v.parse::<u32>().is_ok_and(|c| (100..=599).contains(&c)),
    };
    if ok {
        Ok(v.to_string())
    } else {
        bail!("--http-status `{v}`: expected a status code such as 404 or a class such as 5+")
    }
}

fn event_type(v: &str) -> Result<EventTypeFilter> {
    let t = parse_enum(
        "type",
        v,
        &[
            ("l7", 129),
            ("drop", 1),
            ("trace", 4),
            ("policy_verdict", 9),
        ],
    )?;
    Ok(EventTypeFilter {
        r#type: t,
        match_sub_type: false,
        sub_type: 0,
    })
}

/// Builds the filters from the flags in command-line order; `namespace` is the first `-n`.
pub fn build(flags: &[FilterFlag]) -> Result<Filters> {
    let first_ns = flags
        .iter()
        .find(|f| f.name == "namespace" && !f.negated)
        .map(|f| f.value.clone());
    let mut white = Pair::default();
    let mut black = Pair::default();
    for f in flags {
        let pair = if f.negated { &mut black } else { &mut white };
        pair.used = true;
        let (l, r) = (&mut pair.left, &mut pair.right);
        let v = f.value.as_str();
        let name = f.name;
        match name {
            "namespace" => {
                let ns = namespace(name, v)?;
                l.source_pod.push(ns.clone());
                r.destination_pod.push(ns);
            }
            "from-namespace" => {
                let ns = namespace(name, v)?;
                l.source_pod.push(ns.clone());
                r.source_pod.push(ns);
            }
            "to-namespace" => {
                let ns = namespace(name, v)?;
                l.destination_pod.push(ns.clone());
                r.destination_pod.push(ns);
            }
            "from-pod" | "to-pod" | "pod" => {
                if v.is_empty() || v.starts_with('/') {
                    bail!("--{name} `{v}`: expected `[namespace/]pod-name-prefix`");
                }
                let p = pod_with_namespace(v, first_ns.as_deref());
                match name {
                    "from-pod" => {
                        l.source_pod.push(p.clone());
                        r.source_pod.push(p);
                    }
                    "to-pod" => {
                        l.destination_pod.push(p.clone());
                        r.destination_pod.push(p);
                    }
                    _ => {
                        l.source_pod.push(p.clone());
                        r.destination_pod.push(p);
                    }
                }
            }
            "from-ip" | "to-ip" | "ip" => {
                let a = ip(name, v)?;
                either(
                    name,
                    l,
                    r,
                    a,
                    |f| &mut f.source_ip,
                    |f| &mut f.destination_ip,
                );
            }
            "from-label" | "to-label" | "label" => {
                let a = label(name, v)?;
                either(
                    name,
                    l,
                    r,
                    a,
                    |f| &mut f.source_label,
                    |f| &mut f.destination_label,
                );
            }
            "from-port" | "to-port" | "port" => {
                let a = port(name, v)?;
                either(
                    name,
                    l,
                    r,
                    a,
                    |f| &mut f.source_port,
                    |f| &mut f.destination_port,
                );
            }
            "from-identity" | "to-identity" | "identity" => {
                let a = identity(name, v)?;
                either(
                    name,
                    l,
                    r,
                    a,
                    |f| &mut f.source_identity,
                    |f| &mut f.destination_identity,
                );
            }
            _ => {
                both(l, r, name, v)?;
            }
        }
    }
    Ok(Filters {
        whitelist: white.into_list(),
        blacklist: black.into_list(),
    })
}

/// `from-*` sets the source side in both filters, `to-*` the destination side in both, and the
/// bare flag the source in the left and the destination in the right.
fn either<T: Clone>(
    name: &str,
    l: &mut FlowFilter,
    r: &mut FlowFilter,
    v: T,
    src: fn(&mut FlowFilter) -> &mut Vec<T>,
    dst: fn(&mut FlowFilter) -> &mut Vec<T>,
) {
    if name.starts_with("from-") {
        src(l).push(v.clone());
        src(r).push(v);
    } else if name.starts_with("to-") {
        dst(l).push(v.clone());
        dst(r).push(v);
    } else {
        src(l).push(v.clone());
        dst(r).push(v);
    }
}

/// Flags about the flow as a whole: the same in both filters.
fn both(l: &mut FlowFilter, r: &mut FlowFilter, name: &str, v: &str) -> Result<()> {
    let apply = |f: &mut FlowFilter| -> Result<()> {
        match name {
            "verdict" => f.verdict.push(parse_enum(
                name,
                v,
                &[
                    ("forwarded", Verdict::Forwarded as i32),
                    ("dropped", Verdict::Dropped as i32),
                    ("audit", Verdict::Audit as i32),
                    ("redirected", Verdict::Redirected as i32),
                    ("error", Verdict::Error as i32),
                    ("traced", Verdict::Traced as i32),
                    ("translated", Verdict::Translated as i32),
                ],
            )?),
            "protocol" => f.protocol.push(
                parse_enum(
                    name,
                    v,
                    &[
                        ("tcp", "tcp"),
                        ("udp", "udp"),
                        ("icmp", "icmp"),
                        ("icmpv4", "icmpv4"),
                        ("icmpv6", "icmpv6"),
                        ("sctp", "sctp"),
                        ("http", "http"),
                        ("dns", "dns"),
                    ],
                )?
                .to_string(),
            ),
            "http-method" => {
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphabetic()) {
                    bail!("--http-method `{v}`: not an HTTP method");
                }
                f.http_method.push(v.to_ascii_uppercase());
            }
            "http-path" => {
                regex::Regex::new(v).map_err(|e| anyhow!("--http-path `{v}`: {e}"))?;
                f.http_path.push(v.to_string());
            }
            "http-status" => f.http_status_code.push(http_status(v)?),
            "type" => f.event_type.push(event_type(v)?),
            "node-name" => {
                if v.is_empty() {
                    bail!("--node-name: empty pattern");
                }
                f.node_name.push(v.to_string());
            }
            "traffic-direction" => f.traffic_direction.push(parse_enum(
                name,
                v,
                &[
                    ("ingress", TrafficDirection::Ingress as i32),
                    ("egress", TrafficDirection::Egress as i32),
                ],
            )?),
            "drop-reason-desc" => {
                let upper = v.to_ascii_uppercase().replace('-', "_");
                let r = DropReason::from_str_name(&upper)
                    .ok_or_else(|| anyhow!("--drop-reason-desc `{v}`: not a Hubble drop reason (e.g. POLICY_DENIED, POLICY_DENY)"))?;
                f.drop_reason_desc.push(r as i32);
            }
            "ip-version" => f.ip_version.push(parse_enum(
                name,
                v,
                &[("v4", 1), ("ipv4", 1), ("v6", 2), ("ipv6", 2)],
            )?),
            "uuid" => f.uuid.push(v.to_string()),
            other => bail!("--{other}: not a filter flag"),
        }
        Ok(())
    };
    apply(l)?;
    apply(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(name: &'static str, value: &str) -> FilterFlag {
        FilterFlag {
            name,
            value: value.into(),
            negated: false,
        }
    }

    #[test]
    fn directional_flags_make_one_filter() {
        let f = build(&[
            flag("from-pod", "demo/frontend"),
            flag("to-port", "80"),
            flag("verdict", "dropped"),
        ])
        .expect("valid");
        assert_eq!(f.whitelist.len(), 1);
        let w = &f.whitelist[0];
        assert_eq!(w.source_pod, vec!["demo/frontend"]);
        assert_eq!(w.destination_port, vec!["80"]);
        assert_eq!(w.verdict, vec![Verdict::Dropped as i32]);
        assert!(f.blacklist.is_empty());
    }

    #[test]
    fn either_side_flags_make_two_alternatives() {
        let f = build(&[flag("namespace", "demo"), flag("protocol", "TCP")]).expect("valid");
        assert_eq!(f.whitelist.len(), 2);
        assert_eq!(f.whitelist[0].source_pod, vec!["demo/"]);
        assert!(f.whitelist[0].destination_pod.is_empty());
        assert_eq!(f.whitelist[1].destination_pod, vec!["demo/"]);
        assert_eq!(f.whitelist[1].protocol, vec!["tcp"]);
    }

    #[test]
    fn bare_pods_take_the_namespace_flag_or_default() {
        let f = build(&[flag("from-pod", "web")]).expect("valid");
        assert_eq!(f.whitelist[0].source_pod, vec!["default/web"]);
        let f = build(&[flag("namespace", "demo"), flag("to-pod", "api")]).expect("valid");
        assert!(
            f.whitelist
                .iter()
                .all(|w| w.destination_pod.contains(&"demo/api".to_string()))
        );
    }

    #[test]
    fn not_moves_the_next_flag_to_the_blacklist() {
        let f = build(&[
            flag("to-port", "80"),
            FilterFlag {
                name: "from-ip",
                value: "10.0.0.0/8".into(),
                negated: true,
            },
        ])
        .expect("valid");
        assert_eq!(f.whitelist[0].destination_port, vec!["80"]);
        assert!(f.whitelist[0].source_ip.is_empty());
        assert_eq!(f.blacklist.len(), 1);
        assert_eq!(f.blacklist[0].source_ip, vec!["10.0.0.0/8"]);
    }

    #[test]
    fn types_identities_and_reasons() {
        let f = build(&[
            flag("type", "policy-verdict"),
            flag("from-identity", "1234"),
            flag("drop-reason-desc", "policy_denied"),
            flag("traffic-direction", "ingress"),
        ])
        .expect("valid");
        let w = &f.whitelist[0];
        assert_eq!(w.event_type[0].r#type, 9);
        assert_eq!(w.source_identity, vec![1234]);
        assert_eq!(w.drop_reason_desc, vec![DropReason::PolicyDenied as i32]);
        assert_eq!(w.traffic_direction, vec![TrafficDirection::Ingress as i32]);
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (name, value) in [
            ("from-ip", "10.0.0.300"),
            ("to-port", "http"),
            ("verdict", "maybe"),
            ("protocol", "carrier-pigeon"),
            ("from-identity", "-1"),
            ("http-status", "700"),
            ("http-path", "(unclosed"),
            ("http-method", "GE T"),
            ("type", "everything"),
            ("from-label", "=x"),
            ("namespace", "a/b"),
            ("pod", "/x"),
            ("drop-reason-desc", "because"),
        ] {
            let e = build(&[flag(name, value)]).expect_err(name);
            let msg = format!("{e:#}");
            assert!(msg.starts_with(&format!("--{name} ")), "{msg}");
        }
    }
}
