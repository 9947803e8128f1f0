//! `serve`: foreground TCP and UDP servers that answer every connection or datagram with one line
//! naming the workload, the protocol and the port — or, when what arrives is a DNS query, with a
//! DNS answer ([`crate::dns_answer`]).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::Style;
use crate::{Protocol, REPLY_PREFIX};

/// How long a TCP server waits for the client's line before replying anyway.
pub const TCP_READ_WINDOW: Duration = Duration::from_secs(1);

/// What to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// The name put in every reply (the pod name in the lab).
    pub name: String,
    /// TCP ports; 0 asks the kernel for a free port (tests).
    pub tcp: Vec<u16>,
    /// UDP ports; 0 asks the kernel for a free port (tests).
    pub udp: Vec<u16>,
    /// HTTP/1.1 ports (see [`crate::http`]).
    pub http: Vec<u16>,
    /// HTTP/1.1 ports serving the small httpbin-like REST API (see [`crate::http::Style::Api`]).
    pub api: Vec<u16>,
}

/// A server that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Nothing to serve.
    #[error("nothing to serve: give at least one --tcp, --udp, --http or --api port")]
    NothingToServe,
    /// A listening socket could not be bound.
    #[error("cannot bind {protocol} `{addr}`")]
    Bind {
        /// Protocol of the socket.
        protocol: Protocol,
        /// Address it was bound to.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Http(TcpListener, Style),
}

/// Bound sockets, ready to [`Server::run`] or [`Server::spawn`].
pub struct Server {
    name: String,
    sockets: Vec<(u16, Socket)>,
    ipv6_note: Option<String>,
}

// === impl Server ===

impl Server {
    /// Binds every port on 0.0.0.0 and, where that works without conflict, on [::] as well.
    pub fn bind(cfg: &ServeConfig) -> Result<Server, ServeError> {
        Self::bind_on(IpAddr::V4(Ipv4Addr::UNSPECIFIED), cfg, true)
    }

    /// Binds every port on `ip` only (tests use 127.0.0.1 and port 0).
    pub fn bind_on(ip: IpAddr, cfg: &ServeConfig, try_ipv6: bool) -> Result<Server, ServeError> {
        if cfg.tcp.is_empty() && cfg.udp.is_empty() && cfg.http.is_empty() && cfg.api.is_empty() {
            return Err(ServeError::NothingToServe);
        }
        let mut sockets = Vec::new();
        let mut v6_errors = Vec::new();
        for (protocol, ports) in [(Protocol::Tcp, &cfg.tcp), (Protocol::Udp, &cfg.udp)] {
            for &port in ports {
                let addr = SocketAddr::new(ip, port);
                let bound = bind_one(protocol, addr).map_err(|source| ServeError::Bind {
                    protocol,
                    addr,
                    source,
                })?;
                let actual = local_port(&bound).unwrap_or(port);
                sockets.push((actual, bound));
                if try_ipv6 {
                    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), actual);
                    match bind_one(protocol, v6) {
                        Ok(s) => sockets.push((actual, s)),
                        Err(e) => v6_errors.push(format!("{protocol} {v6}: {e}")),
                    }
                }
            }
        }
        // HTTP on the family asked for only: the L7 tests are IPv4.
        let styles = cfg
            .http
            .iter()
            .map(|p| (*p, Style::Echo))
            .chain(cfg.api.iter().map(|p| (*p, Style::Api)));
        for (port, style) in styles {
            let addr = SocketAddr::new(ip, port);
            let l = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
                protocol: Protocol::Tcp,
                addr,
                source,
            })?;
            let actual = l.local_addr().map_or(port, |a| a.port());
            sockets.push((actual, Socket::Http(l, style)));
        }
        let ipv6_note = (!v6_errors.is_empty()).then(|| {
            format!(
                "[::] not bound ({}); IPv4 only",
                v6_errors.first().map(String::as_str).unwrap_or("")
            )
        });
        Ok(Server {
            name: cfg.name.clone(),
            sockets,
            ipv6_note,
        })
    }

    /// The addresses actually bound, with their protocol.
    pub fn local_addrs(&self) -> Vec<(Protocol, SocketAddr)> {
        self.sockets
            .iter()
            .filter_map(|(_, s)| match s {
                Socket::Tcp(l) | Socket::Http(l, _) => {
                    l.local_addr().ok().map(|a| (Protocol::Tcp, a))
                }
                Socket::Udp(u) => u.local_addr().ok().map(|a| (Protocol::Udp, a)),
            })
            .collect()
    }

    /// The one line logged when the server starts.
    pub fn start_line(&self) -> String {
        let addrs: Vec<String> = self
            .local_addrs()
            .iter()
            .map(|(p, a)| format!("{p} {a}"))
            .collect();
        let mut line = format!("{REPLY_PREFIX} {}: serving {}", self.name, addrs.join(", "));
        if let Some(note) = &self.ipv6_note {
            line.push_str("; ");
            line.push_str(note);
        }
        line
    }

    /// Starts one thread per socket and returns their handles (they run until the process ends).
    pub fn spawn(self) -> Vec<JoinHandle<()>> {
        let name = self.name;
        self.sockets
            .into_iter()
            .map(|(port, socket)| {
                let name = name.clone();
                thread::spawn(move || match socket {
                    Socket::Tcp(l) => tcp_loop(&name, port, &l),
                    Socket::Udp(u) => udp_loop(&name, port, &u),
                    Socket::Http(l, style) => crate::http::http_loop(&name, &l, style),
                })
            })
            .collect()
    }

    /// Logs the start line to stderr and serves in the foreground, forever.
    pub fn run(self) {
        eprintln!("{}", self.start_line());
        for handle in self.spawn() {
            let _ = handle.join();
        }
    }
}

