//! Node-to-node Raft transport: one TCP connection per node pair carries
//! every group's messages, many per write (frames queued meanwhile are
//! flushed together), with TCP_NODELAY and reconnection on the next send.
//!
//! A frame is a big-endian `u32` length and a bincode message (the
//! protocol's codec). Requests carry an id; replies come back on the same
//! connection in any order. A [`LinkFilter`] drops messages between chosen
//! nodes, for partition tests.

use crate::types::{GroupId, NodeId, Raft, SnapshotMeta, TypeConfig, Vote};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use troupe_protocol::codec;

/// Largest frame accepted (a snapshot travels in one).
const MAX_FRAME: usize = 64 << 20;

/// A request to a peer's group.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Who leads the group and who is in it, as the peer sees it.
    Membership,
}

/// A group's membership as one replica sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// The leader the replica knows.
    pub leader: Option<NodeId>,
    /// Whether the replica is that leader.
    pub leading: bool,
    /// Voters (of both configs while a change is joint).
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// A membership change is half done (joint consensus).
    pub joint: bool,
}

impl GroupView {
    /// The view of `raft`'s group here.
    pub fn of(raft: &Raft) -> Self {
        use openraft::async_runtime::WatchReceiver;
        let metrics = raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        Self {
            leader: metrics.current_leader,
            leading: metrics.current_leader == Some(metrics.id)
                && metrics.state == openraft::ServerState::Leader,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            joint: membership.get_joint_config().len() > 1,
        }
    }
}

/// A peer group's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    Membership(GroupView),
}

#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    /// First frame of a connection: who is calling, and its data dir's incarnation.
    Hello {
        from: NodeId,
        incarnation: u64,
        /// Digest of the cluster's cookie (0: none).
        cluster: u64,
    },
    /// The answer to a hello: the callee's incarnation and cookie digest
    /// (the caller checks the callee belongs to its cluster too).
    Welcome {
        incarnation: u64,
        cluster: u64,
    },
    /// The answer to a hello from a member that came back with another data dir.
    Refused {
        reason: String,
    },
    Request {
        id: u64,
        group: GroupId,
        rpc: Rpc,
    },
    Response {
        id: u64,
        reply: Result<Reply, String>,
    },
}

/// Links to drop messages on, for partition tests: `(from, to)` pairs.
#[derive(Clone, Default)]
pub struct LinkFilter {
    cut: Arc<RwLock<HashSet<(NodeId, NodeId)>>>,
}

impl LinkFilter {
    /// Drops every message from `from` to `to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.cut.write().expect("filter lock").insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&self, a: NodeId, b: NodeId) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.cut.write().expect("filter lock").clear();
    }

    /// Whether messages from `from` to `to` are dropped.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.read().expect("filter lock").contains(&(from, to))
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer could not be reached (or the link is cut).
    #[error("node {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// The peer answered with an error.
    #[error("node {0} failed the request: {1}")]
    Remote(NodeId, String),
}

type Waiting = oneshot::Sender<Result<Reply, SendError>>;

/// A request queued for a peer's connection.
type Queued = (u64, GroupId, Rpc, Waiting);

/// Who this node is, and the incarnations (data dirs) of the members it
/// has talked to: a member whose data dir was lost comes back with another
/// one and is refused, so that it cannot vote again with no memory of its
/// votes.
pub struct Identity {
    /// This data dir's incarnation.
    pub incarnation: u64,
    /// Digest of the cluster's cookie (0: none): members of another
    /// cluster, or started with another cookie, are refused.
    cluster: u64,
    store: troupe_storage::Store,
}

impl Identity {
    /// The identity kept in `store`, in the cluster of `cookie`.
    pub fn new(store: troupe_storage::Store, cookie: Option<&str>) -> std::io::Result<Self> {
        let (incarnation, _) = store.incarnation().map_err(std::io::Error::other)?;
        let cluster = cookie.map_or(0, |c| troupe_protocol::stable_hash(c.as_bytes()));
        Ok(Self {
            incarnation,
            cluster,
            store,
        })
    }

