//! Jelou under pressure: a `Retry-After` holds every call, the circuit breaker parks
//! deliveries while Jelou is down, and `jelou.max_rate` paces the calls.

use std::time::{Duration, Instant};

use jelou_bridge::jelou::mock::Scripted;
use jelou_bridge::jelou::Endpoint;
use serde_json::{json, Value};

use testkit::*;

async fn readyz(app: &TestApp) -> Value {
    reqwest::get(format!("{}/readyz", app.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn open_tickets(app: &TestApp, prefix: &str, n: usize) {
    for i in 0..n {
        app.bus
            .publish_json(
                "ticket.opened",
                &json!({"ticketId": format!("{prefix}-{i}"), "userId": format!("U-{prefix}-{i}"), "botId": "B"}),
            )
            .await;
    }
}

async fn expect_started(app: &mut TestApp, n: usize, timeout: Duration) {
    let seen = app
        .bus
        .collect_until(timeout, |s| {
            s.iter()
                .filter(|m| m.routing_key == "conversation.started")
                .count()
                >= n
        })
        .await;
    assert!(
        seen.iter().all(|m| m.routing_key == "conversation.started"),
        "only starts: {:?}",
        seen.iter().map(|m| &m.routing_key).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_holds_every_call_not_only_the_one_that_got_it() {
    const LATENCY: Duration = Duration::from_millis(200);
    const TICKETS: usize = 300;
    let mut app = spawn_app_with(|s, m| {
        s.amqp.prefetch = 32;
        m.latency = LATENCY;
    })
    .await;
    open_tickets(&app, "T-RA", TICKETS).await;
    // Under load: dozens of calls in flight when Jelou says 429.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.mock.call_count() < 40 {
        assert!(Instant::now() < deadline, "load did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.mock.script([Scripted::status(429).retry_after("3")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = readyz(&app).await;
        if ready["jelou"]["gate"] == "held" {
            assert_eq!(ready["status"], "ready", "a held gate is not unreadiness");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never showed the gate held: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    expect_started(&mut app, TICKETS, Duration::from_secs(60)).await;

    let calls = app.mock.calls();
    let limited = calls
        .iter()
        .find(|c| c.status == 429)
        .expect("the scripted 429 was answered");
    let answered = limited.answered.expect("the 429 reached the bridge");
    // `at` is when a call took effect at the stand-in, LATENCY after it arrived. Calls sent
    // before the bridge read the 429 were in flight; none may arrive after it, until 3 s
    // (allowing the answer 300 ms to reach the bridge on a busy machine).
    let window_start = answered + LATENCY + Duration::from_millis(300);
    let window_end = answered + Duration::from_secs(3);
    let inside: Vec<_> = calls
        .iter()
        .filter(|c| c.at > window_start && c.at < window_end)
        .map(|c| c.at.duration_since(answered))
        .collect();
    assert!(
        inside.is_empty(),
        "{} calls were sent inside Jelou's 3 s Retry-After window (after {:?} …)",
        inside.len(),
        inside.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        calls_per_ticket(&app.mock, Endpoint::Start).len(),
        TICKETS,
        "every ticket started"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_jelou_down_the_breaker_opens_and_deliveries_park_without_calling() {
    const TICKETS: usize = 40;
    let mut app = spawn_app_with(|s, _| {
        s.jelou.breaker_failures = 5;
        s.jelou.breaker_cooldown = Duration::from_secs(2);
        s.retry.max_attempts = 4;
    })
    .await;
    app.mock.set_down(Some(500));
    open_tickets(&app, "T-BRK", TICKETS).await;
    // Several park-and-return passes of every delivery (delay tiers of 1 s and 2 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let calls = app.mock.call_count() as usize;
    let ready = readyz(&app).await;
    assert_eq!(
        ready["status"], "ready",
        "an open breaker is not unreadiness"
    );
    assert_ne!(ready["jelou"]["breaker"], "closed", "{ready}");
    // Without a breaker: 4 calls per delivery and pass, a pass every 1-2 s.
    assert!(
        calls <= TICKETS + TICKETS / 4 + 5,
        "{calls} calls to a Jelou that was down, for {TICKETS} tickets"
    );
    assert!(scrape_metric(&app.http, "jelou_bridge_jelou_breaker_opened_total", &[]).await >= 1.0);

    app.mock.set_down(None);
    expect_started(&mut app, TICKETS, Duration::from_secs(30)).await;
    assert_eq!(readyz(&app).await["jelou"]["breaker"], "closed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_rate_paces_the_calls() {
    const TICKETS: usize = 30;
    const RATE: u32 = 10;
    let mut app = spawn_app_with(|s, _| s.jelou.max_rate = Some(RATE)).await;
    open_tickets(&app, "T-RATE", TICKETS).await;
    expect_started(&mut app, TICKETS, Duration::from_secs(30)).await;
    let mut at: Vec<Instant> = app.mock.calls().iter().map(|c| c.at).collect();
    at.sort();
    assert_eq!(at.len(), TICKETS);
    // A bucket of RATE tokens, refilled at RATE a second: no second sees more than twice
    // the rate, and the whole takes at least (calls - burst) / rate.
    let busiest = (0..at.len())
        .map(|i| {
            at[i..]
                .iter()
                .take_while(|t| t.duration_since(at[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        busiest <= 2 * RATE as usize + 1,
        "{busiest} calls in one second"
    );
    let span = at[at.len() - 1].duration_since(at[0]);
    assert!(
        span >= Duration::from_millis(1800),
        "{TICKETS} calls in {span:?} at {RATE}/s"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrency_caps_the_calls_in_flight() {
    const TICKETS: usize = 12;
    const LATENCY: Duration = Duration::from_millis(200);
    let mut app = spawn_app_with(|s, m| {
        s.jelou.max_concurrency = Some(2);
        m.latency = LATENCY;
    })
    .await;
    open_tickets(&app, "T-CONC", TICKETS).await;
    expect_started(&mut app, TICKETS, Duration::from_secs(30)).await;
    // A call is in flight at the stand-in from its arrival (`at` is LATENCY later) until
    // it is answered.
    let spans: Vec<(Instant, Instant)> = app
        .mock
        .calls()
        .iter()
        .map(|c| (c.at - LATENCY, c.answered.expect("answered")))
        .collect();
    assert_eq!(spans.len(), TICKETS);
    let busiest = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        busiest <= 2,
        "{busiest} calls in flight at once with max_concurrency 2"
    );
    app.stop().await;
}
