//! Requests that span every shard (listings, published events) on a
//! cluster node that holds only some shards: this node answers for its
//! own, one node holding each of the others answers for those (the
//! request proxied with `shards=`), and the parts are merged — pages in the
//! listing's order, deliveries summed.

use crate::api::{self, ApiError};
use crate::cluster::Peers;
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::future::Future;
use troupe_protocol::ErrorCode;

/// A listing that spans the shards.
#[derive(Debug, Clone, Copy)]
pub enum Listing {
    /// `GET /v1/workflows` in id order.
    Workflows,
    /// `GET /v1/workflows?order=newest`.
    NewestWorkflows,
    /// `GET /v1/human-tasks`.
    HumanTasks,
    /// `GET /v1/incidents`.
    Incidents,
}

impl Listing {
    fn field(self) -> &'static str {
        match self {
            Listing::Workflows | Listing::NewestWorkflows => "workflows",
            Listing::HumanTasks => "human_tasks",
            Listing::Incidents => "incidents",
        }
    }

    /// Where `item` sorts in the listing (the order each shard's part is in).
    fn key(self, item: &Json) -> Vec<u8> {
        let id = item["id"].as_str().unwrap_or_default();
        let mut key = match self {
            Listing::Workflows => Vec::new(),
            Listing::NewestWorkflows => (!updated_ms(item)).to_be_bytes().to_vec(),
            Listing::HumanTasks => shard_bytes(troupe_storage::human_task_shard(id)),
            Listing::Incidents => shard_bytes(troupe_storage::incident_shard(id)),
        };
        key.extend_from_slice(id.as_bytes());
        key
    }

    /// The cursor that continues after `item`.
    fn cursor(self, item: &Json) -> String {
        let id = item["id"].as_str().unwrap_or_default();
        match self {
            Listing::NewestWorkflows => format!("{}.{id}", updated_ms(item)),
            _ => id.to_owned(),
        }
    }
}

fn shard_bytes(shard: Option<u32>) -> Vec<u8> {
    shard.unwrap_or(u32::MAX).to_be_bytes().to_vec()
}

