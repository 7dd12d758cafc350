//! The timer service: the armed timers due within a window, in due order,
//! fired into the instance that armed them.
//!
//! Timers are durable (written in the same commit as the transition that
//! armed them, with a due-order index). Memory holds only those due within
//! `timer_window` of now, per active shard: a shard's activation reads that
//! window from the index, and every quarter window the window moves on and
//! the timers it reaches are read. A timer armed beyond the window stays on
//! disk until then, so a million waiting instances cost no memory here and
//! no time at activation. A fired timer is deleted from storage when the
//! instance journals `TimerFired`; a firing lost in a crash is redone when
//! the instance is recovered.

use crate::{Command, Services};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use troupe_engine::engine::{EventKind, Millis, TimerId, TimerKind};

enum TimerCmd {
    Arm(String, TimerId, Millis),
    Cancel(String, TimerId),
    /// Holds `shard`'s timers due up to `until` (activation).
    Open {
        shard: u32,
        until: Millis,
        done: oneshot::Sender<()>,
    },
    /// Moves an open shard's window to `until`; answers the previous end
    /// (`None`: the shard is not open).
    Extend {
        shard: u32,
        until: Millis,
        done: oneshot::Sender<Option<Millis>>,
    },
    DropShard {
        shard: u32,
    },
}

/// Handle to the timer task.
pub(crate) struct TimerHandle {
    tx: mpsc::UnboundedSender<TimerCmd>,
}

impl TimerHandle {
    /// Starts the timer task, with no timer armed, and the task that moves
    /// every open shard's window along.
    pub fn start(services: Weak<Services>, shards: u32, window: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(services.clone(), shards, rx));
        tokio::spawn(move_windows(services, window));
        Self { tx }
    }

    /// Opens `shard`'s window up to `until`: timers armed from now on and
    /// due by then are held. Returns once the timer task holds it, so that
    /// a read of the window that follows misses nothing armed meanwhile.
    pub async fn open_shard(&self, shard: u32, until: Millis) {
        let (done, opened) = oneshot::channel();
        let _ = self.tx.send(TimerCmd::Open { shard, until, done });
        let _ = opened.await;
    }

    /// Moves `shard`'s window to `until`; the previous end, or `None` when
    /// the shard is not open here.
    async fn extend(&self, shard: u32, until: Millis) -> Option<Millis> {
        let (done, extended) = oneshot::channel();
        let _ = self.tx.send(TimerCmd::Extend { shard, until, done });
        extended.await.ok().flatten()
    }

    /// Forgets every timer of `shard` (it is no longer active here).
    pub fn drop_shard(&self, shard: u32) {
        let _ = self.tx.send(TimerCmd::DropShard { shard });
    }

    /// Arms (or re-arms) a timer.
    pub fn arm(&self, instance: &str, timer: TimerId, at: Millis) {
        let _ = self.tx.send(TimerCmd::Arm(instance.to_owned(), timer, at));
    }

    /// Forgets a timer.
    pub fn cancel(&self, instance: &str, timer: TimerId) {
        let _ = self.tx.send(TimerCmd::Cancel(instance.to_owned(), timer));
    }
}

/// Armed timers, compactly: one shared string per timer
/// (`instance \u{1f} kind:path:attempt`) in a due-ordered set and an index.
/// Waiting instances are passivated, so this is most of what a waiting
/// instance costs in memory.
#[derive(Default)]
struct Armed {
    due: BTreeSet<(Millis, Arc<str>)>,
    index: HashMap<Arc<str>, Millis>,
}

const SEP: char = '\u{1f}';

fn key(instance: &str, timer: &TimerId) -> Arc<str> {
    Arc::from(format!("{instance}{SEP}{timer}"))
}

/// The instance and timer a key names.
fn parse(key: &str) -> Option<(String, TimerId)> {
    let (instance, timer) = key.split_once(SEP)?;
    let (kind, rest) = timer.split_once(':')?;
    let (path, attempt) = rest.rsplit_once(':')?;
    let kind = match kind {
        "Retry" => TimerKind::Retry,
        "StartToClose" => TimerKind::StartToClose,
        "ScheduleToStart" => TimerKind::ScheduleToStart,
        "Heartbeat" => TimerKind::Heartbeat,
        "Wait" => TimerKind::Wait,
        "AwaitTimeout" => TimerKind::AwaitTimeout,
        "HumanTimeout" => TimerKind::HumanTimeout,
        "HumanEscalation" => TimerKind::HumanEscalation,
        _ => return None,
    };
    let timer = TimerId {
        kind,
        path: path.to_owned(),
        attempt: attempt.parse().ok()?,
    };
    Some((instance.to_owned(), timer))
}

impl Armed {
    fn arm(&mut self, instance: &str, timer: &TimerId, at: Millis) {
        let key = key(instance, timer);
        if let Some(old) = self.index.insert(key.clone(), at) {
            self.due.remove(&(old, key.clone()));
        }
        self.due.insert((at, key));
    }

