//! The agent's link to the control plane: two threads that do every network round trip, so the
//! run loop (which owns the engine and the maps) never waits on the network except to allocate
//! the identity of a label set it has never seen.
//!
//! ```text
//!   follower thread ── register node, list, then stream the change feed ──▶ Update ──┐
//!                                                                           ├─▶ run loop (woken
//!   publisher thread ◀── Publish (endpoints, acks) + heartbeats ◀───────────┘    by the wake pipe)
//! ```
//!
//! The feed is the gRPC stream `WatchService.Watch` when the members' gRPC addresses are given
//! ([`grpc_feed`]), else the REST long poll `GET /v1/watch`; both resume from the last revision
//! received, on any member.
//!
//! The control plane being unreachable is an ordinary state, not an error: the follower retries
//! with backoff, the publisher keeps what it could not send and retries, and the run loop keeps
//! enforcing what it last applied (never fails open).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use palisade_api::controlplane::{
    Endpoint, IdBlock, Identity, NodeRecord, NodeRegistration, PolicyRecord,
};
use palisade_cp_client::{Client, ClientConfig, ClientError, WatchBatch};

use grpc_feed::{FeedError, GrpcFeed};

mod grpc_feed;

/// How long one watch long-poll waits for a change.
const WATCH_POLL: Duration = Duration::from_secs(10);
/// Changes per watch answer.
const WATCH_LIMIT: usize = 1_000;
/// Longest pause between attempts while the control plane is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the node's lease is renewed (the control plane's default lease is 20 s).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// What the follower hands the run loop.
#[derive(Debug)]
pub enum Update {
    /// The node is registered; its record (pod CIDR) as the control plane keeps it.
    Registered(NodeRecord),
    /// The whole state, after connecting or when the feed no longer reaches back far enough.
    Snapshot(Box<Snapshot>),
    /// Changes since the previous update.
    Changes(WatchBatch),
    /// The control plane could not be reached or refused; the loop keeps what it has.
    Unreachable(String),
    /// The node's leased id block.
    IdBlock(IdBlock),
    /// A binding made from the block was committed; `canonical` is the label set's identity
    /// (another id when the set already had one: the local id is then an alias to move off).
    Bound {
        /// The id bound locally.
        id: u32,
        /// The canonical identity.
        canonical: Identity,
    },
    /// A binding made from the block was refused (e.g. the block is no longer the node's).
    BindRefused {
        /// The id bound locally.
        id: u32,
        /// Its labels.
        labels: Vec<String>,
        /// Why.
        reason: String,
    },
}

/// Everything an agent follows, read after the change revision it resumes from.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The change revision the watch continues from.
    pub revision: u64,
    /// The policy revision the policy list is at.
    pub policy_revision: u64,
    /// Every identity.
    pub identities: Vec<Identity>,
    /// Every endpoint.
    pub endpoints: Vec<Endpoint>,
    /// Every policy object.
    pub policies: Vec<PolicyRecord>,
    /// Every node.
    pub nodes: Vec<NodeRecord>,
}

/// A write the agent owes the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// This node hosts an endpoint.
    Endpoint(Endpoint),
    /// This node no longer hosts the endpoint at that address.
    EndpointGone(IpAddr),
    /// This node enforces that policy revision.
    Ack(u64),
    /// The node's registration changed (a rotated WireGuard key): register it again.
    Register,
    /// Lease an id block (a fresh one with `replace`, the current one being nearly used up).
    Lease {
        /// Replace the node's block.
        replace: bool,
    },
    /// Commit a binding made from the block (sent before any endpoint that uses it).
    Bind {
        /// The id.
        id: u32,
        /// Its labels.
        labels: Vec<String>,
    },
}

/// Ids per leased block: enough for a node's new label sets between two round trips.
pub const ID_BLOCK: u32 = 256;
/// How long a pod start waits for the control plane to allocate a new label set's identity
/// before taking one from the node's block instead (per member tried; connection refusals
/// fail at once).
pub const ALLOCATE_BUDGET: Duration = Duration::from_millis(300);

