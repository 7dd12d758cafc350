//! The control plane, on `ractor_cluster`: members find each other and
//! authenticate with the cluster's cookie; each runs a directory actor in
//! one process group; a failure detector pings every member's directory
//! actor, says which members are up, and drops links that stopped
//! answering; a dialer reconnects to members without a link.
//!
//! ractor_cluster has neither a failure detector nor reconnection: both
//! are here. Raft traffic does not use this plane (it has its own batched
//! transport); membership views and events do.

use crate::types::NodeId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage, RactorClusterMessage};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The process group of every member's directory actor.
pub const DIRECTORY_GROUP: &str = "troupe.directory";

/// How often members are pinged and links checked.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// How long a ping may take.
const PING_TIMEOUT_MS: u64 = 500;

/// How often members without a link are dialed.
const DIAL_EVERY: Duration = Duration::from_secs(1);

/// The control plane's settings.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// This node.
    pub node_id: NodeId,
    /// Where this node's control plane listens.
    pub listen: SocketAddr,
    /// The shared secret members authenticate each other with.
    pub cookie: String,
    /// Every member's control address, by id.
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// A member that has not answered a ping for this long is down.
    pub down_after: Duration,
}

/// What the directory actor answers.
#[derive(RactorClusterMessage)]
pub enum DirectoryMsg {
    /// Answers with the member's node id.
    #[rpc]
    Ping(RpcReplyPort<u64>),
}

struct Directory;

impl Actor for Directory {
    type Msg = DirectoryMsg;
    type State = NodeId;
    type Arguments = NodeId;

    async fn pre_start(
        &self,
        myself: ActorRef<DirectoryMsg>,
        node_id: NodeId,
    ) -> Result<NodeId, ActorProcessingErr> {
        ractor::pg::join(DIRECTORY_GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(node_id)
    }

    async fn handle(
        &self,
        _myself: ActorRef<DirectoryMsg>,
        message: DirectoryMsg,
        node_id: &mut NodeId,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DirectoryMsg::Ping(reply) => {
                let _ = reply.send(*node_id);
            }
        }
        Ok(())
    }
}

/// A member's name on the control plane: `troupe-<id>`.
fn node_name(id: NodeId) -> String {
    format!("troupe-{id}")
}

/// The member id in a full node name (`troupe-<id>@host`).
fn member_of(full_name: &str) -> Option<NodeId> {
    full_name
        .split_once('@')?
        .0
        .strip_prefix("troupe-")?
        .parse()
        .ok()
}

/// A link event, forwarded out of the node server's actor at once.
enum LinkEvent {
    Ready(Option<NodeId>),
    Closed(Option<NodeId>),
}

struct Forward(mpsc::UnboundedSender<LinkEvent>);

fn peer(session: &NodeServerSessionInformation) -> Option<NodeId> {
    session
        .peer_name
        .as_ref()
        .and_then(|name| member_of(&name.name))
}

impl NodeEventSubscription for Forward {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}
    fn node_session_ready(&self, session: NodeServerSessionInformation) {
        let _ = self.0.send(LinkEvent::Ready(peer(&session)));
    }
    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        let _ = self.0.send(LinkEvent::Closed(peer(&session)));
    }
}

/// A member as the failure detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answered a ping within `down_after`.
    Up,
    /// Has not.
    Down,
}

/// This node's control plane.
pub struct Control {
    config: ControlConfig,
    server: ActorRef<NodeServerMessage>,
    directory: ActorRef<DirectoryMsg>,
    /// Every member's control address (the cluster map changes them).
    members: Mutex<BTreeMap<NodeId, SocketAddr>>,
    /// When each member last answered a ping.
    answered: Mutex<HashMap<NodeId, Instant>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Control {
    /// Starts the node server, the directory actor, the failure detector
    /// and the dialer (on the caller's runtime).
    pub async fn start(config: ControlConfig) -> std::io::Result<Arc<Self>> {
        let ip = config.listen.ip();
        let server = NodeServer::new(
            config.listen.port(),
            config.cookie.clone(),
            node_name(config.node_id),
            ip.to_string(),
            None,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(ip);
        let (server, _) = Actor::spawn(None, server, ()).await.map_err(|e| {
            std::io::Error::other(format!("control plane on {}: {e}", config.listen))
        })?;
        let (events, links) = mpsc::unbounded_channel();
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "troupe.links".into(),
                subscription: Box::new(Forward(events)),
            })
            .map_err(std::io::Error::other)?;
        let (directory, _) = Actor::spawn(None, Directory, config.node_id)
            .await
            .map_err(std::io::Error::other)?;
        let control = Arc::new(Self {
            members: Mutex::new(config.members.clone()),
            config,
            server,
            directory,
            answered: Mutex::default(),
            tasks: Mutex::default(),
        });
        let tasks = vec![
            tokio::spawn(log_links(control.config.node_id, links)),
            tokio::spawn(detect_failures(Arc::downgrade(&control))),
            tokio::spawn(dial(Arc::downgrade(&control))),
        ];
        *control.tasks.lock().expect("tasks lock") = tasks;
        Ok(control)
    }

