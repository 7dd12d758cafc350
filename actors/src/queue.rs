//! Task queues for workers: one FIFO per task type, fed by dispatches of task
//! types the node does not run itself (and by the outbox on recovery), and
//! drained by polls and streams, never beyond the credit a worker granted.
//!
//! The queues are memory only: the durable copy of every queued attempt is
//! its `outbox` entry, which recovery puts back here after a restart.

use crate::budget::{MemoryBudget, QUEUED_TASK_OVERHEAD_BYTES, json_bytes};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use troupe_engine::engine::TaskDispatch;

/// An attempt waiting for (or handed to) a worker.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Instance id.
    pub instance: String,
    /// The attempt.
    pub dispatch: TaskDispatch,
}

/// Where a waiter receives the attempts handed to it.
pub type Inbox = mpsc::UnboundedSender<Queued>;

/// A poll or stream waiting for tasks.
struct Waiter {
    id: u64,
    task_types: Vec<String>,
    credit: u32,
    inbox: Inbox,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<String, VecDeque<Queued>>,
    waiters: Vec<Waiter>,
    /// Where the next push starts looking, so that workers take turns.
    turn: usize,
    queued: usize,
    /// Estimated bytes of the queued attempts.
    bytes: usize,
    next_waiter: u64,
}

/// What a queued attempt costs in memory.
fn cost(task: &Queued) -> usize {
    QUEUED_TASK_OVERHEAD_BYTES
        + task.instance.len()
        + task.dispatch.path.len()
        + json_bytes(&task.dispatch.input)
}

impl Inner {
    /// Hands queued attempts to the waiter at `index` while it has credit.
    fn feed(&mut self, index: usize) {
        let waiter = &mut self.waiters[index];
        for task_type in &waiter.task_types {
            let Some(queue) = self.queues.get_mut(task_type) else {
                continue;
            };
            while waiter.credit > 0 {
                let Some(task) = queue.pop_front() else { break };
                waiter.credit -= 1;
                let size = cost(&task);
                match waiter.inbox.send(task) {
                    Ok(()) => {
                        self.queued -= 1;
                        self.bytes -= size;
                    }
                    Err(returned) => {
                        queue.push_front(returned.0);
                        waiter.credit = 0;
                    }
                }
            }
        }
    }

    fn enqueue(&mut self, task: Queued, front: bool) {
        self.queued += 1;
        self.bytes += cost(&task);
        let queue = self
            .queues
            .entry(task.dispatch.task_type.clone())
            .or_default();
        if front {
            queue.push_front(task);
        } else {
            queue.push_back(task);
        }
    }
}

/// The queues of one node; what waits in them is charged to the node's
/// memory budget.
pub struct TaskQueues {
    inner: Mutex<Inner>,
    budget: Arc<MemoryBudget>,
    /// Bytes charged to the budget (updated under the lock).
    charged: Mutex<usize>,
}

