//! Callers waiting for instances to end.

use serde_json::Value as Json;
use std::collections::HashMap;
use tokio::sync::oneshot;

/// Callers waiting for instances to reach a terminal state.
#[derive(Default)]
pub struct FinishWaiters {
    waiting: std::sync::Mutex<HashMap<String, Vec<oneshot::Sender<Json>>>>,
}

impl FinishWaiters {
    /// A receiver that resolves when `id` ends (register before reading the
    /// instance's status, so that no ending falls between the two).
    pub fn wait(&self, id: &str) -> oneshot::Receiver<Json> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().expect("waiters lock");
        let list = waiting.entry(id.to_owned()).or_default();
        list.retain(|tx| !tx.is_closed());
        list.push(tx);
        rx
    }

    /// Instances someone waits for.
    pub fn len(&self) -> usize {
        self.waiting.lock().expect("waiters lock").len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the waiters of `id` that gave up.
    pub fn forget_closed(&self, id: &str) {
        let mut waiting = self.waiting.lock().expect("waiters lock");
        if let Some(list) = waiting.get_mut(id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiting.remove(id);
            }
        }
    }

    /// Hands the final view (rendered only if someone waits) to the waiters.
    pub(crate) fn notify(&self, id: &str, view: impl FnOnce() -> Json) {
        let Some(list) = self.waiting.lock().expect("waiters lock").remove(id) else {
            return;
        };
        let view = view();
        for tx in list {
            let _ = tx.send(view.clone());
        }
    }
}
