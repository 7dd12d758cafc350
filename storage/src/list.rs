//! Listing instances through the secondary indexes, so that a page reads
//! about what it returns: one iterator per shard over the index that fits
//! the query, merged in order, heads read only for the entries taken.

use crate::error::Result;
use crate::keys::{self, Table};
use crate::records::InstanceHead;
use crate::store::Store;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use troupe_engine::engine::InstanceStatus;

/// The order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListOrder {
    /// By instance id.
    #[default]
    Id,
    /// Most recently updated first.
    NewestFirst,
}

/// Which instances to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this status.
    pub status: Option<InstanceStatus>,
    /// Only this definition.
    pub definition: Option<String>,
    /// Order.
    pub order: ListOrder,
    /// Where the previous page ended ([`Page::next`]).
    pub cursor: Option<String>,
    /// Most instances returned.
    pub limit: usize,
    /// Only these shards (every shard when `None`): a node holding some
    /// shards lists those, and a listing across the cluster merges them.
    pub shards: Option<Vec<u32>>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    /// The instances.
    pub items: Vec<InstanceHead>,
    /// Cursor of the next page, when there may be one.
    pub next: Option<String>,
}

/// One shard's position in an index: the rest of the key after the shard
/// (what orders entries across shards) and the instance id it names.
struct Head {
    order: Vec<u8>,
    id: String,
    shard: u32,
    /// Position of the shard's iterator.
    slot: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order.cmp(&other.order)
    }
}

impl Store {
    /// A page of instances matching `query`.
    pub fn list(&self, query: &ListQuery) -> Result<Page> {
        let limit = query.limit.max(1);
        // The index that fits: it yields candidates in the wanted order and
        // already applies one filter; the other filters are checked on the
        // head.
        let (table, prefix_of): (Table, Box<dyn Fn(u32) -> Vec<u8>>) =
            match (query.order, query.status, &query.definition) {
                (ListOrder::NewestFirst, _, _) => (Table::ByUpdated, Box::new(keys::shard_start)),
                (ListOrder::Id, Some(status), _) => (
                    Table::ByStatus,
                    Box::new(move |shard| keys::by_status(shard, status, "")),
                ),
                (ListOrder::Id, None, Some(definition)) => {
                    let definition = definition.clone();
                    (
                        Table::ByDefinition,
                        Box::new(move |shard| keys::by_definition(shard, &definition, "")),
                    )
                }
                (ListOrder::Id, None, None) => (Table::Instances, Box::new(keys::shard_start)),
            };
        let after = query
            .cursor
            .as_deref()
            .map(|c| cursor_order(query.order, c));
        let cf = self.cf(table.cf());
        let mut iters = Vec::new();
        let mut heap = BinaryHeap::new();
        let shards: Vec<u32> = match &query.shards {
            Some(only) => only
                .iter()
                .copied()
                .filter(|s| *s < self.shards())
                .collect(),
            None => (0..self.shards()).collect(),
        };
        for (slot, &shard) in shards.iter().enumerate() {
            let prefix = prefix_of(shard);
            let mut iter = self.db.raw_iterator_cf(cf);
            match &after {
                Some(order) => {
                    let mut start = keys::shard_start(shard);
                    start.extend_from_slice(&prefix[4..]);
                    start.extend_from_slice(order);
                    iter.seek(&start);
                    if iter.valid() && iter.key() == Some(start.as_slice()) {
                        iter.next();
                    }
                }
                None => iter.seek(&prefix),
            }
            if let Some(head) = head(&iter, (shard, slot), &prefix, query.order) {
                heap.push(Reverse(head));
            }
            iters.push((iter, prefix));
        }
        let mut items = Vec::new();
        let mut last = None;
        while let Some(Reverse(top)) = heap.pop() {
            let (iter, prefix) = &mut iters[top.slot];
            iter.next();
            if let Some(next) = head(iter, (top.shard, top.slot), prefix, query.order) {
                heap.push(Reverse(next));
            }
            iter.status()?;
            let Some(head) = self.instance_head(top.shard, &top.id)? else {
                continue;
            };
            let wanted = query.status.is_none_or(|s| s == head.status)
                && query
                    .definition
                    .as_ref()
                    .is_none_or(|d| *d == head.definition);
            last = Some(top);
            if wanted {
                items.push(head);
                if items.len() == limit {
                    break;
                }
            }
        }
        let next = (items.len() == limit)
            .then(|| last.map(|head| cursor_of(query.order, &head.order)))
            .flatten();
        Ok(Page { items, next })
    }
}

/// The entry an iterator is on, if it is still inside `prefix`.
fn head(
    iter: &rocksdb::DBRawIteratorWithThreadMode<'_, rocksdb::DB>,
    (shard, slot): (u32, usize),
    prefix: &[u8],
    order: ListOrder,
) -> Option<Head> {
    let key = iter.key().filter(|k| k.starts_with(prefix))?;
    let order_bytes = key[prefix.len()..].to_vec();
    let id = match order {
        ListOrder::Id => String::from_utf8(order_bytes.clone()).ok()?,
        ListOrder::NewestFirst => keys::parse_by_updated(key)?.1,
    };
    Some(Head {
        order: order_bytes,
        id,
        shard,
        slot,
    })
}

/// A cursor as text: the id, or for recency `updated_at.id`.
fn cursor_of(order: ListOrder, bytes: &[u8]) -> String {
    match order {
        ListOrder::Id => String::from_utf8_lossy(bytes).into_owned(),
        ListOrder::NewestFirst => {
            let inverted = bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes);
            format!(
                "{}.{}",
                !inverted,
                String::from_utf8_lossy(&bytes[8.min(bytes.len())..])
            )
        }
    }
}

/// The index bytes after the shard that a cursor stands for.
fn cursor_order(order: ListOrder, cursor: &str) -> Vec<u8> {
    match order {
        ListOrder::Id => cursor.as_bytes().to_vec(),
        ListOrder::NewestFirst => {
            let (at, id) = cursor.split_once('.').unwrap_or(("0", cursor));
            let at: u64 = at.parse().unwrap_or(0);
            let mut bytes = (!at).to_be_bytes().to_vec();
            bytes.extend_from_slice(id.as_bytes());
            bytes
        }
    }
}
