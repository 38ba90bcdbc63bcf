//! Starts: claimed once, leases between processes, races, releases, supersedes.

use std::time::Duration;

use jelou_bridge::store::{now_ms, CloseClaim, StartClaim, Store, TicketState};

use super::{claimed, started, Backend, LEASE};

pub(super) async fn start_is_claimed_then_recorded_once(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    claimed(&a, "T-1").await;
    let row = a.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Starting);
    assert_eq!(row.owner.as_deref(), Some("a"));
    assert_eq!(row.bot_id.as_deref(), Some("BOT"));
    assert_eq!(row.user_id.as_deref(), Some("U-T-1"));
    assert_eq!(row.attempts, 1);
    assert!(row.lease_until.unwrap() > now_ms());

    let row = a.finish_start("T-1", "conv-1").await.unwrap();
    assert_eq!(row.state, TicketState::Active);
    assert_eq!(row.conversation_id.as_deref(), Some("conv-1"));
    assert_eq!((row.owner, row.lease_until), (None, None), "let go");

    for store in [&a, &b] {
        match store.claim_start("T-1", "BOT", "USER").await.unwrap() {
            StartClaim::AlreadyStarted(r) => {
                assert_eq!(r.conversation_id.as_deref(), Some("conv-1"))
            }
            other => panic!("a started ticket is not started again: {other:?}"),
        }
    }
    assert_eq!(
        b.find_by_conversation("conv-1")
            .await
            .unwrap()
            .unwrap()
            .ticket_id,
        "T-1"
    );
    assert!(b.find_by_conversation("conv-x").await.unwrap().is_none());
    assert!(b.get("T-none").await.unwrap().is_none());
}

pub(super) async fn live_lease_makes_others_wait_and_an_expired_one_is_taken_over(
    backend: Backend,
) {
    let lease = Duration::from_millis(400);
    let (a, b) = backend.pair(lease).await;
    claimed(&a, "T-1").await;
    assert!(
        matches!(b.claim_start("T-1", "BOT", "USER").await.unwrap(), StartClaim::Busy(r) if r.owner.as_deref() == Some("a")),
        "another process's live lease makes it wait"
    );
    claimed(&a, "T-1").await; // its own redelivery may go on

    let held = a.get("T-1").await.unwrap().unwrap();
    let before = held.lease_until.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        a.renew_leases().await.unwrap(),
        0,
        "a ticket the process holds in the store but no longer works on is not renewed"
    );
    let working = a.hold("T-1");
    assert_eq!(a.renew_leases().await.unwrap(), 1, "in flight: renewed");
    assert_eq!(b.renew_leases().await.unwrap(), 0, "b holds nothing");
    drop(working);
    let renewed = a.get("T-1").await.unwrap().unwrap().lease_until.unwrap();
    assert!(renewed > before, "renewal pushes the lease out");

    // a dies: nothing renews its lease any more.
    tokio::time::sleep(Duration::from_millis(
        (renewed - now_ms()).max(0) as u64 + 50,
    ))
    .await;
    claimed(&b, "T-1").await;
    let row = b.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.owner.as_deref(), Some("b"));
    assert_eq!(row.attempts, held.attempts + 1, "every claim counts");

    // Both called Jelou; the first conversation recorded stands.
    assert_eq!(
        a.finish_start("T-1", "conv-a")
            .await
            .unwrap()
            .conversation_id
            .as_deref(),
        Some("conv-a")
    );
    assert_eq!(
        b.finish_start("T-1", "conv-b")
            .await
            .unwrap()
            .conversation_id
            .as_deref(),
        Some("conv-a")
    );
}

pub(super) async fn one_claim_wins_a_race(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    let mut racers = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        racers.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for t in 0..10 {
                let claim = store
                    .claim_start(&format!("T-{t}"), "BOT", &format!("U-{t}"))
                    .await
                    .unwrap();
                if matches!(claim, StartClaim::Claimed { .. }) {
                    won.push((t, store.instance().to_string()));
                }
            }
            won
        }));
    }
    let mut winners = std::collections::HashMap::new();
    for r in racers {
        for (t, owner) in r.await.unwrap() {
            winners.entry(t).or_insert_with(Vec::new).push(owner);
        }
    }
    for t in 0..10 {
        let owners = &winners[&t];
        // The winner may claim again (it owns the ticket); the other process never does.
        assert!(
            owners.iter().all(|o| o == &owners[0]),
            "T-{t} claimed by two processes: {owners:?}"
        );
    }
}

