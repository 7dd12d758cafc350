//! Routing by shard: a client connected to a cluster node learns the
//! cluster map (which node leads which shard) and sends each request about
//! one instance straight to the leader of the instance's shard, saving the
//! node-to-node hop. A node that no longer leads that shard answers
//! `not_leader` with the leader's address; the client follows it, and
//! reloads the map after an `unavailable` answer or a broken connection.
//! Against a single node (no addresses in its map) nothing is routed.

use crate::Client;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How soon a map marked stale may be fetched again.
const REFETCH_AFTER: Duration = Duration::from_millis(50);

/// How long a leader that could not be reached is skipped (requests go to
/// the node given, which waits for a new leader itself).
const AVOID_FOR: Duration = Duration::from_secs(1);

/// The cluster map as this client knows it, and connections to leaders.
#[derive(Default)]
pub(crate) struct Routing {
    map: RwLock<Map>,
    leaders: tokio::sync::Mutex<HashMap<String, Client>>,
    /// Leaders that could not be reached, and since when.
    unreachable: std::sync::Mutex<HashMap<String, Instant>>,
}

#[derive(Default)]
struct Map {
    /// Fetched and not known stale.
    fresh: bool,
    fetched_at: Option<Instant>,
    epoch: u64,
    /// Each shard's leader's native address, when known.
    leaders: Vec<Option<String>>,
}

impl Routing {
    /// The client for the leader of `id`'s shard, when it is another node
    /// than `home` and known.
    pub async fn leader_for(&self, home: &Client, id: &str) -> Option<Client> {
        if self.due() {
            self.fetch(home).await;
        }
        let addr = {
            let map = self.map.read().expect("map lock");
            if map.leaders.is_empty() {
                return None;
            }
            let shard = troupe_protocol::shard_of(id, map.leaders.len() as u32);
            map.leaders[shard as usize].clone()?
        };
        if addr == home.addr() || self.avoided(&addr) {
            return None;
        }
        let mut leaders = self.leaders.lock().await;
        if let Some(client) = leaders.get(&addr) {
            return Some(client.clone());
        }
        match Client::direct(addr.clone()).await {
            Ok(client) => {
                leaders.insert(addr, client.clone());
                Some(client)
            }
            Err(_) => {
                drop(leaders);
                self.unreachable(&addr);
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

    /// Skips the leader at `addr` for a while (it died, or the link did)
    /// and reloads the map.
    pub fn unreachable(&self, addr: &str) {
        self.unreachable
            .lock()
            .expect("unreachable lock")
            .insert(addr.to_owned(), Instant::now());
        self.forget();
    }

    fn due(&self) -> bool {
        let map = self.map.read().expect("map lock");
        !map.fresh
            && map
                .fetched_at
                .is_none_or(|at| at.elapsed() >= REFETCH_AFTER)
    }

    async fn fetch(&self, home: &Client) {
        let view = home.cluster_map().await.ok();
        let mut map = self.map.write().expect("map lock");
        map.fetched_at = Some(Instant::now());
        map.fresh = true;
        if let Some(view) = view {
            map.epoch = view["epoch"].as_u64().unwrap_or(0);
            map.leaders = leaders_of(&view);
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
        let single = json!({"nodes": [{"id": 1}], "shards": [{"id": 0, "leader": 1}]});
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
