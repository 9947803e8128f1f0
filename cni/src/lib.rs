//! `palisade-cni`: the CNI plugin (spec 1.0; 0.3.0–0.4.0 results too) that attaches a pod to
//! the Palisade fabric. A container runtime runs it in the node's network namespace with the
//! `CNI_*` environment and the network config on stdin; it answers on stdout with a result or
//! an error (code + message naming the field), logs only on stderr, and exits non-zero on
//! error.
//!
//! ```text
//!  runtime ──env + stdin──▶ env.rs / config.rs (validate everything, touch nothing)
//!                             │
//!          ┌──────────────────┼──────────────────┬─────────────┐
//!          ▼                  ▼                  ▼             ▼
//!        add.rs             del.rs            check.rs     version.rs
//!          │  ip / nsenter      │                 │
//!          ├──▶ runner.rs (Runner seam) ◀─────────┤
//!          └──▶ agent.rs (Agent seam: the node agent's unix socket, palisade_api::agent)
//! ```
//!
//! Addresses come from the node agent's IPAM (`IpamAllocate`), not from an IPAM plugin; the
//! endpoint (namespace, pod, labels, service account, addresses, host veth) is registered with
//! `EndpointAdd` so the agent can resolve its identity and attach the datapath.
#![forbid(unsafe_code)]

pub mod add;
pub mod agent;
pub mod check;
pub mod cni_args;
pub mod config;
pub mod del;
pub mod env;
pub mod error;
pub mod iproute;
pub mod names;
pub mod result;
pub mod runner;
pub mod validate;
pub mod version;

#[cfg(test)]
mod test_util;

use std::path::Path;

use crate::agent::Agent;
use crate::config::NetConf;
use crate::env::{CniEnv, Command, EnvError};
use crate::error::{CniError, ErrorReply};
use crate::runner::Runner;

/// Runs one invocation: the parsed environment, stdin's bytes (or why they could not be read),
/// the runner for `ip`, and how to reach the agent at a socket path. Returns what to print on
/// stdout: `Ok` (ADD's result, VERSION's reply, or nothing) with exit 0, `Err` with exit 1.
pub fn run<R: Runner, A: Agent>(
    env: Result<CniEnv, EnvError>,
    stdin: std::io::Result<Vec<u8>>,
    runner: &R,
    agent_at: impl Fn(&Path) -> A,
) -> Result<String, ErrorReply> {
    let stdin = stdin.map_err(|source| CniError::Io {
        action: "read the network config from stdin",
        source,
    });
    // Errors answer in the request's `cniVersion` when it can be read.
    let version_of = |bytes: &[u8]| -> String {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
            .unwrap_or_else(|| version::CURRENT_VERSION.to_string())
    };
    let (command, att) = match env {
        Err(e) => {
            let v = version_of(stdin.as_deref().unwrap_or_default());
            return Err(CniError::from(e).reply(&v));
        }
        Ok(CniEnv::Version) => {
            let reply = version::version_reply(stdin.as_deref().unwrap_or_default());
            return serde_json::to_string(&reply).map_err(|e| {
                let e = CniError::Io {
                    action: "encode the version reply",
                    source: e.into(),
                };
                e.reply(version::CURRENT_VERSION)
            });
        }
        Ok(CniEnv::Op(command, att)) => (command, att),
    };
    let bytes = stdin.map_err(|e| e.reply(version::CURRENT_VERSION))?;
    let conf = NetConf::parse(&bytes).map_err(|e| e.reply(&version_of(&bytes)))?;
    let agent = agent_at(&conf.agent_socket);
    let done = match command {
        Command::Add => add::add(&conf, &att, runner, &agent).and_then(|r| {
            serde_json::to_string(&r).map_err(|e| CniError::Io {
                action: "encode the result",
                source: e.into(),
            })
        }),
        Command::Del => del::del(&att, runner, &agent).map(|()| String::new()),
        Command::Check => check::check(&conf, &att, runner, &agent).map(|()| String::new()),
        Command::Version => Ok(String::new()),
    };
    done.map_err(|e| e.reply(conf.cni_version.as_str()))
}
