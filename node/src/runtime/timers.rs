//! The timer service: every armed timer, in due order, fired into the
//! instance that armed it.
//!
//! Timers are durable in the `timers` column family (written in the same
//! commit as the transition that armed them) and loaded here at start. A fired
//! timer is deleted from storage when the instance journals `TimerFired`; a
//! firing lost in a crash is redone when the instance is recovered.

use super::{Command, Services};
use crate::store::TimerRecord;
use std::collections::{BTreeSet, HashMap};
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use troupe_actors::engine::{EventKind, Millis, TimerId};

enum TimerCmd {
    Arm(String, TimerId, Millis),
    Cancel(String, TimerId),
}

/// Handle to the timer task.
pub(super) struct TimerHandle {
    tx: mpsc::UnboundedSender<TimerCmd>,
    go: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl TimerHandle {
    /// Starts the timer task with the timers already armed on disk; it fires
    /// nothing until [`TimerHandle::begin`].
    pub fn start(services: Weak<Services>, armed: Vec<TimerRecord>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (go, wait) = oneshot::channel();
        tokio::spawn(async move {
            if wait.await.is_ok() {
                run(services, armed, rx).await;
            }
        });
        Self {
            tx,
            go: std::sync::Mutex::new(Some(go)),
        }
    }

    /// Lets timers fire (once the router exists).
    pub fn begin(&self) {
        if let Some(go) = self.go.lock().expect("timer lock").take() {
            let _ = go.send(());
        }
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

#[derive(Default)]
struct Armed {
    due: BTreeSet<(Millis, String, TimerId)>,
    index: HashMap<(String, TimerId), Millis>,
}

impl Armed {
    fn arm(&mut self, instance: String, timer: TimerId, at: Millis) {
        self.cancel(&instance, &timer);
        self.index.insert((instance.clone(), timer.clone()), at);
        self.due.insert((at, instance, timer));
    }

    fn cancel(&mut self, instance: &str, timer: &TimerId) {
        if let Some(at) = self.index.remove(&(instance.to_owned(), timer.clone())) {
            self.due.remove(&(at, instance.to_owned(), timer.clone()));
        }
    }

    fn pop_due(&mut self, now: Millis) -> Vec<(String, TimerId)> {
        let mut fired = Vec::new();
        while let Some((at, _, _)) = self.due.first() {
            if *at > now {
                break;
            }
            let (_, instance, timer) = self.due.pop_first().expect("checked non-empty");
            self.index.remove(&(instance.clone(), timer.clone()));
            fired.push((instance, timer));
        }
        fired
    }
}

async fn run(
    services: Weak<Services>,
    armed: Vec<TimerRecord>,
    mut rx: mpsc::UnboundedReceiver<TimerCmd>,
) {
    let mut timers = Armed::default();
    for record in armed {
        timers.arm(record.instance, record.timer, record.at);
    }
    loop {
        metrics::gauge!(crate::metrics::TIMERS_ARMED).set(timers.index.len() as f64);
        let now = super::now_millis();
        let wait = timers
            .due
            .first()
            .map(|(at, _, _)| Duration::from_millis(at.saturating_sub(now)));
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
            Some(TimerCmd::Arm(instance, timer, at)) => timers.arm(instance, timer, at),
            Some(TimerCmd::Cancel(instance, timer)) => timers.cancel(&instance, &timer),
            None => return,
        }
    }
}