/// Many concurrent claims and finishes go to the database in shared statements; two
/// processes working through the same tickets in opposite orders must still get an answer
/// for every call (on PostgreSQL, no deadlock surfaces as an error).
pub(super) async fn concurrent_claims_in_opposite_orders_all_get_answers(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    let mut workers = Vec::new();
    for w in 0..24 {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        workers.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..30 {
                let t = if w % 4 < 2 { i } else { 29 - i };
                let ticket = format!("T-{t}");
                match store.claim_start(&ticket, "BOT", &format!("U-{t}")).await {
                    Ok(StartClaim::Claimed { .. }) => {
                        let row = store.finish_start(&ticket, &format!("conv-{t}")).await;
                        assert!(row.is_ok(), "{ticket}: {row:?}");
                        won.push((t, store.instance().to_string()));
                    }
                    Ok(_) => {}
                    Err(e) => panic!("{ticket}: {e}"),
                }
            }
            won
        }));
    }
    let mut owners = std::collections::HashMap::new();
    for w in workers {
        for (t, owner) in w.await.unwrap() {
            owners.entry(t).or_insert_with(Vec::new).push(owner);
        }
    }
    for t in 0..30 {
        // One process started it (a process may claim its own ticket again, as a
        // redelivery does; the bridge's lanes keep that from happening concurrently).
        let first = &owners[&t][0];
        assert!(
            owners[&t].iter().all(|o| o == first),
            "T-{t} claimed by two processes: {:?}",
            owners[&t]
        );
        let row = a.get(&format!("T-{t}")).await.unwrap().unwrap();
        assert_eq!(row.state, TicketState::Active);
    }
}

pub(super) async fn release_lets_go_without_a_result(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    claimed(&a, "T-1").await;
    b.release("T-1", Some("not mine")).await.unwrap();
    assert_eq!(
        a.get("T-1").await.unwrap().unwrap().owner.as_deref(),
        Some("a"),
        "only the owner releases"
    );
    a.release("T-1", Some("Jelou answered 503")).await.unwrap();
    let row = a.get("T-1").await.unwrap().unwrap();
    assert_eq!(
        row.state,
        TicketState::Starting,
        "later events keep waiting"
    );
    assert_eq!((row.owner, row.lease_until), (None, None));
    assert_eq!(row.last_error.as_deref(), Some("Jelou answered 503"));
    assert!(matches!(
        b.claim_close("T-1").await.unwrap(),
        CloseClaim::Pending(_)
    ));
    claimed(&b, "T-1").await;
    a.release("T-1", None).await.unwrap();
    assert_eq!(
        b.get("T-1").await.unwrap().unwrap().owner.as_deref(),
        Some("b")
    );
}

pub(super) async fn a_failed_start_may_be_tried_again(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    claimed(&a, "T-1").await;
    a.fail_start("T-1", "422 Unprocessable").await.unwrap();
    let row = a.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Failed);
    assert_eq!(row.last_error.as_deref(), Some("422 Unprocessable"));
    assert!(matches!(
        b.claim_close("T-1").await.unwrap(),
        CloseClaim::StartFailed(_)
    ));
    claimed(&b, "T-1").await;
    assert_eq!(b.get("T-1").await.unwrap().unwrap().attempts, 2);
}

pub(super) async fn a_start_supersedes_the_users_other_tickets_unless_they_share_its_conversation(
    backend: Backend,
) {
    let (a, b) = backend.pair(LEASE).await;
    let start = |store: &Store, ticket: &'static str, conversation: &'static str| {
        let store = store.clone();
        async move {
            assert!(matches!(
                store.claim_start(ticket, "BOT", "SAME-USER").await.unwrap(),
                StartClaim::Claimed { .. }
            ));
            store.finish_start(ticket, conversation).await.unwrap();
        }
    };
    start(&a, "T-1", "conv-1").await;
    started(&a, "T-OTHER-USER", "conv-9").await;
    start(&b, "T-2", "conv-2").await;
    let first = a.get("T-1").await.unwrap().unwrap();
    assert_eq!(first.state, TicketState::Closed);
    assert_eq!(first.ended_reason.as_deref(), Some("superseded"));
    assert_eq!(
        first.conversation_id.as_deref(),
        Some("conv-1"),
        "its own id stays"
    );
    // A third ticket given the same conversation shares it: nobody is superseded.
    start(&a, "T-3", "conv-2").await;
    assert_eq!(
        a.get("T-2").await.unwrap().unwrap().state,
        TicketState::Active
    );
    assert_eq!(
        a.get("T-3").await.unwrap().unwrap().state,
        TicketState::Active
    );
    assert_eq!(
        a.get("T-OTHER-USER").await.unwrap().unwrap().state,
        TicketState::Active,
        "another user's ticket is untouched"
    );
    let open: Vec<String> = a
        .open_tickets_of("BOT", "SAME-USER", "T-3")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.ticket_id)
        .collect();
    assert_eq!(open, ["T-2"]);
}

pub(super) async fn a_start_taken_over_after_its_conversation_was_learned_says_so(
    backend: Backend,
) {
    let (a, b) = backend.pair(LEASE).await;
    claimed(&a, "T-1").await;
    // The start's answer was lost; Jelou's webhook told the store the conversation.
    b.note_conversation_started("T-1", "conv-learned", Some("room-1"))
        .await
        .unwrap();
    a.release("T-1", Some("timeout")).await.unwrap();
    assert_eq!(
        b.claim_start("T-1", "BOT", "U-T-1").await.unwrap(),
        StartClaim::Claimed {
            learned_conversation: Some("conv-learned".into())
        }
    );
}
