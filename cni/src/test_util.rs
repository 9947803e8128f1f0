//! Fakes for the two seams: a [`FakeRunner`] that records every command and answers from
//! rules, and a [`ScriptedAgent`] that records every request and answers like a healthy agent
//! unless told otherwise.

use std::cell::RefCell;
use std::collections::HashMap;

use palisade_api::agent::{AgentRequest, AgentResponse};

use crate::agent::{Agent, AgentError, op_name};
use crate::cni_args::CniArgs;
use crate::config::NetConf;
use crate::env::Attachment;
use crate::runner::{Cmd, CmdOutput, CommandError, Runner};

/// Records commands; answers a command line found in `answers`, else succeeds with `[]`.
#[derive(Default)]
pub struct FakeRunner {
    /// Each command line, with its stdin lines after ` <<< ` separated by `; `.
    pub log: RefCell<Vec<String>>,
    /// Exact command line → output.
    pub answers: HashMap<String, CmdOutput>,
}

// === impl FakeRunner ===

impl FakeRunner {
    /// Answers `cmd` with stdout `json`.
    pub fn answer(mut self, cmd: &str, json: &str) -> Self {
        let out = CmdOutput {
            success: true,
            stdout: json.to_string(),
            stderr: String::new(),
        };
        self.answers.insert(cmd.to_string(), out);
        self
    }

    /// Makes `cmd` fail with `stderr`.
    pub fn fail(mut self, cmd: &str, stderr: &str) -> Self {
        let out = CmdOutput {
            success: false,
            stdout: String::new(),
            stderr: stderr.to_string(),
        };
        self.answers.insert(cmd.to_string(), out);
        self
    }

    /// The commands run so far.
    pub fn commands(&self) -> Vec<String> {
        self.log.borrow().clone()
    }
}

impl Runner for FakeRunner {
    fn run(&self, cmd: &Cmd) -> Result<CmdOutput, CommandError> {
        let line = cmd.to_string();
        let mut logged = line.clone();
        if let Some(stdin) = &cmd.stdin {
            logged.push_str(" <<< ");
            logged.push_str(&stdin.lines().collect::<Vec<_>>().join("; "));
        }
        self.log.borrow_mut().push(logged);
        Ok(self.answers.get(&line).cloned().unwrap_or(CmdOutput {
            success: true,
            stdout: "[]".into(),
            stderr: String::new(),
        }))
    }
}

/// The answer a healthy agent gives.
pub fn healthy(req: &AgentRequest) -> Result<AgentResponse, AgentError> {
    Ok(match req {
        AgentRequest::IpamAllocate { requested, .. } => AgentResponse::IpamAllocated {
            ip: requested.unwrap_or_else(|| {
                "10.200.1.20"
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())
            }),
            prefix: 32,
            gateway: std::net::Ipv4Addr::new(169, 254, 1, 1).into(),
        },
        AgentRequest::EndpointAdd(_) => AgentResponse::EndpointAdded {
            endpoint_id: 1,
            identity: 1000,
        },
        _ => AgentResponse::Done,
    })
}

/// How a [`ScriptedAgent`] answers.
pub type Script = Box<dyn Fn(&AgentRequest) -> Result<AgentResponse, AgentError>>;

/// Records requests; answers with `script`.
pub struct ScriptedAgent {
    /// The requests, in order.
    pub log: RefCell<Vec<AgentRequest>>,
    script: Script,
}

// === impl ScriptedAgent ===

impl ScriptedAgent {
    /// A healthy agent.
    pub fn healthy() -> Self {
        Self::with(healthy)
    }

    /// An agent answering with `script`.
    pub fn with(
        script: impl Fn(&AgentRequest) -> Result<AgentResponse, AgentError> + 'static,
    ) -> Self {
        ScriptedAgent {
            log: RefCell::new(Vec::new()),
            script: Box::new(script),
        }
    }

    /// The ops sent so far.
    pub fn ops(&self) -> Vec<&'static str> {
        self.log.borrow().iter().map(op_name).collect()
    }
}

impl Agent for ScriptedAgent {
    fn call(&self, req: &AgentRequest) -> Result<AgentResponse, AgentError> {
        self.log.borrow_mut().push(req.clone());
        (self.script)(req)
    }
}

/// A refusal with `code`.
pub fn refused(req: &AgentRequest, code: u32, message: &str) -> AgentError {
    AgentError::Refused {
        request: op_name(req),
        code,
        message: message.into(),
    }
}

/// A temp file standing for `CNI_NETNS` (the flows only check that the path exists).
pub fn fake_netns() -> tempfile::NamedTempFile {
    tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("temp file: {e}"))
}

/// An ADD/DEL/CHECK attachment `c1`/`eth0` in `netns`, with pod `prod/api-0`.
pub fn attachment(netns: &str, cni_args: &str) -> Attachment {
    Attachment {
        container_id: "c1".into(),
        ifname: "eth0".into(),
        netns: Some(netns.to_string()),
        args: CniArgs::parse(&format!(
            "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=api-0;{cni_args}"
        ))
        .unwrap_or_else(|e| panic!("{e}")),
    }
}

/// A config with `extra` merged into the minimal one.
pub fn conf(extra: serde_json::Value) -> NetConf {
    let mut v =
        serde_json::json!({"cniVersion": "1.0.0", "name": "palisade", "type": "palisade-cni"});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    NetConf::parse(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}