    /// Whether `node` is up: this node, or a member that answered a ping
    /// within `down_after`.
    pub fn state(&self, node: NodeId) -> MemberState {
        if node == self.config.node_id {
            return MemberState::Up;
        }
        let answered = self.answered.lock().expect("answered lock");
        match answered.get(&node) {
            Some(at) if at.elapsed() < self.config.down_after => MemberState::Up,
            _ => MemberState::Down,
        }
    }

    /// Replaces the members pinged and dialed (members joined or removed).
    pub fn set_members(&self, members: BTreeMap<NodeId, SocketAddr>) {
        *self.members.lock().expect("members lock") = members;
    }

    fn members(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.members.lock().expect("members lock").clone()
    }

    /// Stops the node server (every link) and the background tasks.
    pub fn shutdown(&self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        self.directory.stop(None);
        self.server.stop(None);
    }

    /// The node server's authenticated links, by member.
    async fn links(&self) -> HashMap<NodeId, Vec<NodeServerSessionInformation>> {
        let mut links: HashMap<NodeId, Vec<_>> = HashMap::new();
        if let Ok(sessions) = ractor::call_t!(self.server, NodeServerMessage::GetSessions, 1_000) {
            for session in sessions.into_values() {
                if let Some(member) = peer(&session) {
                    links.entry(member).or_default().push(session);
                }
            }
        }
        links
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn log_links(me: NodeId, mut links: mpsc::UnboundedReceiver<LinkEvent>) {
    while let Some(event) = links.recv().await {
        match event {
            LinkEvent::Ready(peer) => {
                metrics::counter!(crate::metrics::CONTROL_LINKS_TOTAL, "event" => "ready")
                    .increment(1);
                tracing::info!(node = me, ?peer, "control link ready");
            }
            LinkEvent::Closed(peer) => {
                metrics::counter!(crate::metrics::CONTROL_LINKS_TOTAL, "event" => "closed")
                    .increment(1);
                tracing::debug!(node = me, ?peer, "control link closed");
            }
        }
    }
}

/// Pings every member's directory actor; reports members going up and
/// down; stops links to members that stopped answering (so the dialer
/// opens fresh ones: a half-open link would otherwise live for minutes).
async fn detect_failures(control: std::sync::Weak<Control>) {
    let mut states: HashMap<NodeId, MemberState> = HashMap::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(control) = control.upgrade() else {
            return;
        };
        let directories: Vec<ActorRef<DirectoryMsg>> =
            ractor::pg::get_members(&DIRECTORY_GROUP.to_owned())
                .into_iter()
                .filter(|cell| !cell.get_id().is_local())
                .map(ActorRef::from)
                .collect();
        let pings = directories.iter().map(|directory| async move {
            ractor::call_t!(directory, DirectoryMsg::Ping, PING_TIMEOUT_MS).ok()
        });
        let answers = futures_util::future::join_all(pings).await;
        {
            let now = Instant::now();
            let mut answered = control.answered.lock().expect("answered lock");
            for member in answers.into_iter().flatten() {
                answered.insert(member, now);
            }
        }
        let me = control.config.node_id;
        let mut down = Vec::new();
        for member in control.members().into_keys().filter(|m| *m != me) {
            let state = control.state(member);
            let was = states.insert(member, state);
            if was != Some(state) && (was.is_some() || state == MemberState::Up) {
                metrics::counter!(crate::metrics::MEMBER_CHANGES_TOTAL, "state" => match state {
                    MemberState::Up => "up",
                    MemberState::Down => "down",
                })
                .increment(1);
                tracing::info!(node = me, member, ?state, "member state changed");
            }
            if state == MemberState::Down {
                down.push(member);
            }
        }
        if down.is_empty() {
            continue;
        }
        let links = control.links().await;
        for member in down {
            // A link that has answered nothing for `down_after` is stale.
            for session in links.get(&member).into_iter().flatten() {
                tracing::info!(
                    node = me,
                    member,
                    "dropping a control link that stopped answering"
                );
                session.actor.stop(Some("failure detector".into()));
            }
        }
    }
}

/// Opens a link to every member that has none.
async fn dial(control: std::sync::Weak<Control>) {
    let mut tick = tokio::time::interval(DIAL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(control) = control.upgrade() else {
            return;
        };
        let links = control.links().await;
        let me = control.config.node_id;
        for (member, addr) in control.members() {
            if member == me || links.contains_key(&member) {
                continue;
            }
            let connect = ractor_cluster::client_connect(&control.server, addr);
            match tokio::time::timeout(Duration::from_secs(1), connect).await {
                Ok(Ok(())) => tracing::debug!(node = me, member, %addr, "control link dialed"),
                Ok(Err(e)) => {
                    tracing::debug!(node = me, member, %addr, error = %e, "control link not opened")
                }
                Err(_) => tracing::debug!(node = me, member, %addr, "control link dial timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_come_from_full_node_names() {
        assert_eq!(member_of(&format!("{}@127.0.0.1", node_name(12))), Some(12));
        assert_eq!(member_of("other-3@127.0.0.1"), None);
        assert_eq!(member_of("troupe-x@host"), None);
    }
}
