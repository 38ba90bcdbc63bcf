//! The ticket store's contract, the same on both backends: SQLite (a temporary file) and
//! PostgreSQL (a database of each test's own). Two `Store` values with different instance
//! names stand for two bridge processes sharing the store.

use std::time::Duration;

use jelou_bridge::config::Settings;
use jelou_bridge::store::{now_ms, CloseClaim, StartClaim, Store, TicketState};
use secrecy::SecretString;

use testkit::PgDatabase;

/// Where one test's store lives; dropping it removes the file or database.
struct Backend {
    url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

impl Backend {
    async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        Backend {
            url: format!("sqlite://{}", dir.path().join("nested/store.db").display()),
            _dir: Some(dir),
            _pg: None,
        }
    }

    async fn postgres() -> Backend {
        let pg = PgDatabase::create().await;
        Backend {
            url: pg.url.clone(),
            _dir: None,
            _pg: Some(pg),
        }
    }

    /// A store as the bridge process `instance` opens it, holding tickets for `lease`.
    async fn open(&self, instance: &str, lease: Duration) -> Store {
        let mut settings = Settings::defaults().store;
        settings.url = SecretString::from(self.url.clone());
        settings.lease = lease;
        Store::connect(&settings, instance.to_string())
            .await
            .unwrap_or_else(|e| panic!("store at {} opens: {e}", self.url))
    }

    /// Two processes on one store.
    async fn pair(&self, lease: Duration) -> (Store, Store) {
        (self.open("a", lease).await, self.open("b", lease).await)
    }
}

const LEASE: Duration = Duration::from_secs(30);

async fn claimed(store: &Store, ticket: &str) {
    assert_eq!(
        store
            .claim_start(ticket, "BOT", &format!("U-{ticket}"))
            .await
            .unwrap(),
        StartClaim::Claimed {
            learned_conversation: None
        },
        "{} claims {ticket}",
        store.instance()
    );
}

async fn started(store: &Store, ticket: &str, conversation: &str) {
    claimed(store, ticket).await;
    store.finish_start(ticket, conversation).await.unwrap();
}