impl TaskQueues {
    /// Empty queues charging `budget`.
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self {
            inner: Mutex::default(),
            budget,
            charged: Mutex::new(0),
        }
    }

    /// Brings the gauge and the budget in line with the queues.
    fn settle(&self, inner: &Inner) {
        metrics::gauge!(crate::metrics::TASKS_QUEUED).set(inner.queued as f64);
        let mut charged = self.charged.lock().expect("charge lock");
        if inner.bytes > *charged {
            self.budget.charge(inner.bytes - *charged);
        } else {
            self.budget.release(*charged - inner.bytes);
        }
        *charged = inner.bytes;
    }

    /// Queues an attempt, or hands it straight to a waiter with credit.
    pub fn push(&self, instance: &str, dispatch: TaskDispatch) {
        let mut task = Queued {
            instance: instance.to_owned(),
            dispatch,
        };
        let mut inner = self.inner.lock().expect("queue lock");
        let task_type = task.dispatch.task_type.clone();
        let count = inner.waiters.len();
        for n in 0..count {
            let index = (inner.turn + n) % count;
            let waiter = &mut inner.waiters[index];
            if waiter.credit == 0 || !waiter.task_types.contains(&task_type) {
                continue;
            }
            match waiter.inbox.send(task) {
                Ok(()) => {
                    waiter.credit -= 1;
                    inner.turn = index + 1;
                    return;
                }
                Err(returned) => {
                    waiter.credit = 0;
                    task = returned.0;
                }
            }
        }
        inner.enqueue(task, false);
        self.settle(&inner);
    }

    /// Removes a queued attempt that should no longer run. An attempt already
    /// handed out is not recalled: its late result is ignored by the engine.
    pub fn cancel(&self, instance: &str, path: &str, attempt: u32) -> bool {
        let mut inner = self.inner.lock().expect("queue lock");
        let (mut removed, mut bytes) = (0, 0);
        for queue in inner.queues.values_mut() {
            queue.retain(|t| {
                let keep = !(t.instance == instance
                    && t.dispatch.path == path
                    && t.dispatch.attempt == attempt);
                if !keep {
                    removed += 1;
                    bytes += cost(t);
                }
                keep
            });
        }
        inner.queued -= removed;
        inner.bytes -= bytes;
        self.settle(&inner);
        removed > 0
    }

    /// Registers a waiter for `task_types` with `credit`; it is fed at once
    /// from what is queued.
    pub fn register(&self, task_types: Vec<String>, credit: u32, inbox: Inbox) -> u64 {
        let mut inner = self.inner.lock().expect("queue lock");
        inner.next_waiter += 1;
        let id = inner.next_waiter;
        inner.waiters.push(Waiter {
            id,
            task_types,
            credit,
            inbox,
        });
        let index = inner.waiters.len() - 1;
        inner.feed(index);
        self.settle(&inner);
        id
    }

    /// Grants a waiter more credit and feeds it.
    pub fn add_credit(&self, waiter: u64, credit: u32) -> bool {
        let mut inner = self.inner.lock().expect("queue lock");
        let Some(index) = inner.waiters.iter().position(|w| w.id == waiter) else {
            return false;
        };
        let w = &mut inner.waiters[index];
        w.credit = w.credit.saturating_add(credit);
        inner.feed(index);
        self.settle(&inner);
        true
    }

    /// Removes a waiter; attempts it received but never passed on go back to
    /// the front of their queues.
    pub fn unregister(&self, waiter: u64, undelivered: Vec<Queued>) {
        let mut inner = self.inner.lock().expect("queue lock");
        inner.waiters.retain(|w| w.id != waiter);
        for task in undelivered.into_iter().rev() {
            inner.enqueue(task, true);
        }
        for index in 0..inner.waiters.len() {
            inner.feed(index);
        }
        self.settle(&inner);
    }

    /// Keeps only the queued attempts of instances for which `keep` holds
    /// (the others' shard left this node; their outbox entries remain).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut inner = self.inner.lock().expect("queue lock");
        let (mut removed, mut bytes) = (0, 0);
        for queue in inner.queues.values_mut() {
            queue.retain(|t| {
                let kept = keep(&t.instance);
                if !kept {
                    removed += 1;
                    bytes += cost(t);
                }
                kept
            });
        }
        inner.queued -= removed;
        inner.bytes -= bytes;
        self.settle(&inner);
    }

    /// Attempts waiting for a worker.
    pub fn queued(&self) -> usize {
        self.inner.lock().expect("queue lock").queued
    }
}

/// Attempts leased to workers whose `TaskStarted` is not applied yet.
///
/// Journaling `TaskStarted` at every lease would cost a commit per task.
/// When the step has no schedule-to-start or heartbeat timeout (which need
/// it at once), the start waits here: the worker's report carries it into
/// the same commit, and an attempt still unreported after [`START_DELAY`]
/// has its start applied on its own, renewing its lease from about then.
#[derive(Default)]
pub struct PendingStarts {
    pending: Mutex<HashMap<(String, String, u32), std::time::Instant>>,
}

/// Longest wait before a deferred start is applied on its own.
pub const START_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

impl PendingStarts {
    /// Whether an attempt's start can wait for its report.
    pub fn can_defer(dispatch: &TaskDispatch) -> bool {
        dispatch.heartbeat_ms.is_none()
            && dispatch.schedule_to_start_ms.is_none()
            && dispatch.start_to_close_ms >= 4 * START_DELAY.as_millis() as u64
    }

    /// Records a leased attempt.
    pub fn add(&self, instance: &str, path: &str, attempt: u32) {
        self.pending.lock().expect("starts lock").insert(
            (instance.to_owned(), path.to_owned(), attempt),
            std::time::Instant::now(),
        );
    }

