//! The `CNI_*` environment: the only place the plugin reads environment variables
//! ([`CniEnv::from_process`]); everything after works on the typed [`CniEnv`].

use std::ffi::OsString;

use crate::cni_args::CniArgs;
use crate::validate;

/// The operation: `ADD`, `DEL`, `CHECK` or `VERSION`.
pub const ENV_COMMAND: &str = "CNI_COMMAND";
/// The container id.
pub const ENV_CONTAINERID: &str = "CNI_CONTAINERID";
/// Path of the container's network namespace.
pub const ENV_NETNS: &str = "CNI_NETNS";
/// The interface to create inside the container.
pub const ENV_IFNAME: &str = "CNI_IFNAME";
/// `K=V;K=V` extra arguments (see [`CniArgs`]).
pub const ENV_ARGS: &str = "CNI_ARGS";
/// Where to find delegated plugins (read by no one: this plugin delegates nothing).
pub const ENV_PATH: &str = "CNI_PATH";

/// A problem with the environment (CNI error code 4); the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A required variable is unset or empty.
    #[error("invalid environment: `{var}` is required for {command}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// The command that needs it.
        command: &'static str,
    },
    /// A variable is not valid UTF-8.
    #[error("invalid environment: `{var}` is not valid UTF-8")]
    NotUnicode {
        /// The variable.
        var: &'static str,
    },
    /// A variable has a bad value.
    #[error("invalid environment: `{var}` = `{value}`: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// `CNI_ARGS` has an argument with a bad value.
    #[error("invalid environment: `CNI_ARGS` `{key}` = `{value}`: {reason}")]
    InvalidArg {
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// `CNI_ARGS` has a pair that is not `KEY=VALUE`.
    #[error("invalid environment: `CNI_ARGS` pair `{pair}` is not KEY=VALUE")]
    MalformedArg {
        /// The pair.
        pair: String,
    },
    /// `CNI_ARGS` has keys this plugin does not know, and no `IgnoreUnknown=1`.
    #[error(
        "invalid environment: `CNI_ARGS` has unknown keys {keys} (set IgnoreUnknown=1 to ignore them)"
    )]
    UnknownArgs {
        /// The keys, each in backticks.
        keys: String,
    },
}

/// The operation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it (idempotent).
    Del,
    /// Verify an attachment against `prevResult`.
    Check,
    /// Report supported versions.
    Version,
}

// === impl Command ===

impl Command {
    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// The attachment an ADD, DEL or CHECK works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS` (optional for DEL only).
    pub netns: Option<String>,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
}

/// The parsed environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CniEnv {
    /// `VERSION`: nothing else is read.
    Version,
    /// `ADD`, `DEL` or `CHECK` on an attachment.
    Op(Command, Attachment),
}

// === impl CniEnv ===

impl CniEnv {
    /// Reads the process environment.
    pub fn from_process() -> Result<CniEnv, EnvError> {
        CniEnv::from_lookup(|var| std::env::var_os(var))
    }

