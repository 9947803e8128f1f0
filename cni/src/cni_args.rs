//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, parsed the way libcni's `LoadArgs` does:
//! keys are case-sensitive, a later pair overrides an earlier one, and an unknown key is an
//! error unless `IgnoreUnknown` is `1`/`true`.
//!
//! | key                          | use                                                   |
//! | ---------------------------- | ----------------------------------------------------- |
//! | `IgnoreUnknown`              | `1`/`true`/`0`/`false` (any case)                     |
//! | `IP`                         | a requested address, as host-local IPAM accepts it    |
//! | `K8S_POD_NAMESPACE`          | the pod's namespace (a DNS label); required for ADD   |
//! | `K8S_POD_NAME`               | the pod's name (a DNS subdomain); required for ADD    |
//! | `K8S_POD_INFRA_CONTAINER_ID` | accepted, unused                                      |
//! | `K8S_POD_UID`                | the pod's uid: tells it from an earlier pod of its name |

use std::net::IpAddr;

use crate::env::EnvError;
use crate::validate;

/// The parsed `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IgnoreUnknown`.
    pub ignore_unknown: bool,
    /// `IP`.
    pub ip: Option<IpAddr>,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_UID` (the agent checks it against the uid of the pod's Pod record).
    pub pod_uid: Option<String>,
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> EnvError {
    EnvError::InvalidArg {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

// === impl CniArgs ===

impl CniArgs {
    /// Parses a `CNI_ARGS` value (empty pairs, e.g. a trailing `;`, are skipped).
    pub fn parse(s: &str) -> Result<CniArgs, EnvError> {
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let mut kv = pair.split('=');
            let (Some(key), Some(value), None) = (kv.next(), kv.next(), kv.next()) else {
                return Err(EnvError::MalformedArg {
                    pair: pair.to_string(),
                });
            };
            match key {
                "IgnoreUnknown" => {
                    args.ignore_unknown = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(invalid(key, value, "must be 1, true, 0 or false")),
                    }
                }
                "IP" => {
                    let ip = value
                        .parse()
                        .map_err(|_| invalid(key, value, "not an IP address"))?;
                    args.ip = Some(ip);
                }
                "K8S_POD_NAMESPACE" => {
                    validate::dns_label(value).map_err(|r| invalid(key, value, r))?;
                    args.pod_namespace = Some(value.to_string());
                }
                "K8S_POD_NAME" => {
                    validate::dns_subdomain(value).map_err(|r| invalid(key, value, r))?;
                    args.pod_name = Some(value.to_string());
                }
                "K8S_POD_UID" if !value.is_empty() => args.pod_uid = Some(value.to_string()),
                "K8S_POD_INFRA_CONTAINER_ID" | "K8S_POD_UID" => {}
                _ => unknown.push(format!("`{key}`")),
            }
        }
        if !unknown.is_empty() && !args.ignore_unknown {
            return Err(EnvError::UnknownArgs {
                keys: unknown.join(", "),
            });
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_style_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=api-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u;FOO=bar;IP=10.200.1.20;",
        )
        .unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(a.ip, Some("10.200.1.20".parse().unwrap()));
        assert_eq!(a.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(a.pod_name.as_deref(), Some("api-0"));
        assert_eq!(a.pod_uid.as_deref(), Some("u"));
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        // IgnoreUnknown may come after the unknown key, and any case of true works.
        assert!(CniArgs::parse("FOO=1;IgnoreUnknown=TRUE").is_ok());
    }

    #[test]
    fn bad_args_name_the_key() {
        let err = |s: &str| CniArgs::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("FOO=1;BAR=2"),
            "invalid environment: `CNI_ARGS` has unknown keys `FOO`, `BAR` (set IgnoreUnknown=1 to ignore them)"
        );
        assert!(err("FOO=1;IgnoreUnknown=0").contains("`FOO`"));
        assert!(err("IP=10.0.0.300").contains("`IP` = `10.0.0.300`: not an IP address"));
        assert!(err("IP=10.0.0.1/24").contains("`IP`"));
        assert!(err("K8S_POD_NAMESPACE=Prod").contains("`K8S_POD_NAMESPACE` = `Prod`"));
        assert!(err("K8S_POD_NAME=a_b").contains("`K8S_POD_NAME`"));
        assert!(err("IgnoreUnknown=yes").contains("`IgnoreUnknown`"));
        assert!(err("IP").contains("pair `IP` is not KEY=VALUE"));
        assert!(err("a=b=c").contains("pair `a=b=c`"));
    }
}