/// The run loop's handle on the two threads.
pub struct Link {
    client: Arc<Client>,
    /// The same members with [`ALLOCATE_BUDGET`] as timeout, for allocations a pod waits on.
    quick: Client,
    /// What the node registers as; shared with both threads so a new key is what they send.
    registration: Arc<Mutex<NodeRegistration>>,
    updates: Receiver<Update>,
    wake: UnixStream,
    publish: Sender<Publish>,
}

impl Link {
    /// Starts the follower and the publisher for `registration`'s node; the follower streams
    /// the change feed from `grpc` (the members' gRPC URLs) when given, else long-polls REST.
    pub fn start(
        config: ClientConfig,
        grpc: &[String],
        registration: NodeRegistration,
    ) -> Result<Link, String> {
        let feed = if grpc.is_empty() {
            None
        } else {
            Some(GrpcFeed::new(
                grpc,
                config.tls.as_ref(),
                config.token.as_deref(),
            )?)
        };
        let quick = Client::new(config.clone().with_timeout(ALLOCATE_BUDGET))
            .map_err(|e| format!("control-plane client: {e}"))?;
        let client =
            Arc::new(Client::new(config).map_err(|e| format!("control-plane client: {e}"))?);
        let (wake, wake_tx) = UnixStream::pair().map_err(|e| format!("wake pipe: {e}"))?;
        wake.set_nonblocking(true)
            .map_err(|e| format!("wake pipe: {e}"))?;
        let (tx, updates) = mpsc::channel();
        let (publish, rx) = mpsc::channel();
        let node = registration.name.clone();
        let registration = Arc::new(Mutex::new(registration));
        let answers = tx.clone();
        let answers_wake = wake_tx.try_clone().map_err(|e| format!("wake pipe: {e}"))?;
        let follower = Follower {
            client: client.clone(),
            feed,
            registration: registration.clone(),
            tx,
            wake: wake_tx,
        };
        thread::Builder::new()
            .name("cp-follower".into())
            .spawn(move || follower.run())
            .map_err(|e| format!("starting the follower thread: {e}"))?;
        let publisher = Publisher {
            client: client.clone(),
            node,
            registration: registration.clone(),
            rx,
            tx: answers,
            wake: answers_wake,
        };
        thread::Builder::new()
            .name("cp-publisher".into())
            .spawn(move || publisher.run())
            .map_err(|e| format!("starting the publisher thread: {e}"))?;
        Ok(Link {
            client,
            quick,
            registration,
            updates,
            wake,
            publish,
        })
    }

    /// Readable when updates are waiting (for the run loop's poll).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Takes every waiting update.
    pub fn drain(&self) -> Vec<Update> {
        let mut buf = [0u8; 256];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.updates.try_iter().collect()
    }

    /// Queues a write (sent in order, retried until it lands).
    pub fn publish(&self, p: Publish) {
        let _ = self.publish.send(p);
    }

    /// Publishes a new WireGuard key (after a rotation): every later registration carries it,
    /// and the publisher registers the node again now (retried until it lands).
    pub fn set_wireguard_key(&self, public_key: String, epoch: u64) {
        {
            let mut reg = lock(&self.registration);
            reg.wireguard_public_key = public_key;
            reg.wireguard_epoch = epoch;
        }
        let _ = self.publish.send(Publish::Register);
    }

    /// Like [`Link::allocate`], within [`ALLOCATE_BUDGET`] per member.
    pub fn allocate_quickly(&self, labels: &[String]) -> Result<Identity, ClientError> {
        self.quick.allocate_identity(labels)
    }

    /// The identity of a label set, allocated by the control plane (idempotent: the same labels
    /// always get the same id). The one round trip a pod start can wait on.
    pub fn allocate(&self, labels: &[String]) -> Result<Identity, ClientError> {
        self.client.allocate_identity(labels)
    }
}

struct Follower {
    client: Arc<Client>,
    /// The gRPC change stream, when the members' gRPC addresses are known.
    feed: Option<GrpcFeed>,
    registration: Arc<Mutex<NodeRegistration>>,
    tx: Sender<Update>,
    wake: UnixStream,
}

impl Follower {
    fn send(&self, u: Update) -> bool {
        let ok = self.tx.send(u).is_ok();
        let _ = (&self.wake).write(&[1]);
        ok
    }

    fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut registered = false;
        let node = lock(&self.registration).name.clone();
        loop {
            if !registered {
                let registration = lock(&self.registration).clone();
                match self.client.register_node(&registration) {
                    Ok(rec) => {
                        registered = true;
                        if !self.send(Update::Registered(rec)) {
                            return;
                        }
                    }
                    Err(e) => {
                        if !self.send(Update::Unreachable(format!("registering the node: {e}"))) {
                            return;
                        }
                        backoff.wait();
                        continue;
                    }
                }
            }
            let snapshot = match self.snapshot() {
                Ok(s) => s,
                Err(e) => {
                    if !self.send(Update::Unreachable(format!("listing: {e}"))) {
                        return;
                    }
                    backoff.wait();
                    continue;
                }
            };
            backoff.reset();
            let from = snapshot.revision;
            if !self.send(Update::Snapshot(Box::new(snapshot))) {
                return;
            }
            let next = match self.feed.take() {
                Some(mut feed) => {
                    let next = self.stream(&mut feed, from, &node, &mut backoff);
                    self.feed = Some(feed);
                    next
                }
                None => self.long_poll(from, &node, &mut backoff),
            };
            match next {
                Next::Stop => return,
                Next::Relist => {}
                Next::Register => registered = false,
            }
        }
    }

    /// Hands a batch to the run loop; what the follower does next.
    fn deliver(&self, batch: WatchBatch, node: &str) -> Option<Next> {
        // A node record of ours that vanished means we were removed: register again before
        // anything else is published.
        let removed = batch
            .changes
            .iter()
            .any(|c| c.kind == "node" && c.key == node && c.value.is_none());
        if !self.send(Update::Changes(batch)) {
            return Some(Next::Stop);
        }
        removed.then_some(Next::Register)
    }

    /// Follows the REST long poll from `from` until a re-list is needed.
    fn long_poll(&self, mut from: u64, node: &str, backoff: &mut Backoff) -> Next {
        loop {
            match self.client.watch(from, WATCH_POLL, WATCH_LIMIT) {
                Ok(batch) => {
                    backoff.reset();
                    let Some(last) = batch.changes.last() else {
                        continue;
                    };
                    from = last.revision;
                    if let Some(next) = self.deliver(batch, node) {
                        return next;
                    }
                }
                // The member serving us no longer keeps changes that old: list again.
                Err(ClientError::Compacted { .. }) => return Next::Relist,
                Err(e) => {
                    if !self.send(Update::Unreachable(format!("watching: {e}"))) {
                        return Next::Stop;
                    }
                    backoff.wait();
                }
            }
        }
    }

    /// Follows the gRPC stream from `from` (reopened on any member after a failure) until a
    /// re-list is needed.
    fn stream(
        &self,
        feed: &mut GrpcFeed,
        mut from: u64,
        node: &str,
        backoff: &mut Backoff,
    ) -> Next {
        loop {
            let mut stream = match feed.open(from) {
                Ok(s) => s,
                Err(FeedError::Compacted) => return Next::Relist,
                Err(FeedError::Failed(e)) => {
                    if !self.send(Update::Unreachable(format!("watching: {e}"))) {
                        return Next::Stop;
                    }
                    backoff.wait();
                    continue;
                }
            };
            backoff.reset();
            // Reachable again: an empty batch tells the run loop so (policy revision 0 moves
            // nothing: the loop keeps the highest it has seen).
            let connected = WatchBatch {
                revision: from,
                policy_revision: 0,
                changes: Vec::new(),
            };
            if !self.send(Update::Changes(connected)) {
                return Next::Stop;
            }
            loop {
                match feed.next_batch(&mut stream, WATCH_LIMIT) {
                    Ok(changes) => {
                        let Some(last) = changes.last() else {
                            continue;
                        };
                        from = last.revision;
                        // Every change up to the last one applied: its policy revision is the
                        // one the agent enforces after this batch.
                        let batch = WatchBatch {
                            revision: last.revision,
                            policy_revision: last.policy_revision,
                            changes,
                        };
                        if let Some(next) = self.deliver(batch, node) {
                            return next;
                        }
                    }
                    Err(FeedError::Compacted) => return Next::Relist,
                    Err(FeedError::Failed(e)) => {
                        if !self.send(Update::Unreachable(format!("watching: {e}"))) {
                            return Next::Stop;
                        }
                        backoff.wait();
                        break;
                    }
                }
            }
        }
    }

    /// Reads the change revision first, then the lists: changes between the two are replayed by
    /// the watch (each carries the whole object, so a replay is harmless).
    fn snapshot(&self) -> Result<Snapshot, ClientError> {
        let revision = self.client.watch_revision()?;
        let identities = self.client.list_identities()?;
        let endpoints = self.client.list_endpoints()?;
        let (policy_revision, policies) = self.client.list_policies()?;
        let nodes = self
            .client
            .list_nodes()?
            .into_iter()
            .filter_map(|v| serde_json::from_value::<NodeRecord>(v).ok())
            .collect();
        Ok(Snapshot {
            revision,
            policy_revision,
            identities,
            endpoints,
            policies,
            nodes,
        })
    }
}

