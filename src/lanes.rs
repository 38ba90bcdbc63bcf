//! Per-ticket order inside one process: deliveries of one ticket run one after the other, in
//! the order they were received, while different tickets run concurrently.
//!
//! [`TicketLanes::enter`] is called by the consumer loop in delivery order, before the work
//! is spawned; each entry waits for the one before it on the same ticket to finish.

use std::sync::{Arc, Mutex};

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;

use tokio::sync::oneshot;

/// The last entry of one ticket's lane: its sequence number and the receiver that fires
/// when it is done (taken by the entry after it).
type Tail = (u64, Option<oneshot::Receiver<()>>);

#[derive(Default)]
pub struct TicketLanes {
    /// Per ticket: the sequence number of the last entry and the receiver that fires when it
    /// is done. Entries remove themselves when they finish last. Hashed with foldhash
    /// (seeded per process), not SipHash: two lookups a delivery.
    tails: Mutex<HashMap<String, Tail>>,
    next_seq: std::sync::atomic::AtomicU64,
}

/// A place in a ticket's lane; dropping it lets the next one run.
pub struct LanePlace {
    lanes: Arc<TicketLanes>,
    key: String,
    seq: u64,
    before: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl TicketLanes {
    pub fn enter(self: &Arc<Self>, ticket_id: &str) -> LanePlace {
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
        let before = tails
            .insert(ticket_id.to_string(), (seq, Some(rx)))
            .and_then(|(_, rx)| rx);
        LanePlace {
            lanes: self.clone(),
            key: ticket_id.to_string(),
            seq,
            before,
            _done: tx,
        }
    }

    /// Tickets with work queued or running (for tests and metrics).
    pub fn len(&self) -> usize {
        self.tails.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LanePlace {
    /// Waits until every earlier delivery of this ticket has finished.
    pub async fn wait_turn(&mut self) {
        if let Some(before) = self.before.take() {
            // Err means the earlier entry was dropped: finished either way.
            let _ = before.await;
        }
    }
}

impl Drop for LanePlace {
    fn drop(&mut self) {
        let mut tails = self.lanes.tails.lock().unwrap_or_else(|e| e.into_inner());
        if let EntryRef::Occupied(tail) = tails.entry_ref(self.key.as_str()) {
            if tail.get().0 == self.seq {
                tail.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_ticket_runs_in_entry_order_others_in_parallel() {
        let lanes = Arc::new(TicketLanes::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for (i, ticket, ms) in [(0, "A", 60), (1, "A", 10), (2, "B", 0), (3, "A", 0)] {
            let mut place = lanes.enter(ticket);
            let log = log.clone();
            handles.push(tokio::spawn(async move {
                place.wait_turn().await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                log.lock().unwrap().push(i);
                drop(place);
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 0, 1, 3]);
        assert!(lanes.is_empty());
    }
}
