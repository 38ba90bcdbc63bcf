//! Upgrades: the previous release's binary (built from its git tag by
//! `scripts/build-previous.sh`, found through `JB_PREVIOUS_BIN`) writes the store and leaves
//! messages parked, dead-lettered or in flight; this release takes over on the same store and
//! queues. Nothing is lost, nothing is started twice, and a ticket the previous release
//! started is resolved by its id alone. And a rolling upgrade: both releases side by side on
//! one PostgreSQL store and one queue, the old one stopped half-way.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jelou_bridge::amqp::{header_i64, headers};
use jelou_bridge::jelou::mock::RecordedCall;
use jelou_bridge::jelou::Endpoint;
use jelou_bridge::store::now_ms;
use jelou_bridge::store::schema::{self, Compatibility};
use lapin::options::BasicGetOptions;

use crate::harness::*;
use crate::observer::*;
use testkit::*;

/// The previous release's binary. The upgrade tests fail, never skip, without it.
fn previous_bin() -> PathBuf {
    let Some(path) = std::env::var_os("JB_PREVIOUS_BIN") else {
        panic!(
            "JB_PREVIOUS_BIN is not set: the upgrade tests need the previous release's binary. \
             Build it with `scripts/build-previous.sh` (scripts/test.sh does) and set \
             JB_PREVIOUS_BIN to the path it prints"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "JB_PREVIOUS_BIN={} is not a file: run scripts/build-previous.sh",
        path.display()
    );
    // Pointed at this release's binary by mistake, every test here would prove nothing.
    let version = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .expect("the previous release's binary runs");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    assert!(
        version.starts_with("jelou-bridge ")
            && !version.ends_with(&format!(" {}", env!("CARGO_PKG_VERSION"))),
        "JB_PREVIOUS_BIN={} is {version:?}, not a release before {}",
        path.display(),
        env!("CARGO_PKG_VERSION")
    );
    path
}

fn store_url(scenario: &Scenario) -> String {
    scenario
        .env()
        .iter()
        .find(|(k, _)| k == "JELOU_BRIDGE__STORE__URL")
        .map(|(_, v)| v.clone())
        .expect("the scenario has a store")
}

async fn schema_of(scenario: &Scenario) -> schema::SchemaReport {
    schema::inspect(&store_url(scenario))
        .await
        .expect("the store's schema can be read")
}

/// Successful (200) calls, per ticket.
fn answered(calls: &HashMap<String, Vec<RecordedCall>>, ticket: &str) -> Vec<RecordedCall> {
    calls
        .get(ticket)
        .map(|c| c.iter().filter(|c| c.status == 200).cloned().collect())
        .unwrap_or_default()
}

/// A message parked in a delay queue, as read back from it.
#[derive(Debug)]
struct Parked {
    queue: String,
    parked: Option<i64>,
    first_seen: Option<i64>,
}

/// Every message now in the scenario's delay queues, read without taking them: they are
/// fetched unacknowledged and go back when the connection closes.
async fn peek_parked(scenario: &Scenario, tiers: &[&str]) -> Vec<Parked> {
    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    for tier in tiers {
        let queue = scenario.delay_queue(tier);
        loop {
            let got = tokio::time::timeout(
                Duration::from_secs(5),
                ch.basic_get(queue.as_str().into(), BasicGetOptions::default()),
            )
            .await
            .expect("basic.get answered within 5s")
            .unwrap();
            let Some(msg) = got else { break };
            let h = msg.delivery.properties.headers().as_ref();
            out.push(Parked {
                queue: queue.clone(),
                parked: header_i64(h, headers::PARKED),
                first_seen: header_i64(h, headers::FIRST_SEEN),
            });
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "peeked".into())).await;
    out
}

/// Waits until `done` holds for the calls Jelou got; fails the test after `timeout`.
async fn wait_calls(
    scenario: &Scenario,
    what: &str,
    timeout: Duration,
    done: impl Fn(&HashMap<String, Vec<RecordedCall>>, &HashMap<String, Vec<RecordedCall>>) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let starts = calls_per_ticket(&scenario.mock, Endpoint::Start);
        let closes = calls_per_ticket(&scenario.mock, Endpoint::Close);
        if done(&starts, &closes) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `jelou-bridge <args>` of this release against the scenario, bounded; (exit code, stdout).
async fn this_release(scenario: &Scenario, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = clean_bridge_command();
    cmd.env_remove("RUST_LOG")
        .envs(scenario.env().iter().cloned())
        .env("JELOU_BRIDGE__LOG__LEVEL", "warn")
        .current_dir(scenario.dir.path())
        .args(args);
    let ran = run_to_end(cmd, &args.join(" ")).await;
    (ran.code, ran.stdout)
}

const TICKETS: usize = 200;
/// Tickets the previous release starts while Jelou answers.
const STARTED_BEFORE: usize = 100;
/// Tickets resolved while Jelou fails, so that the previous release parks their closes.
const RESOLVED_EARLY: usize = 50;
const MAX_ATTEMPTS: usize = 2;

/// The previous release starts tickets, then parks starts and closes while Jelou fails, and
/// is stopped; this release starts on the same store and the same queues.
async fn this_release_completes_what_the_previous_one_started_and_parked(store: StoreKind) {
    let previous = previous_bin();
    let scenario = Scenario::new(
        store,
        Duration::ZERO,
        &[
            ("RETRY__MAX_ATTEMPTS", &MAX_ATTEMPTS.to_string()),
            ("RETRY__MIN_DELAY", "20ms"),
            ("RETRY__MAX_DELAY", "50ms"),
            ("RETRY__DELAYS", "1s,2s"),
        ],
    )
    .await;
    let observer = Observer::start(&scenario).await;
    let old = scenario.start_bridge_bin(&previous).await;
    assert_eq!(
        schema_of(&scenario).await.compatibility(),
        Compatibility::Older,
        "the previous release left the store at its own, older schema"
    );
    let helpdesk = Helpdesk::connect(&scenario).await;
    helpdesk.publish_all((0..STARTED_BEFORE).map(opened)).await;
    observer
        .wait_for(
            "the previous release started the first tickets",
            Duration::from_secs(60),
            |t| t.all_started(STARTED_BEFORE),
        )
        .await;

    // Jelou fails: the previous release parks the next starts, and the closes of tickets it
    // started, until each has come back from a delay queue at least once.
    scenario.mock.set_down(Some(503));
    helpdesk
        .publish_all(
            (STARTED_BEFORE..TICKETS)
                .map(opened)
                .chain((0..RESOLVED_EARLY).map(resolved)),
        )
        .await;
    wait_calls(
        &scenario,
        "every parked start and close came back to the previous release",
        Duration::from_secs(60),
        |starts, closes| {
            let back = |calls: &HashMap<String, Vec<RecordedCall>>, i: usize| {
                calls
                    .get(&format!("T-{i}"))
                    .is_some_and(|c| c.len() > MAX_ATTEMPTS)
            };
            (STARTED_BEFORE..TICKETS).all(|i| back(starts, i))
                && (0..RESOLVED_EARLY).all(|i| back(closes, i))
        },
    )
    .await;
    old.sigterm();
    let status = old.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "the previous release stopped cleanly");
    let upgraded_at = now_ms();

    // This release, with Jelou still failing: it migrates the store, takes the parked
    // messages as they come back and parks them again, counting on from what the previous
    // release wrote in their headers.
    let new = scenario.start_bridge().await;
    assert_eq!(
        schema_of(&scenario).await.compatibility(),
        Compatibility::Current,
        "this release migrated the store"
    );
    // Longer than the longest tier: everything in a delay queue now was parked by this
    // release.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let parked = peek_parked(&scenario, &["1s", "2s"]).await;
    assert!(
        parked.len() >= 100,
        "most of the {} parked starts and closes are in a delay queue: {}",
        TICKETS - STARTED_BEFORE + RESOLVED_EARLY,
        parked.len()
    );
    for p in &parked {
        assert!(
            p.first_seen.is_some_and(|t| t < upgraded_at),
            "the first sighting the previous release recorded is kept (the total budget runs \
             on): {p:?}"
        );
        assert!(
            p.parked.is_some_and(|n| n >= 2) && p.queue.ends_with(".delay.2s"),
            "the previous release's parking count goes on (the next tier, not the first): {p:?}"
        );
    }
    assert!(new.metric("jelou_bridge_parked_total", &[]).await > 0.0);

    // Jelou is back; the other tickets are resolved by their id alone.
    scenario.mock.set_down(None);
    helpdesk
        .publish_all((RESOLVED_EARLY..TICKETS).map(resolved))
        .await;
    let tally = observer
        .wait_for("every ticket closed", Duration::from_secs(90), |t| {
            t.all_closed(TICKETS) || !t.failures().is_empty()
        })
        .await;
    tally.assert_one_conversation_each(TICKETS);
    assert!(tally.all_closed(TICKETS));

    let starts = calls_per_ticket(&scenario.mock, Endpoint::Start);
    let closes = calls_per_ticket(&scenario.mock, Endpoint::Close);
    for i in 0..TICKETS {
        let t = format!("T-{i}");
        let started = answered(&starts, &t);
        assert_eq!(started.len(), 1, "{t}: started once, {started:?}");
        let closed = answered(&closes, &t);
        assert_eq!(closed.len(), 1, "{t}: closed once, {closed:?}");
        // The close named the ticket's own bot and user, which only the store (written by
        // the previous release for the tickets it started) could supply.
        assert_eq!(closed[0].body["botId"], "BOT", "{t}");
        assert_eq!(closed[0].body["userId"], format!("U-{i}"), "{t}");
        assert!(closed[0].at >= started[0].at, "{t}: closed before started");
        let conversation = &tally.tickets[&t].started[0];
        let at_jelou = scenario
            .mock
            .conversation(conversation)
            .unwrap_or_else(|| panic!("{t}: Jelou knows {conversation}"));
        assert_eq!(at_jelou.state, "closed", "{t}: its own conversation closed");
    }
    assert!(
        scenario.mock.active_conversations().is_empty(),
        "no conversation left open"
    );
    assert_nothing_dead_lettered(&scenario).await;
    for q in [
        scenario.queue.clone(),
        scenario.delay_queue("1s"),
        scenario.delay_queue("2s"),
    ] {
        assert_eq!(scenario.depth(&q).await, 0, "{q} empty");
    }
    helpdesk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_on_sqlite_completes_every_ticket_the_previous_release_started_or_parked() {
    this_release_completes_what_the_previous_one_started_and_parked(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_on_postgres_completes_every_ticket_the_previous_release_started_or_parked() {
    this_release_completes_what_the_previous_one_started_and_parked(StoreKind::Postgres).await;
}

const ROLLING_TICKETS: usize = 1000;
/// A ticket's resolve is published this many opens after its own open.
const LAG: usize = 3;

/// A rolling upgrade: the previous release runs, this one starts beside it on the same
/// PostgreSQL store and queue (migrating the store under the running old process), and the
/// old one is stopped half-way through 1,000 tickets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_old_and_new_side_by_side_lose_nothing_and_do_nothing_twice() {
    let previous = previous_bin();
    let scenario = Scenario::new(
        StoreKind::Postgres,
        Duration::from_millis(50),
        &[("AMQP__PREFETCH", "8")],
    )
    .await;
    let observer = Observer::start(&scenario).await;
    let old = scenario.start_bridge_bin(&previous).await;
    assert_eq!(
        schema_of(&scenario).await.compatibility(),
        Compatibility::Older
    );
    // The order of a rolling update: the old process is already running when the new one
    // migrates (an old process started after that would refuse the newer store).
    let new = scenario.start_bridge().await;
    assert_eq!(
        schema_of(&scenario).await.compatibility(),
        Compatibility::Current
    );

    let helpdesk = Helpdesk::connect(&scenario).await;
    helpdesk
        .publish_all(opened_then_resolved(ROLLING_TICKETS, LAG))
        .await;
    helpdesk.close().await;

    let half = observer
        .wait_for("half the tickets closed", Duration::from_secs(120), |t| {
            t.count(ROLLING_TICKETS, |r| !r.closed.is_empty()) >= ROLLING_TICKETS / 2
                || !t.failures().is_empty()
        })
        .await;
    assert!(half.failures().is_empty(), "{:?}", half.failures());
    let old_handled = old.metric("jelou_bridge_ticket_events_total", &[]).await;
    old.sigterm();
    let status = old.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "the previous release stopped cleanly");
    let closed_at_stop = observer
        .tally()
        .count(ROLLING_TICKETS, |r| !r.closed.is_empty());
    eprintln!(
        "the previous release handled {old_handled} ticket events; {closed_at_stop} tickets \
         were closed when it stopped"
    );
    assert!(
        old_handled > 0.0,
        "the previous release did part of the work"
    );
    assert!(
        closed_at_stop < ROLLING_TICKETS,
        "the old process stopped while work remained"
    );

    let tally = observer
        .wait_for("every ticket closed", Duration::from_secs(120), |t| {
            t.all_closed(ROLLING_TICKETS) || !t.failures().is_empty()
        })
        .await;
    tally.assert_one_conversation_each(ROLLING_TICKETS);
    assert!(tally.all_closed(ROLLING_TICKETS));
    assert_one_start_call_each(&scenario.mock, ROLLING_TICKETS);
    assert_one_close_call_each_after_its_start(&scenario.mock, ROLLING_TICKETS);
    assert!(new.metric("jelou_bridge_ticket_events_total", &[]).await > 0.0);
    assert_nothing_dead_lettered(&scenario).await;
    assert_eq!(scenario.depth(&scenario.queue).await, 0, "queue drained");
}

/// A dead letter the previous release wrote is listed and replayed by this release's `dlq`,
/// and the replayed ticket is started once and resolved by its id alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_of_a_dead_letter_the_previous_release_wrote() {
    let previous = previous_bin();
    let scenario = Scenario::new(
        StoreKind::Sqlite,
        Duration::ZERO,
        &[
            ("RETRY__MAX_ATTEMPTS", "2"),
            ("RETRY__MIN_DELAY", "20ms"),
            ("RETRY__MAX_DELAY", "50ms"),
            ("RETRY__DELAYS", "500ms"),
            ("RETRY__TOTAL_BUDGET", "1500ms"),
        ],
    )
    .await;
    let observer = Observer::start(&scenario).await;
    scenario.mock.set_down(Some(503));
    let old = scenario.start_bridge_bin(&previous).await;
    let helpdesk = Helpdesk::connect(&scenario).await;
    helpdesk.publish_all([opened(0)]).await;
    let failed = observer
        .wait_for(
            "the previous release gave up on T-0",
            Duration::from_secs(60),
            |t| !t.failures().is_empty(),
        )
        .await
        .failures()[0]
        .clone();
    assert_eq!(failed["reason"], "retries_exhausted", "{failed}");
    let attempts = failed["attempts"].as_i64().expect("attempts counted");
    assert!(attempts > 2, "it was parked and came back: {failed}");
    old.sigterm();
    assert!(old.wait_exit(Duration::from_secs(30)).await.success());
    assert_eq!(scenario.depth(&scenario.dead_queue()).await, 1);

    scenario.mock.set_down(None);
    let _new = scenario.start_bridge().await;
    // The list reads the previous release's headers: the event, the reason, the attempts.
    let (code, list) = this_release(&scenario, &["dlq", "list"]).await;
    assert_eq!(code, Some(0));
    let line = list
        .lines()
        .find(|l| l.starts_with("T-0 "))
        .unwrap_or_else(|| panic!("T-0 listed:\n{list}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[..4],
        [
            "T-0",
            "ticket.opened",
            "retries_exhausted",
            &attempts.to_string()
        ],
        "{line}"
    );

    let (code, out) = this_release(&scenario, &["dlq", "replay", "--ticket", "T-0"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("replayed T-0 ticket.opened"), "{out}");
    let tally = observer
        .wait_for(
            "T-0 started after the replay",
            Duration::from_secs(30),
            |t| t.all_started(1),
        )
        .await;
    let conversation = tally.tickets["T-0"].started[0].clone();
    assert!(!conversation.is_empty());
    assert_eq!(scenario.depth(&scenario.dead_queue()).await, 0);

    helpdesk.publish_all([resolved(0)]).await;
    let tally = observer
        .wait_for("T-0 closed", Duration::from_secs(30), |t| t.all_closed(1))
        .await;
    assert_eq!(tally.tickets["T-0"].closed, vec![conversation]);
    let starts = calls_per_ticket(&scenario.mock, Endpoint::Start);
    assert_eq!(answered(&starts, "T-0").len(), 1, "started once");
    let closes = calls_per_ticket(&scenario.mock, Endpoint::Close);
    assert_eq!(answered(&closes, "T-0").len(), 1, "closed once");
    helpdesk.close().await;
}
