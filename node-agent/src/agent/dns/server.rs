//! Serving intercepted queries: a transparent UDP socket (each datagram's original destination
//! from `IP_RECVORIGDSTADDR`) and a transparent TCP listener (the accepted socket's local
//! address is the original destination), both on the proxy port that TPROXY steers to.
//!
//! ```text
//!  query ─▶ parse (hickory) ── malformed ─▶ FORMERR (or nothing without an id)
//!            │ view.egress_proto(client, server, udp|tcp): the client's DNS rules
//!            ├─ name not allowed ─▶ REFUSED
//!            └─ allowed ─▶ upstream = the original destination, from the client's address
//!                            (IP_TRANSPARENT) ─▶ answer's A/AAAA ─▶ Learner: the run loop
//!                            programs identities, policy entries and ipcache, and says done
//!                            ─▶ only then the answer is released to the pod
//! ```
//! Every query is one task: a slow upstream or a malformed packet holds up nobody else.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use super::decide::{QueryVerdict, name_verdict};
use super::flow::{DnsFlow, DnsVerdict, FlowLog};
use super::{Learned, Learner, Programmed};
use crate::agent::flows::{self, Enrichment};
use crate::agent::proxy::view::{L4Verdict, PROTO_TCP, PROTO_UDP};
use crate::agent::proxy::{FlowPeer, ProxyView};

/// A TCP client connection idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(30);
/// Longest the answer waits for the run loop to program its addresses.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(5);
/// An answer whose addresses are all programmed for at least this long more is released at
/// once (the run loop records the new TTL within a pass, ≤ 1 s).
const FAST_PATH_MARGIN: Duration = Duration::from_secs(3);

/// What every query task shares.
pub struct Shared {
    /// The node as the proxy sees it (swapped by the run loop).
    pub view: Arc<RwLock<Arc<ProxyView>>>,
    /// Query records.
    pub flows: Arc<FlowLog<DnsFlow>>,
    /// Where learned addresses go.
    pub learner: Learner,
    /// What the datapath already holds.
    pub programmed: Programmed,
    /// How long the upstream has to answer.
    pub upstream_timeout: Duration,
}

/// The transport a query came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }

    fn protocol(self) -> u8 {
        match self {
            Transport::Udp => PROTO_UDP,
            Transport::Tcp => PROTO_TCP,
        }
    }
}

// === UDP ===

/// Serves intercepted UDP queries until the socket fails.
pub async fn serve_udp(sock: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let r = sock
            .async_io(Interest::READABLE, || recv_with_dst(&sock, &mut buf))
            .await;
        match r {
            Ok((n, client, dst)) => {
                let query = buf[..n].to_vec();
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Some(answer) = handle(&shared, &query, client, dst, Transport::Udp).await
                        && let Err(e) = reply_udp(dst, client, &answer)
                    {
                        eprintln!("palisade agent: dns proxy: answering {client}: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("palisade agent: dns proxy: udp receive: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One datagram with its sender and original destination.
fn recv_with_dst(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg};
    let mut cmsg = nix::cmsg_space!(nix::libc::sockaddr_in);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let n = msg.bytes;
    let client = msg
        .address
        .map(|a| SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port())))
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let mut dst = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::Ipv4OrigDstAddr(a) = c {
            dst = Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )));
        }
    }
    let dst = dst.ok_or_else(|| io::Error::other("datagram without its original destination"))?;
    Ok((n, client, dst))
}

/// Sends an answer to the client from the server's address and port: a transparent socket
/// bound there and connected to the client, so it matches no other client's packets.
fn reply_udp(from: SocketAddr, to: SocketAddr, answer: &[u8]) -> io::Result<()> {
    let s = Socket::new(Domain::for_address(from), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    transparent(&s, from)?;
    s.bind(&from.into())?;
    s.connect(&to.into())?;
    s.send(answer)?;
    Ok(())
}

fn transparent(s: &Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.is_ipv4() {
        s.set_ip_transparent_v4(true)
    } else {
        s.set_ip_transparent_v6(true)
    }
}

/// Asks the original destination over UDP from the client's address; the first answer with
/// the query's id.
async fn upstream_udp(
    client: IpAddr,
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let s = Socket::new(
        Domain::for_address(server),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    transparent(&s, server)?;
    // The mark tells the server's datapath this traffic went through the proxy.
    s.set_mark(palisade_datapath_common::endpoint::PROXY_MARK)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(client, 0).into())?;
    let sock = UdpSocket::from_std(s.into())?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream did not answer"))??;
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

// === TCP ===

/// Serves intercepted TCP connections (length-prefixed messages, RFC 7766).
pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, client)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = tcp_connection(stream, client, &shared).await
                        && e.kind() != io::ErrorKind::UnexpectedEof
                    {
                        eprintln!("palisade agent: dns proxy: tcp {client}: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("palisade agent: dns proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn tcp_connection(
    mut stream: TcpStream,
    client: SocketAddr,
    shared: &Shared,
) -> io::Result<()> {
    // TPROXY keeps the destination: the accepted socket's local address is the server asked.
    let dst = stream.local_addr()?;
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        let mut query = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "query not sent in time"))??;
        let Some(answer) = handle(shared, &query, client, dst, Transport::Tcp).await else {
            return Ok(());
        };
        let len = u16::try_from(answer.len()).map_err(|_| io::Error::other("answer too long"))?;
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&answer);
        stream.write_all(&out).await?;
    }
}

