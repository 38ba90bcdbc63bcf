//! The ticket store's contract, the same on both backends: SQLite (a temporary file) and
//! PostgreSQL (a database of each test's own). Two `Store` values with different instance
//! names stand for two bridge processes sharing the store.

use std::time::Duration;

use jelou_bridge::config::Settings;
use jelou_bridge::store::{StartClaim, Store};
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

mod closes;
mod starts;
mod webhooks;
use closes::*;
use starts::*;
use webhooks::*;

/// Each contract check, once per backend: `store::sqlite::<check>` and `store::postgres::<check>`.
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
