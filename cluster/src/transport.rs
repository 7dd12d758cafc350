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
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
}

/// A peer group's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
}

#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    /// First frame of a connection: who is calling.
    Hello {
        from: NodeId,
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

/// This node's end of the transport: outbound peers and the groups that
/// answer inbound requests.
pub struct Transport {
    me: NodeId,
    peers: RwLock<HashMap<NodeId, SocketAddr>>,
    links: Mutex<HashMap<NodeId, mpsc::UnboundedSender<Queued>>>,
    groups: RwLock<HashMap<GroupId, Raft>>,
    next_id: AtomicU64,
    /// Dropped links (tests).
    pub filter: LinkFilter,
}

impl Transport {
    /// A transport for node `me` reaching `peers` at their Raft addresses.
    pub fn new(me: NodeId, peers: HashMap<NodeId, SocketAddr>, filter: LinkFilter) -> Arc<Self> {
        Arc::new(Self {
            me,
            peers: RwLock::new(peers),
            links: Mutex::default(),
            groups: RwLock::default(),
            next_id: AtomicU64::new(1),
            filter,
        })
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
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
    let mut body = vec![0; len];
    input.read_exact(&mut body).await?;
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
    let stream = match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
    {
        Ok(Ok(stream)) => stream,
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "connect timed out".into(),
            };
            rx.close();
            while let Ok((_, _, _, done)) = rx.try_recv() {
                let _ = done.send(Err(SendError::Unreachable(to, why.clone())));
            }
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut read, write) = stream.into_split();
    let mut write = BufWriter::with_capacity(256 << 10, write);
    let waiting: Arc<Mutex<HashMap<u64, Waiting>>> = Arc::default();
    let me = transport.me;
    let replies = {
        let waiting = waiting.clone();
        let transport = transport.clone();
        tokio::spawn(async move {
            while let Ok(frame) = read_frame(&mut read).await {
                if let Frame::Response { id, reply } = frame {
                    if transport.filter.is_cut(to, transport.me) {
                        continue;
                    }
                    let done = waiting.lock().expect("waiting lock").remove(&id);
                    if let Some(done) = done {
                        let _ = done.send(reply.map_err(|e| SendError::Remote(to, e)));
                    }
                }
            }
        })
    };
    let mut ok = write_frame(&mut write, &Frame::Hello { from: me })
        .await
        .is_ok();
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
async fn serve_connection(transport: Arc<Transport>, stream: TcpStream) {
    let (mut read, write) = stream.into_split();
    let from = match read_frame(&mut read).await {
        Ok(Frame::Hello { from }) => from,
        _ => return,
    };
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
    }
}