    /// Takes an attempt's deferred start, if it is still pending.
    pub fn take(&self, instance: &str, path: &str, attempt: u32) -> bool {
        let key = (instance.to_owned(), path.to_owned(), attempt);
        self.pending
            .lock()
            .expect("starts lock")
            .remove(&key)
            .is_some()
    }

    /// Keeps only the pending starts of instances for which `keep` holds.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.pending
            .lock()
            .expect("starts lock")
            .retain(|(instance, _, _), _| keep(instance));
    }

    /// Takes the starts that waited longer than [`START_DELAY`].
    pub fn due(&self) -> Vec<(String, String, u32)> {
        let mut pending = self.pending.lock().expect("starts lock");
        let due: Vec<_> = pending
            .iter()
            .filter(|(_, at)| at.elapsed() >= START_DELAY)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &due {
            pending.remove(key);
        }
        due
    }
}

/// Tokens name an attempt in complete, fail and heartbeat calls: the
/// instance id, task path and attempt, hex-encoded so they fit in a URL.
pub mod token {
    /// The token of an attempt.
    pub fn encode(instance: &str, path: &str, attempt: u32) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let plain = format!("{instance}\n{path}\n{attempt}");
        let mut out = String::with_capacity(plain.len() * 2);
        for b in plain.bytes() {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
        out
    }

    /// The attempt a token names, if it is well formed.
    pub fn decode(token: &str) -> Option<(String, String, u32)> {
        if !token.len().is_multiple_of(2) || token.len() > 2048 {
            return None;
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let plain = String::from_utf8(bytes).ok()?;
        let mut parts = plain.splitn(3, '\n');
        let instance = parts.next()?.to_owned();
        let path = parts.next()?.to_owned();
        let attempt = parts.next()?.parse().ok()?;
        Some((instance, path, attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dispatch(task_type: &str, path: &str) -> TaskDispatch {
        TaskDispatch {
            path: path.into(),
            task_type: task_type.into(),
            attempt: 1,
            input: json!(null),
            idempotency_key: format!("i/{path}/1"),
            start_to_close_ms: 1000,
            heartbeat_ms: None,
            schedule_to_start_ms: None,
        }
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let token = token::encode("order 1/x", "fulfil/0/reserve", 3);
        assert_eq!(
            token::decode(&token),
            Some(("order 1/x".into(), "fulfil/0/reserve".into(), 3))
        );
        for bad in ["", "zz", "abc", "6869", &"00".repeat(2000)] {
            assert_eq!(token::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn waiters_get_no_more_than_their_credit() {
        let budget = MemoryBudget::new(1 << 20);
        let queues = TaskQueues::new(budget.clone());
        for n in 0..5 {
            queues.push("i", dispatch("a", &format!("s{n}")));
        }
        queues.push("i", dispatch("b", "other"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let waiter = queues.register(vec!["a".into()], 2, tx);
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].dispatch.path, "s0");
        assert_eq!(queues.queued(), 4);
        assert!(queues.add_credit(waiter, 10));
        let more: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(more.len(), 3, "only type a");
        queues.push("i", dispatch("a", "late"));
        assert_eq!(rx.try_recv().unwrap().dispatch.path, "late");
        queues.unregister(waiter, got);
        assert_eq!(queues.queued(), 3, "undelivered attempts are queued again");
        let cost =
            |path: &str| QUEUED_TASK_OVERHEAD_BYTES + 1 + path.len() + json_bytes(&json!(null));
        assert_eq!(
            budget.used(),
            cost("s0") + cost("s1") + cost("other"),
            "queued attempts are charged"
        );
    }

    #[test]
    fn cancelled_attempts_leave_the_queue() {
        let budget = MemoryBudget::new(1 << 20);
        let queues = TaskQueues::new(budget.clone());
        queues.push("i", dispatch("a", "s"));
        queues.push("j", dispatch("a", "s"));
        queues.cancel("i", "s", 1);
        queues.cancel("i", "s", 2);
        assert_eq!(queues.queued(), 1);
        let (tx, mut rx) = mpsc::unbounded_channel();
        queues.register(vec!["a".into()], 5, tx);
        assert_eq!(rx.try_recv().unwrap().instance, "j");
        assert_eq!(budget.used(), 0, "nothing queued, nothing charged");
    }
}