/// An instance summary's `updated_at` in ms since the epoch.
fn updated_ms(item: &Json) -> u64 {
    item["updated_at"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// `path_and_query` with `shards=` appended.
fn with_shards(path_and_query: &str, shards: &[u32]) -> String {
    let list: Vec<String> = shards.iter().map(u32::to_string).collect();
    let separator = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{path_and_query}{separator}shards={}", list.join(","))
}

/// The parts of a request that spans the shards: this node's (for its own
/// shards, or for all when it holds all) from `local`, and each other
/// holder's from `ask` (given the node and the `shards=` value).
async fn parts<F, Fut, A, AFut>(peers: &Peers, local: F, ask: A) -> api::Result<Vec<Json>>
where
    F: FnOnce(Option<Vec<u32>>) -> Fut,
    Fut: Future<Output = api::Result<Json>>,
    A: Fn(u64, &[u32]) -> AFut,
    AFut: Future<Output = api::Result<Json>>,
{
    let (mine, elsewhere) = peers.shard_holders()?;
    if elsewhere.is_empty() {
        return Ok(vec![local(None).await?]);
    }
    let remote = elsewhere.iter().map(|(node, shards)| ask(*node, shards));
    let (here, there) = tokio::join!(local(Some(mine)), futures_util::future::join_all(remote));
    let mut parts = vec![here?];
    for part in there {
        parts.push(part?);
    }
    Ok(parts)
}

/// One page of `listing` over every shard: `local` reads this node's
/// shards (all of them when it holds all), `path_and_query` asks the
/// other holders for theirs.
pub async fn list<F, Fut>(
    peers: &Peers,
    listing: Listing,
    path_and_query: &str,
    limit: usize,
    local: F,
) -> api::Result<Json>
where
    F: FnOnce(Option<Vec<u32>>) -> Fut,
    Fut: Future<Output = api::Result<Json>>,
{
    let parts = parts(peers, local, |node, shards| {
        let path = with_shards(path_and_query, shards);
        async move { peers.get_json(node, &path).await }
    })
    .await?;
    Ok(merge(listing, parts, limit))
}

/// The first `limit` items of the parts in the listing's order, and the
/// cursor after them when any part may hold more.
fn merge(listing: Listing, parts: Vec<Json>, limit: usize) -> Json {
    let field = listing.field();
    let mut more = false;
    let mut items = Vec::new();
    for mut part in parts {
        more |= !part["next_cursor"].is_null();
        if let Json::Array(list) = part[field].take() {
            items.extend(list);
        }
    }
    items.sort_by_cached_key(|item| listing.key(item));
    more |= items.len() > limit;
    items.truncate(limit);
    let next = (more && items.len() == limit)
        .then(|| items.last().map(|item| listing.cursor(item)))
        .flatten();
    json!({ field: items, "next_cursor": next })
}

/// Publishes an event on every shard: `local` delivers it to this node's
/// shards, the other holders to theirs.
pub async fn publish<F, Fut>(peers: &Peers, name: &str, body: &Json, local: F) -> api::Result<Json>
where
    F: FnOnce(Option<Vec<u32>>) -> Fut,
    Fut: Future<Output = api::Result<Json>>,
{
    let path = format!("/v1/events/{}", encode(name));
    let mut parts = parts(peers, local, |node, shards| {
        let path = with_shards(&path, shards);
        async move { peers.post_json(node, &path, body).await }
    })
    .await?
    .into_iter();
    let mut answer = parts.next().unwrap_or_default();
    let (mut delivered, mut duplicate) = (
        answer["delivered"].as_u64().unwrap_or(0),
        answer["duplicate"].as_bool().unwrap_or(false),
    );
    for part in parts {
        delivered += part["delivered"].as_u64().unwrap_or(0);
        duplicate &= part["duplicate"].as_bool().unwrap_or(false);
    }
    answer["delivered"] = json!(delivered);
    answer["duplicate"] = json!(duplicate);
    Ok(answer)
}

/// Percent-encodes everything but unreserved characters (a path segment
/// or query value).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Which shards a node answers for: this node's own, and for each other
/// shard one replica that is up.
pub type Holders = (Vec<u32>, BTreeMap<u64, Vec<u32>>);

/// The error for a shard the map places nowhere.
pub fn no_replica(shard: u32) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        format!("shard {shard} has no replica in the cluster map; retry"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, updated_at: &str) -> Json {
        json!({"id": id, "updated_at": updated_at})
    }

    #[test]
    fn parts_merge_in_the_listings_order_and_continue_after_the_last() {
        let a = json!({"workflows": [summary("a", "2026-12-03T10:00:00.005Z"), summary("c", "2026-12-03T10:00:00.001Z")], "next_cursor": null});
        let b = json!({"workflows": [summary("b", "2026-12-03T10:00:00.003Z"), summary("d", "2026-12-03T10:00:00.004Z")], "next_cursor": "d"});
        let by_id = merge(Listing::Workflows, vec![a.clone(), b.clone()], 3);
        let ids: Vec<&str> = by_id["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(by_id["next_cursor"], "c");
        let newest = merge(Listing::NewestWorkflows, vec![a, b], 4);
        let ids: Vec<&str> = newest["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "d", "b", "c"]);
        // Part b said it has more: the page continues after its last item.
        assert_eq!(newest["next_cursor"], "1796292000001.c");
    }

    #[test]
    fn a_listing_that_fits_in_the_page_has_no_next_cursor() {
        let a = json!({"incidents": [{"id": "x"}], "next_cursor": null});
        let b = json!({"incidents": [], "next_cursor": null});
        let merged = merge(Listing::Incidents, vec![a, b], 10);
        assert_eq!(merged["incidents"].as_array().unwrap().len(), 1);
        assert!(merged["next_cursor"].is_null());
    }
}