/// What the follower does once a feed loop returns.
enum Next {
    /// The run loop is gone: stop.
    Stop,
    /// List again (the member no longer holds the changes to resume from).
    Relist,
    /// This node's record was removed: register again, then list.
    Register,
}

/// Sends what the agent owes the control plane: the latest desired state per endpoint address
/// and the highest acknowledged revision, retried until each lands; plus heartbeats.
struct Publisher {
    client: Arc<Client>,
    node: String,
    registration: Arc<Mutex<NodeRegistration>>,
    rx: Receiver<Publish>,
    /// Answers the run loop needs (blocks, committed bindings) go back with the updates.
    tx: Sender<Update>,
    wake: UnixStream,
}

impl Publisher {
    fn answer(&self, u: Update) {
        let _ = self.tx.send(u);
        let _ = (&self.wake).write(&[1]);
    }

    fn run(self) {
        let mut pending = Pending::default();
        let mut next_heartbeat = Instant::now() + HEARTBEAT;
        let mut backoff = Backoff::default();
        let mut failing = false;
        loop {
            let wait = if failing {
                backoff.next()
            } else {
                next_heartbeat.saturating_duration_since(Instant::now())
            };
            match self.rx.recv_timeout(wait) {
                Ok(p) => pending.merge(p),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for p in self.rx.try_iter() {
                pending.merge(p);
            }
            failing = false;
            if Instant::now() >= next_heartbeat {
                if let Err(e) = self.client.heartbeat(&self.node) {
                    eprintln!("palisade agent: heartbeat: {e}");
                    failing = true;
                }
                next_heartbeat = Instant::now() + HEARTBEAT;
            }
            if pending.register {
                // A key the peers must learn before the old one expires: first in line.
                let registration = lock(&self.registration).clone();
                match self.client.register_node(&registration) {
                    Ok(_) => pending.register = false,
                    Err(e) => {
                        eprintln!(
                            "palisade agent: publishing WireGuard key epoch {}: {e} (retrying)",
                            registration.wireguard_epoch
                        );
                        failing = true;
                    }
                }
            }
            if let (Some(replace), false) = (pending.lease, failing) {
                match self.client.lease_id_block(&self.node, ID_BLOCK, replace) {
                    Ok(block) => {
                        pending.lease = None;
                        self.answer(Update::IdBlock(block));
                    }
                    Err(e) if is_retryable(&e) => failing = true,
                    Err(e) => {
                        eprintln!("palisade agent: leasing an id block: {e}");
                        pending.lease = None;
                    }
                }
            }
            // Bindings before endpoints: an endpoint may only name a committed identity.
            let binds: Vec<(u32, Vec<String>)> = if failing {
                Vec::new()
            } else {
                pending.binds.iter().map(|(k, v)| (*k, v.clone())).collect()
            };
            for (id, labels) in binds {
                match self.client.bind_identity(&self.node, id, &labels) {
                    Ok(canonical) => {
                        pending.binds.remove(&id);
                        self.answer(Update::Bound { id, canonical });
                    }
                    Err(e) if is_retryable(&e) => {
                        failing = true;
                        break;
                    }
                    Err(e) => {
                        pending.binds.remove(&id);
                        self.answer(Update::BindRefused {
                            id,
                            labels,
                            reason: e.to_string(),
                        });
                    }
                }
            }
            if failing {
                continue;
            }
            let endpoints = &mut pending.endpoints;
            let queued: Vec<(IpAddr, Option<Endpoint>)> =
                endpoints.iter().map(|(k, v)| (*k, v.clone())).collect();
            for (ip, desired) in queued {
                let r = match &desired {
                    Some(ep) => self.client.put_endpoint(ep).map(|_| ()),
                    None => self.client.delete_endpoint(ip).map(|_| ()),
                };
                match r {
                    Ok(()) => {
                        // Only if nothing newer was queued for this address meanwhile.
                        if endpoints.get(&ip) == Some(&desired) {
                            endpoints.remove(&ip);
                        }
                    }
                    Err(e) if is_retryable(&e) => {
                        failing = true;
                        break;
                    }
                    Err(e) => {
                        eprintln!("palisade agent: publishing endpoint {ip}: {e} (dropped)");
                        endpoints.remove(&ip);
                    }
                }
            }
            if let (Some(rev), false) = (pending.ack, failing) {
                match self.client.ack(&self.node, rev) {
                    Ok(_) => pending.ack = None,
                    Err(e) if is_retryable(&e) => failing = true,
                    Err(e) => {
                        eprintln!("palisade agent: acknowledging revision {rev}: {e}");
                        failing = true;
                    }
                }
            }
            if !failing {
                backoff.reset();
            }
        }
    }
}

/// Writes not yet accepted by the control plane, merged so only the latest state is sent.
#[derive(Debug, Default)]
struct Pending {
    /// Per address: the endpoint to put, or `None` to delete it.
    endpoints: BTreeMap<IpAddr, Option<Endpoint>>,
    /// The highest policy revision to acknowledge.
    ack: Option<u64>,
    /// The node must be registered again (its key changed).
    register: bool,
    /// An id block to lease (`Some(replace)`).
    lease: Option<bool>,
    /// Bindings to commit, by id.
    binds: BTreeMap<u32, Vec<String>>,
}

impl Pending {
    fn merge(&mut self, p: Publish) {
        match p {
            Publish::Endpoint(ep) => {
                self.endpoints.insert(ep.ip, Some(ep));
            }
            Publish::EndpointGone(ip) => {
                self.endpoints.insert(ip, None);
            }
            Publish::Ack(rev) => self.ack = Some(self.ack.map_or(rev, |a| a.max(rev))),
            Publish::Register => self.register = true,
            Publish::Lease { replace } => {
                self.lease = Some(self.lease.unwrap_or(false) || replace);
            }
            Publish::Bind { id, labels } => {
                self.binds.insert(id, labels);
            }
        }
    }
}

/// Locks the shared registration; a panicked holder left a plain record, still usable.
fn lock(m: &Mutex<NodeRegistration>) -> std::sync::MutexGuard<'_, NodeRegistration> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a failed write may succeed later as it is: unreachable, no leader, timeouts, and a
/// node not (yet) registered.
fn is_retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Api { status, .. } => matches!(status, 409 | 429 | 502 | 503 | 504),
        _ => true,
    }
}

