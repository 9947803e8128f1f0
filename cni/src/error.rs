//! Every way the plugin can fail, each mapped to one CNI error code ([`CniError::code`]) and
//! rendered once, in [`ErrorReply`], as the JSON the spec asks for on stdout.
//!
//! | code | meaning (CNI spec 1.0)                    | raised for                                       |
//! | ---- | ----------------------------------------- | ------------------------------------------------ |
//! | 1    | incompatible CNI version                  | `cniVersion` not supported; CHECK before 0.4.0   |
//! | 2    | unsupported field in network config       | a key this plugin does not know (`ipam`, …)      |
//! | 3    | container unknown or does not exist       | `CNI_NETNS` missing on ADD / CHECK               |
//! | 4    | invalid necessary environment variables   | `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_ARGS`, …  |
//! | 5    | I/O failure                               | stdin unreadable; the agent socket broke         |
//! | 6    | failed to decode content                  | stdin is not a JSON object                       |
//! | 7    | invalid network config                    | a known field with a bad value                   |
//! | 11   | try again later                           | the agent socket is absent or refuses            |
//! | 100  | Palisade: a command (`ip`, `nsenter`) failed | creating or configuring links                 |
//! | 101  | Palisade: the agent answered nonsense     | wrong response kind, address not as requested    |
//! | 102  | Palisade: CHECK found a difference        | interface, address, route, endpoint missing      |
//! | 103  | Palisade: the interface already exists    | `CNI_IFNAME` in the pod or the host-side veth    |
//!
//! An error the agent returns keeps the agent's own code (the agent uses the same table).

use std::fmt::Write as _;

use serde::Serialize;

use crate::agent::AgentError;
use crate::config::ConfigError;
use crate::env::EnvError;
use crate::runner::CommandError;

/// A plugin-specific error code (100+): a command failed.
pub const CODE_COMMAND: u32 = 100;
/// A plugin-specific error code (100+): the agent's answer made no sense.
pub const CODE_AGENT_PROTOCOL: u32 = 101;
/// A plugin-specific error code (100+): CHECK found the attachment differs from `prevResult`.
pub const CODE_CHECK_FAILED: u32 = 102;
/// A plugin-specific error code (100+): an interface to be created already exists.
pub const CODE_INTERFACE_EXISTS: u32 = 103;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// Code 1.
    #[error("incompatible CNI version: `cniVersion` = `{version}` (supported: {supported})")]
    IncompatibleVersion {
        /// The version asked for.
        version: String,
        /// The supported versions, comma separated.
        supported: String,
    },
    /// Code 1: CHECK exists from 0.4.0 on.
    #[error("incompatible CNI version: CHECK needs `cniVersion` 0.4.0 or later, got `{version}`")]
    CheckNeedsNewerVersion {
        /// The version asked for.
        version: String,
    },
    /// Code 2.
    #[error("unsupported field in network config: `{field}` = {value} ({reason})")]
    UnsupportedField {
        /// The key.
        field: String,
        /// Its value, as JSON.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// Code 3.
    #[error("container unknown: `CNI_NETNS` = `{netns}` does not exist")]
    NoNetns {
        /// The path.
        netns: String,
    },
    /// Code 4.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// Code 5.
    #[error("i/o failure: cannot {action}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Code 6.
    #[error("cannot decode the network config on stdin")]
    Decode {
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Code 7.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The agent's code, 11 when it cannot be reached, 5 on other socket failures.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Code 100.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Code 101.
    #[error("the node agent's answer to `{request}` makes no sense: {reason}")]
    AgentProtocol {
        /// The request sent.
        request: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Code 102.
    #[error("check failed: {what}")]
    Check {
        /// What differs, naming the object.
        what: String,
    },
    /// Code 103.
    #[error("interface `{iface}` already exists in {place}")]
    InterfaceExists {
        /// The interface.
        iface: String,
        /// `CNI_NETNS \`…\`` or `the node's namespace`.
        place: String,
    },
}

// === impl CniError ===

impl CniError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } | CniError::CheckNeedsNewerVersion { .. } => 1,
            CniError::UnsupportedField { .. } => 2,
            CniError::NoNetns { .. } => 3,
            CniError::Env(_) => 4,
            CniError::Io { .. } => 5,
            CniError::Decode { .. } => 6,
            CniError::Config(_) => 7,
            CniError::Agent(e) => e.code(),
            CniError::Command(_) => CODE_COMMAND,
            CniError::AgentProtocol { .. } => CODE_AGENT_PROTOCOL,
            CniError::Check { .. } => CODE_CHECK_FAILED,
            CniError::InterfaceExists { .. } => CODE_INTERFACE_EXISTS,
        }
    }

    /// A CHECK difference.
    pub fn check(what: impl Into<String>) -> Self {
        CniError::Check { what: what.into() }
    }

    /// The error as the spec's error result, for the given `cniVersion`.
    pub fn reply(&self, cni_version: &str) -> ErrorReply {
        let mut details = String::new();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            if !details.is_empty() {
                details.push_str(": ");
            }
            let _ = write!(details, "{s}");
            source = s.source();
        }
        ErrorReply {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details,
        }
    }
}

/// The spec's error result (printed on stdout, with a non-zero exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorReply {
    /// The version of the request (1.0.0 when it could not be read).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// One line naming the problem and the field, variable or object involved.
    pub msg: String,
    /// The chain of causes, when there are any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_carries_code_message_and_causes() {
        let e = CniError::Io {
            action: "read stdin",
            source: std::io::Error::other("pipe closed"),
        };
        let r = e.reply("0.4.0");
        assert_eq!(r.code, 5);
        assert_eq!(r.msg, "i/o failure: cannot read stdin");
        assert_eq!(r.details, "pipe closed");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"cniVersion":"0.4.0","code":5,"msg":"i/o failure: cannot read stdin","details":"pipe closed"}"#
        );
        let r = CniError::check("x").reply("1.0.0");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"cniVersion":"1.0.0","code":102,"msg":"check failed: x"}"#
        );
    }
}