/// Asks the original destination over TCP from the client's address.
async fn upstream_tcp(
    client: IpAddr,
    server: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let sock = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    {
        let s = SockRef::from(&sock);
        if server.is_ipv4() {
            s.set_ip_transparent_v4(true)?;
        } else {
            s.set_ip_transparent_v6(true)?;
        }
        s.set_mark(palisade_datapath_common::endpoint::PROXY_MARK)?;
    }
    sock.bind(SocketAddr::new(client, 0))?;
    let work = async {
        let mut stream = sock.connect(server).await?;
        let len = u16::try_from(query.len()).map_err(|_| io::Error::other("query too long"))?;
        let mut out = Vec::with_capacity(query.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(query);
        stream.write_all(&out).await?;
        let n = stream.read_u16().await?;
        let mut answer = vec![0u8; usize::from(n)];
        stream.read_exact(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream did not answer"))?
}

// === one query ===

/// Decides, forwards and records one query; the bytes to answer with (`None`: no answer).
async fn handle(
    shared: &Shared,
    query: &[u8],
    client: SocketAddr,
    dst: SocketAddr,
    transport: Transport,
) -> Option<Vec<u8>> {
    let start = Instant::now();
    let (source, destination, decision) = {
        let view = shared.view.read().unwrap_or_else(|p| p.into_inner());
        let peer = |a: SocketAddr| FlowPeer {
            ip: a.ip(),
            port: a.port(),
            identity: view.identity_of(a.ip()),
            pod: view
                .peers
                .get(&a.ip())
                .and_then(|p| p.name.as_deref().map(str::to_owned)),
        };
        let decision = match view.egress_proto(client.ip(), dst, transport.protocol()) {
            Some((_, L4Verdict::Redirect(sets))) => Some(sets),
            _ => None,
        };
        (peer(client), peer(dst), decision)
    };
    let mut flow = DnsFlow {
        time_ms: crate::agent::metrics::now_ms(),
        source,
        destination,
        transport: transport.name(),
        query: String::new(),
        qtypes: Vec::new(),
        rcode: 0,
        ips: Vec::new(),
        ttl: 0,
        cnames: Vec::new(),
        verdict: DnsVerdict::Malformed,
        latency_us: 0,
    };
    let msg = match Message::from_vec(query) {
        Ok(m) if m.metadata.message_type == MessageType::Query && m.queries.len() == 1 => m,
        _ => {
            let answer = formerr(query);
            flow.rcode = 1;
            finish(shared, flow, start);
            return answer;
        }
    };
    let q = &msg.queries[0];
    let name = q.name().to_lowercase().to_ascii();
    flow.query = if name.ends_with('.') {
        name.clone()
    } else {
        format!("{name}.")
    };
    flow.qtypes = vec![q.query_type().to_string()];
    let allowed = decision
        .as_deref()
        .is_some_and(|sets| name_verdict(sets, &name) == QueryVerdict::Forward);
    if !allowed {
        flow.verdict = DnsVerdict::Refused;
        flow.rcode = u16::from(ResponseCode::Refused);
        let answer = error_answer(&msg, ResponseCode::Refused);
        finish(shared, flow, start);
        return answer;
    }
    let upstream = match transport {
        Transport::Udp => upstream_udp(client.ip(), dst, query, shared.upstream_timeout).await,
        Transport::Tcp => upstream_tcp(client.ip(), dst, query, shared.upstream_timeout).await,
    };
    let bytes = match upstream {
        Ok(b) => b,
        Err(e) => {
            eprintln!("palisade agent: dns proxy: upstream {dst} for `{name}`: {e}");
            flow.verdict = DnsVerdict::Error;
            flow.rcode = u16::from(ResponseCode::ServFail);
            let answer = error_answer(&msg, ResponseCode::ServFail);
            finish(shared, flow, start);
            return answer;
        }
    };
    let Ok(resp) = Message::from_vec(&bytes) else {
        // The server's answer is unreadable: nothing to learn, and not released either (it
        // could carry addresses the datapath was never told about).
        flow.verdict = DnsVerdict::Error;
        flow.rcode = u16::from(ResponseCode::ServFail);
        let answer = error_answer(&msg, ResponseCode::ServFail);
        finish(shared, flow, start);
        return answer;
    };
    flow.rcode = u16::from(resp.metadata.response_code);
    let mut learned = Vec::new();
    let mut min_ttl = u32::MAX;
    for r in &resp.answers {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            RData::CNAME(c) => {
                flow.cnames.push(c.0.to_lowercase().to_ascii());
                continue;
            }
            _ => continue,
        };
        let owner = r.name.to_lowercase().to_ascii();
        // Cilium's semantics: the addresses belong to the name asked (whatever CNAMEs led to
        // them) and to the record's own name.
        let names: BTreeSet<String> = [name.clone(), owner].into_iter().collect();
        for n in names {
            learned.push(Learned {
                name: n,
                ip,
                ttl: r.ttl,
                client: client.ip(),
            });
        }
        if !flow.ips.contains(&ip) {
            flow.ips.push(ip);
        }
        min_ttl = min_ttl.min(r.ttl);
    }
    flow.ttl = if flow.ips.is_empty() { 0 } else { min_ttl };
    let held = {
        let p = shared.programmed.read().unwrap_or_else(|p| p.into_inner());
        let soon = Instant::now() + FAST_PATH_MARGIN;
        learned
            .iter()
            .all(|l| p.get(&(l.name.clone(), l.ip)).is_some_and(|t| *t > soon))
    };
    if held {
        // Already allowed, and for a while yet: only the TTL is news, recorded in the
        // background.
        let learner = shared.learner.clone();
        tokio::spawn(async move {
            let _ = learner.learn(learned).await;
        });
    } else if !learned.is_empty() {
        // The answer waits until the datapath allows its addresses: the pod's first
        // connection must not race the policy.
        match tokio::time::timeout(PROGRAM_TIMEOUT, shared.learner.learn(learned)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("palisade agent: dns proxy: programming `{name}`: {e}"),
            Err(_) => eprintln!(
                "palisade agent: dns proxy: programming `{name}` took over {PROGRAM_TIMEOUT:?}; answer released"
            ),
        }
    }
    flow.verdict = DnsVerdict::Forwarded;
    finish(shared, flow, start);
    Some(bytes)
}

fn finish(shared: &Shared, mut flow: DnsFlow, start: Instant) {
    flow.latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    // Hubble's metrics count the flow the query becomes (naming does not enter the labels);
    // the agent's sink does it when it builds that flow for the ring.
    shared.flows.push(flow, |f| {
        flows::count_l7(&flows::dns_flow(f, &Enrichment::default()));
    });
}

/// An answer with only the question and an error code (REFUSED, SERVFAIL).
fn error_answer(query: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(query.queries.clone());
    m.to_vec().ok()
}

/// FORMERR for bytes that are no readable query: the header with QR set and rcode 1, counts
/// zero. Nothing for fewer than the 12 header bytes (no id to answer to) or for a response.
fn formerr(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let mut h = vec![0u8; 12];
    h[0] = query[0];
    h[1] = query[1];
    h[2] = 0x80 | (query[2] & 0x79); // QR, the opcode and RD of the query
    h[3] = 0x01; // FORMERR
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formerr_keeps_the_id_and_needs_a_header() {
        let q = [
            0xab, 0xcd, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0xde, 0xad,
        ];
        let a = formerr(&q).expect("answer");
        assert_eq!(a.len(), 12);
        assert_eq!(&a[..2], &[0xab, 0xcd]);
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!(a[3] & 0x0f, 1, "FORMERR");
        assert_eq!(formerr(&q[..11]), None);
        let mut resp = q;
        resp[2] |= 0x80;
        assert_eq!(formerr(&resp), None, "never answer a response");
    }

    #[test]
    fn refused_answers_carry_the_question() {
        let mut q = Message::query();
        q.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii("other.test.").unwrap(),
            hickory_proto::rr::RecordType::A,
        ));
        q.metadata.recursion_desired = true;
        let bytes = error_answer(&q, ResponseCode::Refused).expect("encoded");
        let a = Message::from_vec(&bytes).expect("decodes");
        assert_eq!(a.metadata.id, q.metadata.id);
        assert_eq!(a.metadata.message_type, MessageType::Response);
        assert_eq!(a.metadata.response_code, ResponseCode::Refused);
        assert_eq!(a.queries, q.queries);
        assert!(a.answers.is_empty());
    }
}
