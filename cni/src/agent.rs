//! The node agent, seen from the plugin: one [`AgentRequest`] in, one [`AgentResponse`] out,
//! over the agent's unix socket ([`UnixAgent`]), behind the one-method [`Agent`] seam so unit
//! tests can script the agent. The protocol is `palisade_api::agent`'s: one JSON line per
//! connection each way.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_api::agent::{AgentRequest, AgentResponse};

/// How long one exchange with the agent may take (connect excluded: it fails at once when
/// nobody listens). Registering an endpoint attaches programs, so this is generous.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest response line read (an `Endpoint` answer is well under 64 KiB).
pub const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// A failed exchange with the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nobody listens on the socket (code 11: try again later; the agent may be starting).
    #[error("node agent not reachable at `agentSocket` = `{socket}`")]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The exchange broke (code 5).
    #[error("i/o failure talking to the node agent at `{socket}` ({request})")]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The request's op.
        request: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent's line is not an [`AgentResponse`] (code 101).
    #[error("the node agent at `{socket}` sent an undecodable answer to `{request}`: {reason}")]
    Malformed {
        /// The socket path.
        socket: PathBuf,
        /// The request's op.
        request: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The agent refused (its own code).
    #[error("node agent refused `{request}`: {message} (agent code {code})")]
    Refused {
        /// The request's op.
        request: &'static str,
        /// The agent's code (CNI's table, 100+ its own).
        code: u32,
        /// The agent's message.
        message: String,
    },
}

// === impl AgentError ===

impl AgentError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            AgentError::Unreachable { .. } => 11,
            AgentError::Io { .. } => 5,
            AgentError::Malformed { .. } => crate::error::CODE_AGENT_PROTOCOL,
            AgentError::Refused { code: 0, .. } => crate::error::CODE_AGENT_PROTOCOL,
            AgentError::Refused { code, .. } => *code,
        }
    }
}

/// The name of a request's op, for messages.
pub fn op_name(req: &AgentRequest) -> &'static str {
    match req {
        AgentRequest::IpamAllocate { .. } => "ipamAllocate",
        AgentRequest::IpamRelease { .. } => "ipamRelease",
        AgentRequest::EndpointAdd(_) => "endpointAdd",
        AgentRequest::EndpointDel { .. } => "endpointDel",
        AgentRequest::EndpointGet { .. } => "endpointGet",
        AgentRequest::Status {} => "status",
        AgentRequest::EncryptStatus {} => "encryptStatus",
        AgentRequest::EncryptRotate {} => "encryptRotate",
    }
}

/// The seam: one request, one response. An [`AgentResponse::Error`] comes back as
/// [`AgentError::Refused`], so callers only see the answers they asked for.
pub trait Agent {
    /// Sends `req` and returns the agent's answer.
    fn call(&self, req: &AgentRequest) -> Result<AgentResponse, AgentError>;
}

/// The agent over its unix socket.
#[derive(Debug, Clone)]
pub struct UnixAgent {
    socket: PathBuf,
    timeout: Duration,
}

// === impl UnixAgent ===

impl UnixAgent {
    /// The agent at `socket`, with [`AGENT_TIMEOUT`].
    pub fn new(socket: &Path) -> Self {
        UnixAgent {
            socket: socket.to_path_buf(),
            timeout: AGENT_TIMEOUT,
        }
    }

    /// Overrides the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Agent for UnixAgent {
    fn call(&self, req: &AgentRequest) -> Result<AgentResponse, AgentError> {
        let request = op_name(req);
        let socket = self.socket.clone();
        let io = |source: std::io::Error| AgentError::Io {
            socket: socket.clone(),
            request,
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(|source| {
            use std::io::ErrorKind::{ConnectionRefused, NotFound};
            match source.kind() {
                NotFound | ConnectionRefused => AgentError::Unreachable {
                    socket: socket.clone(),
                    source,
                },
                _ => io(source),
            }
        })?;
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let mut line = serde_json::to_string(req).map_err(|e| io(std::io::Error::other(e)))?;
        line.push('\n');
        stream.write_all(line.as_bytes()).map_err(io)?;
        stream.flush().map_err(io)?;
        let mut answer = String::new();
        BufReader::new((&stream).take(MAX_RESPONSE_BYTES))
            .read_line(&mut answer)
            .map_err(io)?;
        let malformed = |reason: String| AgentError::Malformed {
            socket: socket.clone(),
            request,
            reason,
        };
        if !answer.ends_with('\n') {
            return Err(malformed(if answer.is_empty() {
                "the connection closed without an answer".into()
            } else {
                "the answer is not one newline-terminated line".into()
            }));
        }
        match serde_json::from_str(&answer).map_err(|e| malformed(e.to_string()))? {
            AgentResponse::Error { code, message } => Err(AgentError::Refused {
                request,
                code,
                message,
            }),
            resp => Ok(resp),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;

    /// Serves one connection with `reply` and returns the request line it read.
    fn serve_once(dir: &Path, reply: &'static str) -> (PathBuf, thread::JoinHandle<String>) {
        let path = dir.join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let h = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            s.write_all(reply.as_bytes()).unwrap();
            line
        });
        (path, h)
    }

    #[test]
    fn one_line_each_way() {
        let dir = tempfile::tempdir().unwrap();
        let (path, h) = serve_once(dir.path(), "{\"result\":\"done\"}\n");
        let req = AgentRequest::IpamRelease {
            container_id: "c".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(
            UnixAgent::new(&path).call(&req).unwrap(),
            AgentResponse::Done
        );
        assert_eq!(
            h.join().unwrap(),
            "{\"op\":\"ipamRelease\",\"containerId\":\"c\",\"ifname\":\"eth0\"}\n"
        );
    }

    #[test]
    fn failures_map_to_codes() {
        let req = AgentRequest::Status {};
        let dir = tempfile::tempdir().unwrap();
        let e = UnixAgent::new(&dir.path().join("none.sock"))
            .call(&req)
            .unwrap_err();
        assert_eq!(e.code(), 11);
        assert!(e.to_string().contains("none.sock"), "{e}");

        let (path, h) = serve_once(
            dir.path(),
            "{\"result\":\"error\",\"code\":7,\"message\":\"bad ip\"}\n",
        );
        let e = UnixAgent::new(&path).call(&req).unwrap_err();
        h.join().unwrap();
        assert_eq!(e.code(), 7);
        assert_eq!(
            e.to_string(),
            "node agent refused `status`: bad ip (agent code 7)"
        );
        std::fs::remove_file(&path).unwrap();

        for (reply, want) in [
            ("{\"result\":\"bogus\"}\n", "undecodable"),
            ("", "closed without an answer"),
            ("{\"result\":\"done\"}", "not one newline-terminated line"),
        ] {
            let (path, h) = serve_once(dir.path(), reply);
            let e = UnixAgent::new(&path).call(&req).unwrap_err();
            h.join().unwrap();
            assert_eq!(e.code(), 101, "{e}");
            assert!(e.to_string().contains(want), "{e}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_silent_agent_times_out_as_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let e = UnixAgent::new(&path)
            .with_timeout(Duration::from_millis(100))
            .call(&AgentRequest::Status {})
            .unwrap_err();
        assert_eq!(e.code(), 5, "{e}");
    }
}
