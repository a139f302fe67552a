//! The long polls registered on one topic: a slot per poll (woken with the names that
//! changed) and the per-topic list of weak entries, pruned as it grows.
#[derive(Default)]
pub(super) struct WaitSlot {
    pub(super) notify: tokio::sync::Notify,
    /// The registered topics that changed since the last `changed()`.
    pub(super) changed: std::sync::Mutex<Vec<String>>,
}

/// The long polls waiting on one topic (weak: a poll that ended leaves a dead entry;
/// unlinking each one as it ends — ten thousand woken polls, each searching a list of ten
/// thousand under the lock — was quadratic). Dead entries go at the topic's next wake-up,
/// or at a registration once they outnumber the live ones.
#[derive(Default)]
pub(super) struct WaiterList {
    pub(super) entries: Vec<std::sync::Weak<WaitSlot>>,
    /// Live entries after the last pruning: the list is pruned again once it doubles.
    pruned_len: usize,
}

impl WaiterList {
    pub(super) fn push(&mut self, w: std::sync::Weak<WaitSlot>) {
        if self.entries.len() >= 2 * self.pruned_len + 64 {
            self.prune();
        }
        self.entries.push(w);
    }

    fn prune(&mut self) {
        self.entries.retain(|w| w.strong_count() > 0);
        self.pruned_len = self.entries.len();
    }

    /// Tells every live entry that `names` changed, drops the dead ones in the same
    /// pass, and returns how many were woken.
    pub(super) fn wake(&mut self, names: &[String]) -> u64 {
        let mut woken = 0;
        self.entries.retain(|w| {
            let Some(slot) = w.upgrade() else { return false };
            {
                let mut changed = slot.changed.lock().unwrap_or_else(|e| e.into_inner());
                for name in names {
                    if !changed.contains(name) {
                        changed.push(name.clone());
                    }
                }
            }
            slot.notify.notify_one();
            woken += 1;
            true
        });
        self.pruned_len = self.entries.len();
        woken
    }
}
