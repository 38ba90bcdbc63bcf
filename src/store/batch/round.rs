//! A round of the batching writer: the writes it takes from those queued, one per ticket.

use std::collections::{HashSet, VecDeque};

use tokio::sync::{mpsc, oneshot};

use super::{Claim, Finish, Write};

/// Most rows in one statement. It also bounds how many distinct statements (one per batch
/// size) the driver keeps prepared.
pub(in crate::store) const MAX_BATCH: usize = 32;

/// What one round writes, taken from the queued writes; the rest wait for the next round.
pub(in crate::store) struct Round {
    pub(in crate::store) claims: Vec<Claim>,
    pub(in crate::store) finishes: Vec<Finish>,
    pub(in crate::store) closing: Vec<oneshot::Sender<()>>,
}

/// The writes queued (and those waiting in `rx`) that go in the next round: one row per
/// ticket (a second write of the same ticket waits for the next round, after the first is
/// done), at most [`MAX_BATCH`] of each kind.
pub(in crate::store) fn next_round(
    queued: &mut VecDeque<Write>,
    rx: &mut mpsc::UnboundedReceiver<Write>,
) -> Round {
    while let Ok(w) = rx.try_recv() {
        queued.push_back(w);
    }
    let (mut claims, mut finishes) = (Vec::new(), Vec::new());
    let (mut claimed_ids, mut finished_ids) = (HashSet::new(), HashSet::new());
    let mut later = VecDeque::new();
    let mut closing = Vec::new();
    for w in queued.drain(..) {
        match w {
            Write::Close(done) => closing.push(done),
            Write::Claim(c)
                if claims.len() < MAX_BATCH && claimed_ids.insert(c.ticket_id.clone()) =>
            {
                claims.push(c)
            }
            Write::Finish(f)
                if finishes.len() < MAX_BATCH && finished_ids.insert(f.ticket_id.clone()) =>
            {
                finishes.push(f)
            }
            other => later.push_back(other),
        }
    }
    *queued = later;
    Round {
        claims,
        finishes,
        closing,
    }
}