    fn cancel(&mut self, instance: &str, timer: &TimerId) {
        let key = key(instance, timer);
        if let Some(at) = self.index.remove(&key) {
            self.due.remove(&(at, key));
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// Forgets every timer whose instance `gone` says is gone.
    fn drop_where(&mut self, gone: impl Fn(&str) -> bool) {
        self.index.retain(|key, _| {
            let instance = key.split_once(SEP).map_or(&**key, |(i, _)| i);
            !gone(instance)
        });
        let index = &self.index;
        self.due.retain(|(_, key)| index.contains_key(key));
    }

    fn next_due(&self) -> Option<Millis> {
        self.due.first().map(|(at, _)| *at)
    }

    fn pop_due(&mut self, now: Millis) -> Vec<(String, TimerId)> {
        let mut fired = Vec::new();
        while self.next_due().is_some_and(|at| at <= now) {
            let (_, key) = self.due.pop_first().expect("checked non-empty");
            self.index.remove(&key);
            match parse(&key) {
                Some(timer) => fired.push(timer),
                None => tracing::error!(key = %key, "unreadable timer key"),
            }
        }
        fired
    }
}

/// Every quarter window, moves each open shard's window to a full window
/// from now and arms the timers it reaches.
async fn move_windows(services: Weak<Services>, window: Duration) {
    let mut tick = tokio::time::interval(window / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(services) = services.upgrade() else {
            return;
        };
        let until = super::now_millis() + window.as_millis() as Millis;
        for shard in 0..services.settings.shards {
            if !services.router.is_active(shard) {
                continue;
            }
            let Some(previous) = services.timers.extend(shard, until).await else {
                continue;
            };
            let store = services.store.clone();
            let read =
                tokio::task::spawn_blocking(move || store.timers_due(shard, Some(previous), until))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|due| due.map_err(|e| e.to_string()));
            match read {
                Ok(due) => {
                    for timer in due {
                        services.timers.arm(&timer.instance, timer.timer, timer.at);
                    }
                }
                Err(error) => tracing::error!(shard_id = shard, %error, "reading due timers"),
            }
        }
    }
}

async fn run(services: Weak<Services>, shards: u32, mut rx: mpsc::UnboundedReceiver<TimerCmd>) {
    let mut timers = Armed::default();
    // The end of each open shard's window.
    let mut windows: HashMap<u32, Millis> = HashMap::new();
    loop {
        metrics::gauge!(crate::metrics::TIMERS_ARMED).set(timers.len() as f64);
        let now = super::now_millis();
        let wait = timers
            .next_due()
            .map(|at| Duration::from_millis(at.saturating_sub(now)));
        let command = match wait {
            Some(wait) => tokio::select! {
                command = rx.recv() => command,
                () = tokio::time::sleep(wait) => {
                    let Some(services) = services.upgrade() else { return };
                    for (instance, timer) in timers.pop_due(super::now_millis()) {
                        metrics::counter!(crate::metrics::TIMERS_FIRED_TOTAL).increment(1);
                        services.router().cast(&instance, Command::Event(EventKind::TimerFired { timer }));
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match command {
            Some(TimerCmd::Arm(instance, timer, at)) => {
                let shard = troupe_protocol::shard_of(&instance, shards);
                // Past the window: on disk until the window reaches it (and
                // an earlier arming of it held here no longer stands).
                if windows.get(&shard).is_none_or(|until| at <= *until) {
                    timers.arm(&instance, &timer, at);
                } else {
                    timers.cancel(&instance, &timer);
                }
            }
            Some(TimerCmd::Cancel(instance, timer)) => timers.cancel(&instance, &timer),
            Some(TimerCmd::Open { shard, until, done }) => {
                windows.insert(shard, until);
                let _ = done.send(());
            }
            Some(TimerCmd::Extend { shard, until, done }) => {
                let previous = windows.get_mut(&shard).map(|end| {
                    let previous = *end;
                    *end = until.max(previous);
                    previous
                });
                let _ = done.send(previous);
            }
            Some(TimerCmd::DropShard { shard }) => {
                windows.remove(&shard);
                timers.drop_where(|instance| troupe_protocol::shard_of(instance, shards) == shard)
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_fire_in_due_order() {
        let mut armed = Armed::default();
        let timer = |kind, path: &str, attempt| TimerId {
            kind,
            path: path.into(),
            attempt,
        };
        armed.arm("order 1", &timer(TimerKind::Wait, "nap", 0), 30);
        armed.arm("b", &timer(TimerKind::StartToClose, "fan/0/x", 2), 10);
        armed.arm("b", &timer(TimerKind::StartToClose, "fan/0/x", 2), 20);
        armed.arm("c", &timer(TimerKind::HumanEscalation, "ask", 0), 15);
        armed.cancel("c", &timer(TimerKind::HumanEscalation, "ask", 0));
        assert_eq!(armed.len(), 2);
        assert!(armed.pop_due(19).is_empty(), "re-arming moved b to 20");
        assert_eq!(
            armed.pop_due(100),
            vec![
                ("b".to_owned(), timer(TimerKind::StartToClose, "fan/0/x", 2)),
                ("order 1".to_owned(), timer(TimerKind::Wait, "nap", 0)),
            ]
        );
        assert_eq!(armed.len(), 0);
    }

    #[test]
    fn dropping_a_shard_forgets_only_its_timers() {
        let mut armed = Armed::default();
        let wait = |path: &str| TimerId {
            kind: TimerKind::Wait,
            path: path.into(),
            attempt: 0,
        };
        armed.arm("a", &wait("x"), 5);
        armed.arm("b", &wait("y"), 6);
        armed.drop_where(|instance| instance == "a");
        assert_eq!(armed.len(), 1);
        assert_eq!(armed.pop_due(10), vec![("b".to_owned(), wait("y"))]);
    }
}