async fn start_is_claimed_then_recorded_once(backend: Backend) {
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

async fn live_lease_makes_others_wait_and_an_expired_one_is_taken_over(backend: Backend) {
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

async fn one_claim_wins_a_race(backend: Backend) {
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
async fn concurrent_claims_in_opposite_orders_all_get_answers(backend: Backend) {
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

async fn release_lets_go_without_a_result(backend: Backend) {
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

async fn a_failed_start_may_be_tried_again(backend: Backend) {
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

async fn close_is_claimed_once_and_recorded(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    assert_eq!(a.claim_close("T-1").await.unwrap(), CloseClaim::Unknown);
    claimed(&a, "T-1").await;
    assert!(
        matches!(b.claim_close("T-1").await.unwrap(), CloseClaim::Pending(r) if r.state == TicketState::Starting),
        "no close before the start is recorded"
    );
    a.finish_start("T-1", "conv-1").await.unwrap();

    let CloseClaim::Claimed(row) = b.claim_close("T-1").await.unwrap() else {
        panic!("an active ticket can be closed");
    };
    assert_eq!(row.state, TicketState::Closing);
    assert_eq!(row.owner.as_deref(), Some("b"));
    assert_eq!(row.conversation_id.as_deref(), Some("conv-1"));
    assert_eq!(
        (row.bot_id.as_deref(), row.user_id.as_deref()),
        (Some("BOT"), Some("U-T-1"))
    );
    assert!(matches!(
        a.claim_close("T-1").await.unwrap(),
        CloseClaim::Pending(r) if r.state == TicketState::Closing
    ));

    let row = b.finish_close("T-1", None, Some("resolved")).await.unwrap();
    assert_eq!(row.state, TicketState::Closed);
    assert_eq!(
        row.conversation_id.as_deref(),
        Some("conv-1"),
        "kept when Jelou names none"
    );
    assert_eq!(row.ended_reason.as_deref(), Some("resolved"));
    assert_eq!((row.owner, row.lease_until), (None, None));
    for store in [&a, &b] {
        assert!(matches!(
            store.claim_close("T-1").await.unwrap(),
            CloseClaim::AlreadyClosed(r) if r.conversation_id.as_deref() == Some("conv-1")
        ));
        assert!(matches!(
            store.claim_start("T-1", "BOT", "USER").await.unwrap(),
            StartClaim::AlreadyStarted(_)
        ));
    }
    let closed = a.list(Some(TicketState::Closed), 10).await.unwrap();
    assert_eq!(closed.len(), 1);
    assert!(a
        .list(Some(TicketState::Active), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn a_close_with_ids_serves_a_ticket_never_started(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    let CloseClaim::Claimed(row) = a.claim_close_unknown("T-1", "BOT", "USER").await.unwrap()
    else {
        panic!("an unknown ticket with ids can be closed");
    };
    assert_eq!(row.state, TicketState::Closing);
    assert_eq!(row.conversation_id, None);
    assert!(matches!(
        b.claim_close_unknown("T-1", "BOT", "USER").await.unwrap(),
        CloseClaim::Pending(_)
    ));
    a.fail_close("T-1", "404 no conversation").await.unwrap();
    assert_eq!(
        a.get("T-1").await.unwrap().unwrap().state,
        TicketState::Failed,
        "nothing to go back to"
    );
}

async fn a_failed_close_leaves_the_conversation_active(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    started(&a, "T-1", "conv-1").await;
    assert!(matches!(
        a.claim_close("T-1").await.unwrap(),
        CloseClaim::Claimed(_)
    ));
    a.fail_close("T-1", "422").await.unwrap();
    let row = b.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Active);
    assert_eq!(row.last_error.as_deref(), Some("422"));
    assert!(matches!(
        b.claim_close("T-1").await.unwrap(),
        CloseClaim::Claimed(_)
    ));
}

async fn jelou_webhooks_update_tickets(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    claimed(&a, "T-1").await;
    b.note_conversation_started("T-1", "conv-hook", Some("room-hook"))
        .await
        .unwrap();
    let row = a.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.conversation_id.as_deref(), Some("conv-hook"));
    assert_eq!(row.room_id.as_deref(), Some("room-hook"));
    a.finish_start("T-1", "conv-hook").await.unwrap();
    started(&a, "T-2", "conv-2").await;

    b.note_conversation_closed("conv-hook", Some("closed_by_operator"))
        .await
        .unwrap();
    let row = a.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Closed);
    assert_eq!(row.ended_reason.as_deref(), Some("closed_by_operator"));
    assert!(
        matches!(
            a.claim_close("T-1").await.unwrap(),
            CloseClaim::AlreadyClosed(_)
        ),
        "a later ticket.resolved makes no close call"
    );
    assert_eq!(
        a.get("T-2").await.unwrap().unwrap().state,
        TicketState::Active,
        "other tickets untouched"
    );
}

async fn webhook_deliveries_are_remembered_once(backend: Backend) {
    let (a, b) = backend.pair(LEASE).await;
    use jelou_bridge::store::WebhookClaim::*;
    let stale = Duration::from_millis(300);
    assert_eq!(a.claim_webhook("evt-1", stale).await.unwrap(), Claimed);
    assert_eq!(
        b.claim_webhook("evt-1", stale).await.unwrap(),
        InFlight,
        "claimed, not yet published"
    );
    a.mark_webhook_published("evt-1").await.unwrap();
    assert_eq!(
        b.claim_webhook("evt-1", stale).await.unwrap(),
        Published,
        "seen before"
    );
    assert_eq!(b.claim_webhook("evt-2", stale).await.unwrap(), Claimed);
    a.forget_webhook("evt-2").await.unwrap();
    assert_eq!(
        b.claim_webhook("evt-2", stale).await.unwrap(),
        Claimed,
        "forgotten"
    );
    // The claimer died before publishing: once its claim is stale, a repeat takes it.
    assert_eq!(a.claim_webhook("evt-3", stale).await.unwrap(), Claimed);
    tokio::time::sleep(stale + Duration::from_millis(50)).await;
    assert_eq!(
        b.claim_webhook("evt-3", stale).await.unwrap(),
        Claimed,
        "stale claim taken over"
    );
    assert_eq!(a.claim_webhook("evt-3", stale).await.unwrap(), InFlight);
}

async fn reopening_keeps_what_was_stored(backend: Backend) {
    let a = backend.open("a", LEASE).await;
    started(&a, "T-1", "conv-1").await;
    a.ping().await.unwrap();
    a.close().await;
    let again = backend.open("a2", LEASE).await; // migrations run again, harmlessly
    assert_eq!(
        again
            .get("T-1")
            .await
            .unwrap()
            .unwrap()
            .conversation_id
            .as_deref(),
        Some("conv-1")
    );
}

/// Each contract check, once per backend: `store::sqlite::<check>` and `store::postgres::<check>`.
async fn a_start_supersedes_the_users_other_tickets_unless_they_share_its_conversation(
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

async fn a_start_taken_over_after_its_conversation_was_learned_says_so(backend: Backend) {
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

async fn a_resolve_of_an_unknown_ticket_without_ids_is_recorded(backend: Backend) {
    let (a, _) = backend.pair(LEASE).await;
    assert_eq!(
        a.resolve_unstarted("T-1").await.unwrap(),
        CloseClaim::Unknown
    );
    let row = a.get("T-1").await.unwrap().unwrap();
    assert_eq!(row.state, TicketState::Closed);
    assert_eq!(row.ended_reason.as_deref(), Some("never_started"));
    // An open afterwards starts nothing.
    assert!(matches!(
        a.claim_start("T-1", "BOT", "U").await.unwrap(),
        StartClaim::AlreadyStarted(r) if r.state == TicketState::Closed
    ));
}

macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $check() {
                    super::$check(super::Backend::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $check() {
                    super::$check(super::Backend::postgres().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    start_is_claimed_then_recorded_once,
    live_lease_makes_others_wait_and_an_expired_one_is_taken_over,
    one_claim_wins_a_race,
    concurrent_claims_in_opposite_orders_all_get_answers,
    release_lets_go_without_a_result,
    a_failed_start_may_be_tried_again,
    close_is_claimed_once_and_recorded,
    a_close_with_ids_serves_a_ticket_never_started,
    a_failed_close_leaves_the_conversation_active,
    jelou_webhooks_update_tickets,
    webhook_deliveries_are_remembered_once,
    reopening_keeps_what_was_stored,
    a_start_supersedes_the_users_other_tickets_unless_they_share_its_conversation,
    a_start_taken_over_after_its_conversation_was_learned_says_so,
    a_resolve_of_an_unknown_ticket_without_ids_is_recorded,
);

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_is_created_on_first_use_in_wal_mode() {
    use sqlx::Connection as _;
    let backend = Backend::sqlite().await;
    let store = backend.open("a", LEASE).await;
    started(&store, "T-1", "conv-1").await;
    let path = backend.url.trim_start_matches("sqlite://").to_string();
    assert!(std::path::Path::new(&path).is_file(), "{path} created");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}
