//! The node's memory budget for what costs while it runs: live instance
//! actors and worker tasks waiting in queues. Idle and finished instances
//! cost nothing here, because they are not in memory.
//!
//! Each live instance holds a [`Charge`] sized from its snapshot; each
//! queued attempt is charged while it waits. Above the soft mark the shards
//! passivate their least recently used idle instances; at the limit new
//! starts are refused as `overloaded`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a live instance actor costs beyond its state: its task, mailbox,
/// maps in its shard and allocator slack (an estimate on the safe side:
/// about 20 KB per live actor was seen with its state, most of it state).
pub const INSTANCE_OVERHEAD_BYTES: usize = 8 << 10;

/// In-memory state is larger than its encoded snapshot (maps, JSON trees,
/// strings with capacity): charge this many bytes per encoded byte.
pub const STATE_BYTES_PER_SNAPSHOT_BYTE: usize = 3;

/// What one queued task attempt costs beyond its input.
pub const QUEUED_TASK_OVERHEAD_BYTES: usize = 512;

/// Share of the limit above which idle instances are shed, in percent.
const SOFT_PERCENT: usize = 75;

/// Bytes held by live instances and queued work, against a limit.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit, bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether idle instances should be shed to make room.
    pub fn under_pressure(&self) -> bool {
        self.used() > self.limit / 100 * SOFT_PERCENT
    }

    /// Whether the budget is spent: new work is refused.
    pub fn spent(&self) -> bool {
        self.used() >= self.limit
    }

    /// Charges `bytes` (always granted: admission is decided before work
    /// is taken, not by refusing work already taken).
    pub fn charge(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::MEMORY_BUDGET_USED_BYTES).increment(bytes as f64);
    }

    /// Gives back `bytes` charged earlier.
    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::MEMORY_BUDGET_USED_BYTES).decrement(bytes as f64);
    }
}

/// Bytes charged to a budget until dropped or resized.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Charge {
    /// Charges `bytes` to `budget`.
    pub fn new(budget: &Arc<MemoryBudget>, bytes: usize) -> Self {
        budget.charge(bytes);
        Self {
            budget: budget.clone(),
            bytes,
        }
    }

    /// Changes the charge to `bytes`.
    pub fn resize(&mut self, bytes: usize) {
        if bytes > self.bytes {
            self.budget.charge(bytes - self.bytes);
        } else {
            self.budget.release(self.bytes - self.bytes.min(bytes));
        }
        self.bytes = bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// What a live instance whose snapshot encodes to `snapshot_bytes` costs.
pub fn instance_bytes(snapshot_bytes: usize) -> usize {
    INSTANCE_OVERHEAD_BYTES + snapshot_bytes * STATE_BYTES_PER_SNAPSHOT_BYTE
}

/// About how many bytes `value` takes in memory, without encoding it.
pub fn json_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    const NODE: usize = 32;
    NODE + match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(json_bytes).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + json_bytes(v)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_follow_their_owners() {
        let budget = MemoryBudget::new(1000);
        let mut a = Charge::new(&budget, 300);
        let b = Charge::new(&budget, 500);
        assert_eq!(budget.used(), 800);
        assert!(budget.under_pressure());
        assert!(!budget.spent());
        a.resize(600);
        assert!(budget.spent());
        a.resize(100);
        assert_eq!(budget.used(), 600);
        drop(b);
        drop(a);
        assert_eq!(budget.used(), 0);
        assert!(!budget.under_pressure());
    }
}
