//! [`FakeAgent`]: stands in for the node agent, which is another engineer's work. It answers
//! the `palisade_api::agent` socket protocol (one JSON line in, one out, per connection) from a
//! temp dir, with a small in-memory IPAM and endpoint table, records every request, and can be
//! told to refuse `EndpointAdd`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use palisade_api::agent::{AgentRequest, AgentResponse, EndpointSpec};

/// The gateway the fake IPAM hands out.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

type Key = (String, String);

/// What the fake agent holds.
#[derive(Debug, Default)]
pub struct State {
    /// Every request, in order.
    pub requests: Vec<AgentRequest>,
    /// Allocated addresses by (container, ifname).
    pub allocations: BTreeMap<Key, IpAddr>,
    /// Registered endpoints by (container, ifname).
    pub endpoints: BTreeMap<Key, EndpointSpec>,
    /// When set, `EndpointAdd` is refused with this code and message.
    pub refuse_endpoint_add: Option<(u32, String)>,
}

/// The fake agent; stops and removes its socket when dropped.
pub struct FakeAgent {
    /// The socket path (put it in the config's `agentSocket`).
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn answer(state: &mut State, pool: [u8; 3], req: AgentRequest) -> AgentResponse {
    state.requests.push(req.clone());
    match req {
        AgentRequest::IpamAllocate {
            container_id,
            ifname,
            requested,
        } => {
            let key = (container_id, ifname);
            if let Some(ip) = state.allocations.get(&key) {
                return allocated(*ip);
            }
            let taken = |ip: &IpAddr, s: &State| s.allocations.values().any(|a| a == ip);
            let ip = match requested {
                Some(ip) if taken(&ip, state) => {
                    return AgentResponse::Error {
                        code: 7,
                        message: format!("address {ip} is in use"),
                    };
                }
                Some(ip) => ip,
                None => match (10..250)
                    .map(|h| IpAddr::V4(Ipv4Addr::new(pool[0], pool[1], pool[2], h)))
                    .find(|ip| !taken(ip, state))
                {
                    Some(ip) => ip,
                    None => {
                        return AgentResponse::Error {
                            code: 11,
                            message: "pool exhausted".into(),
                        };
                    }
                },
            };
            state.allocations.insert(key, ip);
            allocated(ip)
        }
        AgentRequest::IpamRelease {
            container_id,
            ifname,
        } => {
            state.allocations.remove(&(container_id, ifname));
            AgentResponse::Done
        }
        AgentRequest::EndpointAdd(spec) => {
            if let Some((code, message)) = state.refuse_endpoint_add.clone() {
                return AgentResponse::Error { code, message };
            }
            let id = u32::try_from(state.endpoints.len()).unwrap_or(0) + 1;
            state
                .endpoints
                .insert((spec.container_id.clone(), spec.ifname.clone()), spec);
            AgentResponse::EndpointAdded {
                endpoint_id: id,
                identity: 1000 + id,
            }
        }
        AgentRequest::EndpointDel {
            container_id,
            ifname,
        } => {
            state.endpoints.remove(&(container_id, ifname));
            AgentResponse::Done
        }
        AgentRequest::EndpointGet {
            container_id,
            ifname,
        } => match state.endpoints.get(&(container_id.clone(), ifname.clone())) {
            Some(spec) => AgentResponse::Endpoint {
                spec: spec.clone(),
                endpoint_id: 1,
                identity: 1001,
            },
            None => AgentResponse::Error {
                code: 3,
                message: format!("unknown endpoint {container_id}/{ifname}"),
            },
        },
        AgentRequest::Status {} => AgentResponse::Status {
            status: serde_json::json!({"fake": true}),
        },
        // The CNI plugin never sends these; answering keeps the stand-in total.
        AgentRequest::EncryptStatus {} | AgentRequest::EncryptRotate {} => AgentResponse::Error {
            code: 4,
            message: "the fake agent has no encryption".into(),
        },
    }
}

fn allocated(ip: IpAddr) -> AgentResponse {
    AgentResponse::IpamAllocated {
        ip,
        prefix: 32,
        gateway: GATEWAY.into(),
    }
}

fn serve(stream: UnixStream, state: &Mutex<State>, pool: [u8; 3]) {
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() {
        return;
    }
    let resp = match serde_json::from_str::<AgentRequest>(&line) {
        Ok(req) => answer(&mut lock(state), pool, req),
        Err(e) => AgentResponse::Error {
            code: 6,
            message: format!("undecodable request: {e}"),
        },
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_default();
    out.push('\n');
    let _ = (&stream).write_all(out.as_bytes());
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

// === impl FakeAgent ===

impl FakeAgent {
    /// Starts an agent whose pool is `a.b.c.10`–`a.b.c.249`.
    pub fn start(pool: [u8; 3]) -> FakeAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake agent's socket");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = stream {
                    serve(s, &st, pool);
                }
            }
        });
        FakeAgent {
            socket,
            state,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The agent's state.
    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The ops received so far, e.g. `["ipamAllocate", "endpointAdd"]`.
    pub fn ops(&self) -> Vec<String> {
        self.state()
            .requests
            .iter()
            .map(|r| {
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.get("op")?.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
