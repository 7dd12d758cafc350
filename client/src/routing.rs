//! Routing by shard: a client connected to a cluster node learns the
//! cluster map (which node leads which shard) and sends each request about
//! one instance straight to the leader of the instance's shard, saving the
//! node-to-node hop. A node that no longer leads that shard answers
//! `not_leader` with the leader's address; the client follows it, and
//! reloads the map after an `unavailable` answer or a broken connection.
//!
//! While the client's own node cannot be reached (restarting, dead), the
//! client goes through another member instead (a stand-in, which forwards
//! what it does not lead) and reads the map there, one try each, and tries
//! its own node again a second later. Against a single node (no addresses
//! in its map) nothing is routed.

use crate::{Client, Error};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How soon a map marked stale may be fetched again.
const REFETCH_AFTER: Duration = Duration::from_millis(50);

/// How long a node that could not be reached is skipped: a leader
/// (requests go to the client's node, which waits for a new leader itself)
/// or the client's own node (requests go through a stand-in).
const AVOID_FOR: Duration = Duration::from_secs(1);

/// Longest wait for a map from one node.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);

/// Where one try of a request goes.
pub(crate) enum Via {
    /// The node the client was given.
    Home,
    /// The leader of the instance's shard (the request is sent `Routed`).
    Leader(Client),
    /// Another member, while the client's node cannot be reached.
    StandIn(Client),
}

impl Via {
    /// The address the try went to.
    pub fn addr<'a>(&'a self, home: &'a Client) -> &'a str {
        match self {
            Via::Home => home.addr(),
            Via::Leader(node) | Via::StandIn(node) => node.addr(),
        }
    }
}

/// The cluster map as this client knows it, and connections to other nodes.
#[derive(Default)]
pub(crate) struct Routing {
    map: RwLock<Map>,
    /// Connections to other members (leaders and stand-ins).
    nodes: tokio::sync::Mutex<HashMap<String, Client>>,
    /// Nodes that could not be reached, and since when.
    unreachable: std::sync::Mutex<HashMap<String, Instant>>,
    /// A map fetch is under way (one at a time; others use the map held).
    fetching: AtomicBool,
}

#[derive(Default)]
struct Map {
    /// Fetched and not known stale.
    fresh: bool,
    fetched_at: Option<Instant>,
    epoch: u64,
    /// Each shard's leader's native address, when known.
    leaders: Vec<Option<String>>,
    /// The native addresses of the members not removed.
    members: Vec<String>,
}

impl Routing {
    /// Where the next try of a request goes: the leader of `id`'s shard
    /// when it is another node than `home` and known; else a stand-in when
    /// `home` cannot be reached; else `home`.
    pub async fn via(&self, home: &Client, id: Option<&str>) -> Via {
        if self.due() {
            self.fetch(home).await;
        }
        let (leader, stand_in) = {
            let map = self.map.read().expect("map lock");
            let leader = id.and_then(|id| {
                if map.leaders.is_empty() {
                    return None;
                }
                let shard = troupe_protocol::shard_of(id, map.leaders.len() as u32);
                map.leaders[shard as usize].clone()
            });
            let stand_in = self
                .avoided(home.addr())
                .then(|| self.reachable(&map, home));
            (leader, stand_in.flatten())
        };
        if let Some(addr) = leader.filter(|a| a != home.addr() && !self.avoided(a))
            && let Some(node) = self.node(&addr).await
        {
            return Via::Leader(node);
        }
        if let Some(addr) = stand_in
            && let Some(node) = self.node(&addr).await
        {
            return Via::StandIn(node);
        }
        Via::Home
    }

    /// The first member other than `home` not skipped.
    fn reachable(&self, map: &Map, home: &Client) -> Option<String> {
        map.members
            .iter()
            .find(|a| *a != home.addr() && !self.avoided(a))
            .cloned()
    }

    /// Whether some node may still be tried at once: `home`, or a member
    /// not skipped.
    pub fn any_reachable(&self, home: &Client) -> bool {
        !self.avoided(home.addr())
            || self
                .reachable(&self.map.read().expect("map lock"), home)
                .is_some()
    }

    /// A connection to the member at `addr` (skipped a while when it
    /// cannot be opened).
    async fn node(&self, addr: &str) -> Option<Client> {
        let mut nodes = self.nodes.lock().await;
        if let Some(client) = nodes.get(addr) {
            return Some(client.clone());
        }
        match Client::direct(addr.to_owned()).await {
            Ok(client) => {
                nodes.insert(addr.to_owned(), client.clone());
                Some(client)
            }
            Err(_) => {
                drop(nodes);
                self.unreachable(addr);
                None
            }
        }
    }

    fn avoided(&self, addr: &str) -> bool {
        let unreachable = self.unreachable.lock().expect("unreachable lock");
        unreachable
            .get(addr)
            .is_some_and(|since| since.elapsed() < AVOID_FOR)
    }

    /// Skips the node at `addr` for a while (it died, or the link did)
    /// and reloads the map.
    pub fn unreachable(&self, addr: &str) {
        self.skip(addr);
        self.forget();
    }