    /// Parses the environment given by `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<CniEnv, EnvError> {
        let get = |var: &'static str| -> Result<Option<String>, EnvError> {
            match lookup(var) {
                None => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(|s| Some(s).filter(|s| !s.is_empty()))
                    .map_err(|_| EnvError::NotUnicode { var }),
            }
        };
        let command = match get(ENV_COMMAND)?.as_deref() {
            None => {
                return Err(EnvError::Missing {
                    var: ENV_COMMAND,
                    command: "every command",
                });
            }
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => return Ok(CniEnv::Version),
            Some(other) => {
                return Err(EnvError::Invalid {
                    var: ENV_COMMAND,
                    value: other.to_string(),
                    reason: "must be ADD, DEL, CHECK or VERSION".into(),
                });
            }
        };
        let required = |var: &'static str| {
            get(var)?.ok_or(EnvError::Missing {
                var,
                command: command.as_str(),
            })
        };
        let checked = |var: &'static str, value: String, check: fn(&str) -> Result<(), String>| {
            check(&value)
                .map(|()| value.clone())
                .map_err(|reason| EnvError::Invalid { var, value, reason })
        };
        let container_id = checked(
            ENV_CONTAINERID,
            required(ENV_CONTAINERID)?,
            validate::cni_id,
        )?;
        let ifname = checked(ENV_IFNAME, required(ENV_IFNAME)?, validate::ifname)?;
        let netns = match command {
            Command::Del => get(ENV_NETNS)?,
            _ => Some(required(ENV_NETNS)?),
        };
        if let Some(ns) = netns.as_ref().filter(|ns| !ns.starts_with('/')) {
            return Err(EnvError::Invalid {
                var: ENV_NETNS,
                value: ns.clone(),
                reason: "must be an absolute path".into(),
            });
        }
        let args = CniArgs::parse(get(ENV_ARGS)?.as_deref().unwrap_or(""))?;
        Ok(CniEnv::Op(
            command,
            Attachment {
                container_id,
                ifname,
                netns,
                args,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<CniEnv, EnvError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/p1"),
        ("CNI_IFNAME", "eth0"),
    ];

    fn with(over: &[(&str, &str)]) -> Result<CniEnv, EnvError> {
        let mut v: Vec<(&str, &str)> = BASE
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend(over.iter().filter(|(_, val)| *val != "<unset>"));
        parse(&v)
    }

    #[test]
    fn add_parses_every_variable() {
        let env = with(&[("CNI_ARGS", "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=api-1")]).unwrap();
        let CniEnv::Op(Command::Add, a) = env else {
            panic!("{env:?}")
        };
        assert_eq!(a.container_id, "c1");
        assert_eq!(a.ifname, "eth0");
        assert_eq!(a.netns.as_deref(), Some("/run/netns/p1"));
        assert_eq!(a.args.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(
            parse(&[("CNI_COMMAND", "VERSION")]).unwrap(),
            CniEnv::Version
        );
    }

    #[test]
    fn missing_and_bad_variables_are_named() {
        let msg = |r: Result<CniEnv, EnvError>| r.unwrap_err().to_string();
        assert!(msg(parse(&[])).contains("`CNI_COMMAND` is required"));
        assert!(msg(with(&[("CNI_COMMAND", "GC")])).contains("`CNI_COMMAND` = `GC`"));
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let m = msg(with(&[(var, "<unset>")]));
            assert!(m.contains(&format!("`{var}` is required for ADD")), "{m}");
        }
        assert!(msg(with(&[("CNI_CONTAINERID", "-x")])).contains("`CNI_CONTAINERID` = `-x`"));
        assert!(msg(with(&[("CNI_IFNAME", "a/b")])).contains("`CNI_IFNAME` = `a/b`"));
        assert!(msg(with(&[("CNI_NETNS", "p1")])).contains("absolute path"));
        assert!(msg(with(&[("CNI_ARGS", "FOO=1")])).contains("`FOO`"));
        // DEL tolerates a missing netns; CHECK does not.
        let del = with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "<unset>")]).unwrap();
        assert!(matches!(
            del,
            CniEnv::Op(Command::Del, Attachment { netns: None, .. })
        ));
        let m = msg(with(&[("CNI_COMMAND", "CHECK"), ("CNI_NETNS", "")]));
        assert!(m.contains("`CNI_NETNS` is required for CHECK"), "{m}");
    }

    #[test]
    fn non_unicode_is_refused() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0x66, 0xff]);
        let r = CniEnv::from_lookup(|k| {
            if k == ENV_COMMAND {
                Some("ADD".into())
            } else if k == ENV_CONTAINERID {
                Some(bad.clone())
            } else {
                None
            }
        });
        assert_eq!(
            r.unwrap_err(),
            EnvError::NotUnicode {
                var: ENV_CONTAINERID
            }
        );
    }
}