    /// Accepts `peer` with `incarnation` if it is the first seen or the same.
    fn check(&self, peer: NodeId, incarnation: u64) -> Result<(), String> {
        match self.store.peer_incarnation(peer) {
            Ok(Some(known)) if known != incarnation => Err(format!(
                "node {peer} came back with another data dir (incarnation {incarnation:x}, \
                 known as {known:x}); a member that lost its data must be replaced, not \
                 rejoined: start it on its original data dir, or replace it (docs/cluster.md)"
            )),
            Ok(Some(_)) => Ok(()),
            Ok(None) => self
                .store
                .set_peer_incarnation(peer, incarnation)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// How a handshake with a peer went.
#[derive(Debug)]
pub enum Handshake {
    /// The peer knows this node as it is.
    Welcome,
    /// The peer refuses this node (or this node refuses the peer).
    Refused(String),
    /// No answer.
    Unreachable(String),
}

/// Says hello on `stream` and reads the answer.
async fn hello(stream: &mut TcpStream, me: NodeId, to: NodeId, identity: &Identity) -> Handshake {
    let greeting = Frame::Hello {
        from: me,
        incarnation: identity.incarnation,
        cluster: identity.cluster,
    };
    if let Err(e) = write_frame(stream, &greeting).await {
        return Handshake::Unreachable(e.to_string());
    }
    match tokio::time::timeout(Duration::from_secs(2), read_frame(stream)).await {
        Ok(Ok(Frame::Welcome { cluster, .. })) if cluster != identity.cluster => {
            Handshake::Refused(format!(
                "node {to} answers with another cluster cookie; every member must be started \
                 with the cluster's cookie"
            ))
        }
        Ok(Ok(Frame::Welcome { incarnation, .. })) => match identity.check(to, incarnation) {
            Ok(()) => Handshake::Welcome,
            Err(reason) => Handshake::Refused(reason),
        },
        Ok(Ok(Frame::Refused { reason })) => Handshake::Refused(reason),
        Ok(Ok(other)) => Handshake::Unreachable(format!("unexpected answer {other:?}")),
        Ok(Err(e)) => Handshake::Unreachable(e.to_string()),
        Err(_) => Handshake::Unreachable("no answer to hello".into()),
    }
}

/// This node's end of the transport: outbound peers and the groups that
/// answer inbound requests.
pub struct Transport {
    me: NodeId,
    identity: Identity,
    /// Peers refused (either way), with why.
    refused: RwLock<HashMap<NodeId, String>>,
    /// Members removed from the cluster: refused for good.
    removed: RwLock<HashSet<NodeId>>,
    peers: RwLock<HashMap<NodeId, SocketAddr>>,
    links: Mutex<HashMap<NodeId, mpsc::UnboundedSender<Queued>>>,
    groups: RwLock<HashMap<GroupId, Raft>>,
    next_id: AtomicU64,
    /// When each peer last answered.
    heard: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// When a link with each peer last opened or broke (a peer stopping
    /// breaks them; a restarted peer greets anew).
    link_changed: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// Dropped links (tests).
    pub filter: LinkFilter,
}

impl Transport {
    /// A transport for node `me` reaching `peers` at their Raft addresses.
    pub fn new(
        me: NodeId,
        identity: Identity,
        peers: HashMap<NodeId, SocketAddr>,
        filter: LinkFilter,
    ) -> Arc<Self> {
        Arc::new(Self {
            me,
            identity,
            refused: RwLock::default(),
            removed: RwLock::default(),
            peers: RwLock::new(peers),
            links: Mutex::default(),
            groups: RwLock::default(),
            next_id: AtomicU64::new(1),
            heard: Mutex::default(),
            link_changed: Mutex::default(),
            filter,
        })
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Sets the Raft address of member `peer` (one that joined, or moved).
    pub fn set_peer(&self, peer: NodeId, addr: SocketAddr) {
        if peer == self.me {
            return;
        }
        let known = self.peers.write().expect("peers lock").insert(peer, addr);
        if known.is_some_and(|old| old != addr) {
            self.links.lock().expect("links lock").remove(&peer);
        }
    }

    /// Refuses member `peer` for good: it was removed from the cluster.
    pub fn remove_peer(&self, peer: NodeId) {
        if self.removed.write().expect("removed lock").insert(peer) {
            tracing::info!(
                node = self.me,
                peer,
                "member removed from the cluster: refused from now on"
            );
        }
        self.links.lock().expect("links lock").remove(&peer);
    }

    /// Whether `digest` is this cluster's cookie digest.
    pub fn same_cluster(&self, digest: u64) -> bool {
        digest == self.identity.cluster
    }

    fn is_removed(&self, peer: NodeId) -> bool {
        self.removed.read().expect("removed lock").contains(&peer)
    }

    /// The view of `group` on node `to`.
    pub async fn group_view(
        self: &Arc<Self>,
        to: NodeId,
        group: GroupId,
    ) -> Result<GroupView, SendError> {
        if to == self.me {
            let raft = self
                .group(group)
                .ok_or_else(|| SendError::Remote(to, format!("group {group} is not here")))?;
            return Ok(GroupView::of(&raft));
        }
        match self
            .call(to, group, Rpc::Membership, Duration::from_secs(1))
            .await?
        {
            Reply::Membership(view) => Ok(view),
            other => Err(SendError::Remote(to, format!("unexpected reply {other:?}"))),
        }
    }

    /// Answers requests for `group` with `raft`.
    pub fn serve_group(&self, group: GroupId, raft: Raft) {
        self.groups
            .write()
            .expect("groups lock")
            .insert(group, raft);
    }

    /// Stops answering for `group`.
    pub fn forget_group(&self, group: GroupId) {
        self.groups.write().expect("groups lock").remove(&group);
    }

    fn group(&self, group: GroupId) -> Option<Raft> {
        self.groups
            .read()
            .expect("groups lock")
            .get(&group)
            .cloned()
    }

    /// Sends `rpc` to `group` on node `to` and waits for its reply.
    pub(crate) async fn call(
        self: &Arc<Self>,
        to: NodeId,
        group: GroupId,
        rpc: Rpc,
        timeout: Duration,
    ) -> Result<Reply, SendError> {
        if self.filter.is_cut(self.me, to) {
            return Err(SendError::Unreachable(to, "link cut".into()));
        }
        if let Some(reason) = self.refused.read().expect("refused lock").get(&to) {
            return Err(SendError::Unreachable(to, reason.clone()));
        }
        if self.is_removed(to) {
            return Err(SendError::Unreachable(
                to,
                "removed from the cluster".into(),
            ));
        }
        let (done, wait) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.link(to)?
            .send((id, group, rpc, done))
            .map_err(|_| SendError::Unreachable(to, "connection closed".into()))?;
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SendError::Unreachable(to, "connection lost".into())),
            Err(_) => Err(SendError::Unreachable(to, "timed out".into())),
        }
    }

    /// The queue of the connection to `to`, starting one if there is none
    /// or the last one failed.
    fn link(self: &Arc<Self>, to: NodeId) -> Result<mpsc::UnboundedSender<Queued>, SendError> {
        let mut links = self.links.lock().expect("links lock");
        if let Some(link) = links.get(&to).filter(|l| !l.is_closed()) {
            return Ok(link.clone());
        }
        let addr = *self
            .peers
            .read()
            .expect("peers lock")
            .get(&to)
            .ok_or_else(|| SendError::Unreachable(to, "unknown node".into()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_link(self.clone(), to, addr, rx));
        links.insert(to, tx.clone());
        Ok(tx)
    }

    /// Says hello to every reachable peer: an error when one refuses this
    /// node (its data dir is not the one the peer knew) or is refused.
    pub async fn greet_peers(&self) -> Result<(), String> {
        let peers: Vec<(NodeId, SocketAddr)> = self
            .peers
            .read()
            .expect("peers lock")
            .iter()
            .map(|(id, addr)| (*id, *addr))
            .collect();
        for (to, addr) in peers {
            let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr));
            let Ok(Ok(mut stream)) = connect.await else {
                continue;
            };
            if let Handshake::Refused(reason) =
                hello(&mut stream, self.me, to, &self.identity).await
            {
                return Err(reason);
            }
        }
        Ok(())
    }

    /// Whether `peer` answered within `within` (Raft traffic never stops
    /// between live members: heartbeats flow even when idle).
    pub fn heard_from(&self, peer: NodeId, within: Duration) -> bool {
        self.heard
            .lock()
            .expect("heard lock")
            .get(&peer)
            .is_some_and(|at| at.elapsed() < within)
    }

    /// How long the links with `peer` have been steady (none opened or
    /// broken): a peer that is stopping, or just (re)started and still
    /// catching up, has changed them lately.
    pub fn steady_for(&self, peer: NodeId) -> Option<Duration> {
        self.link_changed
            .lock()
            .expect("link lock")
            .get(&peer)
            .map(|at| at.elapsed())
    }

    fn link_changed(&self, peer: NodeId) {
        self.link_changed
            .lock()
            .expect("link lock")
            .insert(peer, std::time::Instant::now());
    }

    fn refuse(&self, peer: NodeId, reason: String) {
        tracing::error!(node = self.me, peer, %reason, "member refused");
        self.refused
            .write()
            .expect("refused lock")
            .insert(peer, reason);
    }

    /// Accepts peers' connections on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(self.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "raft listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn write_frame<W: AsyncWriteExt + Unpin>(out: &mut W, frame: &Frame) -> std::io::Result<()> {
    let body = codec::encode(frame);
    out.write_all(&(body.len() as u32).to_be_bytes()).await?;
    out.write_all(&body).await
}

async fn read_frame<R: AsyncReadExt + Unpin>(input: &mut R) -> std::io::Result<Frame> {
    let len = input.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit"),
        ));
    }
    let mut body = Vec::with_capacity(len);
    let read = input.take(len as u64).read_to_end(&mut body).await?;
    if read < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    codec::decode(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// One outbound connection: writes queued requests (all that are queued,
/// then one flush) and routes replies to their waiters. It ends, failing
/// every waiter, when the connection fails; the next send starts another.
async fn run_link(
    transport: Arc<Transport>,
    to: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await;
    let greeted = match connect {
        Ok(Ok(mut stream)) => {
            let _ = stream.set_nodelay(true);
            match hello(&mut stream, transport.me, to, &transport.identity).await {
                Handshake::Welcome => Ok(stream),
                Handshake::Refused(reason) => {
                    transport.refuse(to, reason.clone());
                    Err(reason)
                }
                Handshake::Unreachable(why) => Err(why),
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    };
    let stream = match greeted {
        Ok(stream) => stream,
        Err(why) => {
            transport.link_changed(to);
            rx.close();
            while let Ok((_, _, _, done)) = rx.try_recv() {
                let _ = done.send(Err(SendError::Unreachable(to, why.clone())));
            }
            return;
        }
    };
    let (mut read, write) = stream.into_split();
    let mut write = BufWriter::with_capacity(256 << 10, write);
    let waiting: Arc<Mutex<HashMap<u64, Waiting>>> = Arc::default();
    let replies = {
        let waiting = waiting.clone();
        let transport = transport.clone();
        tokio::spawn(async move {
            while let Ok(frame) = read_frame(&mut read).await {
                if let Frame::Response { id, reply } = frame {
                    if transport.filter.is_cut(to, transport.me) {
                        continue;
                    }
                    let now = std::time::Instant::now();
                    transport.heard.lock().expect("heard lock").insert(to, now);
                    let done = waiting.lock().expect("waiting lock").remove(&id);
                    if let Some(done) = done {
                        let _ = done.send(reply.map_err(|e| SendError::Remote(to, e)));
                    }
                }
            }
        })
    };
    let mut ok = true;
    while ok {
        let Some(first) = rx.recv().await else { break };
        let mut next = Some(first);
        while let Some((id, group, rpc, done)) = next.take() {
            waiting.lock().expect("waiting lock").insert(id, done);
            if write_frame(&mut write, &Frame::Request { id, group, rpc })
                .await
                .is_err()
            {
                ok = false;
                break;
            }
            next = rx.try_recv().ok();
        }
        ok = ok && write.flush().await.is_ok() && !replies.is_finished();
    }
    replies.abort();
    transport.link_changed(to);
    rx.close();
    let lost = || SendError::Unreachable(to, "connection lost".into());
    for (_, done) in waiting.lock().expect("waiting lock").drain() {
        let _ = done.send(Err(lost()));
    }
    while let Ok((_, _, _, done)) = rx.try_recv() {
        let _ = done.send(Err(lost()));
    }
}

/// One inbound connection: each request is handled in its own task (a
/// snapshot install does not hold up heartbeats); replies are written in
/// batches by one writer.
async fn serve_connection(transport: Arc<Transport>, mut stream: TcpStream) {
    let from = match read_frame(&mut stream).await {
        Ok(Frame::Hello {
            from,
            incarnation,
            cluster,
        }) => {
            if cluster != transport.identity.cluster {
                // Not remembered: the node may come back with the right cookie.
                let reason = format!(
                    "node {from} presents another cluster cookie; every member must be \
                     started with the cluster's cookie"
                );
                tracing::error!(
                    node = transport.me,
                    peer = from,
                    "member refused: another cluster cookie"
                );
                let _ = write_frame(&mut stream, &Frame::Refused { reason }).await;
                return;
            }
            if transport.is_removed(from) {
                let reason = format!(
                    "node {from} was removed from the cluster; a removed node cannot come \
                     back (start a new node with another id and join it)"
                );
                tracing::warn!(node = transport.me, peer = from, "removed member refused");
                let _ = write_frame(&mut stream, &Frame::Refused { reason }).await;
                return;
            }
            if let Err(reason) = transport.identity.check(from, incarnation) {
                transport.refuse(from, reason.clone());
                let _ = write_frame(&mut stream, &Frame::Refused { reason }).await;
                return;
            }
            let welcome = Frame::Welcome {
                incarnation: transport.identity.incarnation,
                cluster: transport.identity.cluster,
            };
            if write_frame(&mut stream, &welcome).await.is_err() {
                return;
            }
            transport.link_changed(from);
            from
        }
        _ => return,
    };
    let (mut read, write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let writer = tokio::spawn(async move {
        let mut write = BufWriter::with_capacity(256 << 10, write);
        while let Some(frame) = rx.recv().await {
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                if write_frame(&mut write, &frame).await.is_err() {
                    return;
                }
                next = rx.try_recv().ok();
            }
            if write.flush().await.is_err() {
                return;
            }
        }
    });
    while let Ok(frame) = read_frame(&mut read).await {
        let Frame::Request { id, group, rpc } = frame else {
            continue;
        };
        if transport.filter.is_cut(from, transport.me) {
            continue;
        }
        let transport = transport.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = match transport.group(group) {
                Some(raft) => handle(&raft, rpc).await,
                None => Err(format!("group {group} is not on node {}", transport.me)),
            };
            let _ = tx.send(Frame::Response { id, reply });
        });
    }
    transport.link_changed(from);
    drop(tx);
    let _ = writer.await;
}

async fn handle(raft: &Raft, rpc: Rpc) -> Result<Reply, String> {
    match rpc {
        Rpc::Append(request) => raft
            .append_entries(request)
            .await
            .map(Reply::Append)
            .map_err(|e| e.to_string()),
        Rpc::Vote(request) => raft
            .vote(request)
            .await
            .map(Reply::Vote)
            .map_err(|e| e.to_string()),
        Rpc::PreVote(request) => raft
            .pre_vote(request)
            .await
            .map(Reply::Vote)
            .map_err(|e| e.to_string()),
        Rpc::Snapshot { vote, meta, data } => {
            let snapshot = openraft::alias::SnapshotOf::<TypeConfig, Vec<u8>> {
                meta,
                snapshot: data,
            };
            raft.install_full_snapshot(vote, snapshot)
                .await
                .map(Reply::Snapshot)
                .map_err(|e| e.to_string())
        }
        Rpc::TransferLeader(request) => raft
            .handle_transfer_leader(request)
            .await
            .map(Reply::TransferLeader)
            .map_err(|e| e.to_string()),
        Rpc::Membership => Ok(Reply::Membership(GroupView::of(raft))),
    }
}