    fn skip(&self, addr: &str) {
        self.unreachable
            .lock()
            .expect("unreachable lock")
            .insert(addr.to_owned(), Instant::now());
    }

    fn due(&self) -> bool {
        let map = self.map.read().expect("map lock");
        !map.fresh
            && map
                .fetched_at
                .is_none_or(|at| at.elapsed() >= REFETCH_AFTER)
    }

    /// Reads the map from `home`, or from a member when `home` cannot be
    /// reached: one try each, one fetch at a time.
    async fn fetch(&self, home: &Client) {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let _done = Fetching(&self.fetching);
        let mut view = None;
        let tries = self.map.read().expect("map lock").members.len().max(1);
        for _ in 0..tries {
            let (source, node) = if self.avoided(home.addr()) {
                let Some(addr) = self.reachable(&self.map.read().expect("map lock"), home) else {
                    break;
                };
                let Some(node) = self.node(&addr).await else {
                    continue;
                };
                (addr, node)
            } else {
                (home.addr().to_owned(), home.clone())
            };
            match tokio::time::timeout(FETCH_TIMEOUT, node.cluster_map()).await {
                Ok(Ok(answer)) => {
                    view = Some(answer);
                    break;
                }
                Ok(Err(Error::Connection(_))) | Err(_) => self.skip(&source),
                Ok(Err(_)) => break,
            }
        }
        let mut map = self.map.write().expect("map lock");
        map.fetched_at = Some(Instant::now());
        map.fresh = true;
        if let Some(view) = view {
            map.epoch = view["epoch"].as_u64().unwrap_or(0);
            map.leaders = leaders_of(&view);
            map.members = members_of(&view);
        }
    }

    /// Marks the map stale: fetched again before the next routed request.
    pub fn forget(&self) {
        self.map.write().expect("map lock").fresh = false;
    }

    /// Follows a `not_leader` answer's details.
    pub fn learn(&self, details: &Json) {
        let (Some(shard), Some(addr)) =
            (details["shard"].as_u64(), details["native_addr"].as_str())
        else {
            self.forget();
            return;
        };
        let epoch = details["epoch"].as_u64().unwrap_or(0);
        let mut guard = self.map.write().expect("map lock");
        let map = &mut *guard;
        if epoch >= map.epoch
            && let Some(slot) = map.leaders.get_mut(shard as usize)
        {
            *slot = Some(addr.to_owned());
            map.epoch = epoch;
        }
    }
}

/// Clears the fetch flag however the fetch ends (a dropped request too).
struct Fetching<'a>(&'a AtomicBool);

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The native addresses of a `/v1/cluster` view's members not removed
/// (empty for a single node).
pub(crate) fn members_of(view: &Json) -> Vec<String> {
    view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["membership"] != "removed")
        .filter_map(|n| n["native_addr"].as_str().map(str::to_owned))
        .collect()
}

/// Each shard's leader's native address in a `/v1/cluster` view (empty
/// when the view names no addresses: a single node).
fn leaders_of(view: &Json) -> Vec<Option<String>> {
    let addrs: HashMap<u64, &str> = view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_u64()?, n["native_addr"].as_str()?)))
        .collect();
    if addrs.is_empty() {
        return Vec::new();
    }
    view["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let leader = s["leader"].as_u64()?;
            addrs.get(&leader).map(|a| (*a).to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leaders_come_from_the_cluster_view_and_follow_not_leader_answers() {
        let view = json!({
            "epoch": 1,
            "nodes": [
                {"id": 1, "native_addr": "127.0.0.1:7071"},
                {"id": 2, "native_addr": "127.0.0.1:7072"},
            ],
            "shards": [{"id": 0, "leader": 2}, {"id": 1, "leader": null}],
        });
        assert_eq!(
            leaders_of(&view),
            vec![Some("127.0.0.1:7072".to_owned()), None]
        );
        assert_eq!(members_of(&view), vec!["127.0.0.1:7071", "127.0.0.1:7072"]);
        let single = json!({"nodes": [{"id": 1}], "shards": [{"id": 0, "leader": 1}]});
        assert!(
            members_of(&single).is_empty(),
            "a single node has no stand-in"
        );
        assert!(
            leaders_of(&single).is_empty(),
            "a single node routes nothing"
        );

        let routing = Routing::default();
        {
            let mut map = routing.map.write().unwrap();
            map.fresh = true;
            map.epoch = 1;
            map.leaders = leaders_of(&view);
        }
        routing.learn(&json!({"shard": 1, "native_addr": "127.0.0.1:7071", "epoch": 1}));
        routing.learn(&json!({"shard": 0, "native_addr": "127.0.0.1:7079", "epoch": 0}));
        let map = routing.map.read().unwrap();
        assert_eq!(map.leaders[1].as_deref(), Some("127.0.0.1:7071"));
        assert_eq!(
            map.leaders[0].as_deref(),
            Some("127.0.0.1:7072"),
            "an answer from an older epoch is ignored"
        );
    }
}
