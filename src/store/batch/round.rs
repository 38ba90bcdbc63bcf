//! A round of the batching writer: the writes it takes from those queued, one per ticket.

use std::collections::VecDeque;

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
    let (mut claims, mut finishes) = (Vec::<Claim>::new(), Vec::<Finish>::new());
    // At most MAX_BATCH of each: a look along the round is cheaper than a set of copied ids.
    let mut later = VecDeque::new();
    let mut closing = Vec::new();
    for w in queued.drain(..) {
        match w {
            Write::Close(done) => closing.push(done),
            Write::Claim(c)
                if claims.len() < MAX_BATCH
                    && !claims.iter().any(|o| o.ticket_id == c.ticket_id) =>
            {
                claims.push(c)
            }
            Write::Finish(f)
                if finishes.len() < MAX_BATCH
                    && !finishes.iter().any(|o| o.ticket_id == f.ticket_id) =>
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

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(ticket_id: &str) -> Write {
        Write::Claim(Claim {
            ticket_id: ticket_id.into(),
            bot_id: "B".into(),
            user_id: "U".into(),
            traceparent: None,
            done: oneshot::channel().0,
        })
    }

    fn finish(ticket_id: &str) -> Write {
        Write::Finish(Finish {
            ticket_id: ticket_id.into(),
            conversation_id: "C".into(),
            done: oneshot::channel().0,
        })
    }

    fn ids(writes: &VecDeque<Write>) -> Vec<String> {
        writes
            .iter()
            .map(|w| match w {
                Write::Claim(c) => format!("claim {}", c.ticket_id),
                Write::Finish(f) => format!("finish {}", f.ticket_id),
                Write::Close(_) => "close".into(),
            })
            .collect()
    }

    /// A round holds one write of each kind per ticket and at most MAX_BATCH of each kind;
    /// what it leaves waits, in its order, with what arrived on the channel after it.
    #[test]
    fn a_round_takes_one_write_per_ticket_and_kind_up_to_the_batch_size() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut queued: VecDeque<Write> = [claim("T-1"), finish("T-1"), claim("T-1")]
            .into_iter()
            .collect();
        for i in 0..MAX_BATCH + 2 {
            tx.send(claim(&format!("N-{i}"))).unwrap();
        }
        tx.send(finish("T-1")).unwrap();
        tx.send(finish("T-2")).unwrap();
        let round = next_round(&mut queued, &mut rx);
        let claimed: Vec<&str> = round.claims.iter().map(|c| c.ticket_id.as_str()).collect();
        let finished: Vec<&str> = round
            .finishes
            .iter()
            .map(|f| f.ticket_id.as_str())
            .collect();
        assert_eq!(claimed.len(), MAX_BATCH);
        assert_eq!(claimed[..3], ["T-1", "N-0", "N-1"]);
        assert_eq!(finished, ["T-1", "T-2"]);
        assert_eq!(
            ids(&queued),
            [
                "claim T-1".to_string(),
                format!("claim N-{}", MAX_BATCH - 1),
                format!("claim N-{}", MAX_BATCH),
                format!("claim N-{}", MAX_BATCH + 1),
                "finish T-1".to_string(),
            ]
        );
    }
}