fn bind_one(protocol: Protocol, addr: SocketAddr) -> io::Result<Socket> {
    match protocol {
        Protocol::Tcp => TcpListener::bind(addr).map(Socket::Tcp),
        Protocol::Udp => UdpSocket::bind(addr).map(Socket::Udp),
    }
}

fn local_port(s: &Socket) -> Option<u16> {
    match s {
        Socket::Tcp(l) | Socket::Http(l, _) => l.local_addr().ok().map(|a| a.port()),
        Socket::Udp(u) => u.local_addr().ok().map(|a| a.port()),
    }
}

/// The reply line for a protocol and port (without the TCP newline).
pub fn reply_line(name: &str, protocol: Protocol, port: u16) -> String {
    format!("{REPLY_PREFIX} {name} {protocol} {port}")
}

fn tcp_loop(name: &str, port: u16, listener: &TcpListener) {
    let reply = format!("{}\n", reply_line(name, Protocol::Tcp, port));
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let reply = reply.clone();
                thread::spawn(move || {
                    let _ = answer_tcp(stream, reply.as_bytes());
                });
            }
            // Out of descriptors or an aborted handshake: back off briefly and keep serving.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn answer_tcp(mut stream: TcpStream, reply: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + TCP_READ_WINDOW;
    let mut buf = [0u8; 512];
    // What arrived so far (up to a DNS message's worth), to recognise a DNS query.
    let mut got: Vec<u8> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if got.len() < 2 + 65_535 {
                    got.extend_from_slice(&buf[..n]);
                }
                if let Some(dns) = crate::dns_answer::answer_tcp(&got) {
                    stream.set_write_timeout(Some(TCP_READ_WINDOW))?;
                    stream.write_all(&dns)?;
                    return stream.flush();
                }
                if buf[..n].contains(&b'\n') {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    stream.set_write_timeout(Some(TCP_READ_WINDOW))?;
    stream.write_all(reply)?;
    stream.flush()
}

fn udp_loop(name: &str, port: u16, socket: &UdpSocket) {
    let reply = reply_line(name, Protocol::Udp, port);
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let _ = match crate::dns_answer::answer(&buf[..n]) {
                    Some(dns) => socket.send_to(&dns, peer),
                    None => socket.send_to(reply.as_bytes(), peer),
                };
            }
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}