/// Exponential backoff from 100 ms to [`MAX_BACKOFF`].
#[derive(Debug, Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = Duration::from_millis(100u64 << self.0.min(6)).min(MAX_BACKOFF);
        self.0 = self.0.saturating_add(1);
        d
    }
    fn wait(&mut self) {
        thread::sleep(self.next());
    }
    fn reset(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_desired_state_per_address_and_the_highest_ack_win() {
        let mut p = Pending::default();
        let ip: IpAddr = "10.200.1.10".parse().expect("ip");
        let ep = Endpoint {
            ip,
            identity: 300,
            node: "n1".into(),
            ports: vec![],
        };
        p.merge(Publish::Endpoint(ep));
        p.merge(Publish::EndpointGone(ip));
        p.merge(Publish::Ack(7));
        p.merge(Publish::Ack(5));
        assert_eq!(
            p.endpoints.get(&ip),
            Some(&None),
            "the delete replaces the put"
        );
        assert_eq!(p.ack, Some(7), "acks only move forward");
        assert!(!p.register);
        p.merge(Publish::Register);
        assert!(p.register, "a new key is registered again");
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::default();
        let first = b.next();
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert_eq!(first, Duration::from_millis(100));
        assert_eq!(waits.last().copied(), Some(MAX_BACKOFF));
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }
}
