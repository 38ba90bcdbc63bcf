//! A message that takes the bridge down every time it handles it (here: the bridge is killed
//! while working on it) does not loop forever: the quorum queue's delivery limit moves it to
//! the dead-letter exchange and `<queue>.dead`.

use std::time::{Duration, Instant};

use jelou_bridge::jelou::Endpoint;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;

use crate::harness::*;
use testkit::*;

const DELIVERY_LIMIT: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_crashing_the_bridge_ends_in_the_dead_letter_queue() {
    // The stand-in never answers in time, so each bridge is still working on the message
    // when it is killed.
    let scenario = Scenario::new(
        StoreKind::Sqlite,
        Duration::from_secs(60),
        &[
            ("AMQP__DELIVERY_LIMIT", &DELIVERY_LIMIT.to_string()),
            ("STORE__LEASE", "1s"),
        ],
    )
    .await;
    let mut bridge = scenario.start_bridge().await;
    let helpdesk = Helpdesk::connect(&scenario).await;
    helpdesk.publish_all([opened(0)]).await;
    helpdesk.close().await;

    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Wait until the bridge works on the message (its start call reached the stand-in),
        // or the message is gone from the queue into the dead letters.
        let calls = scenario.mock.call_count();
        let working = loop {
            if scenario.mock.call_count() > calls {
                break true;
            }
            if depth(&scenario.dead_queue()).await == 1 {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "neither worked on nor dead-lettered; log:\n{}",
                bridge.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !working {
            break;
        }
        bridge.kill9();
        crashes += 1;
        assert!(
            crashes <= DELIVERY_LIMIT + 1,
            "the message came back {crashes} times, past the delivery limit of {DELIVERY_LIMIT}"
        );
        bridge = scenario.start_bridge().await;
    }
    eprintln!(
        "the bridge was killed {crashes} times on the message before the broker gave up on it"
    );
    assert!(crashes >= 1);

    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    let dead = ch
        .basic_get(
            scenario.dead_queue().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the poison message is in the dead-letter queue");
    let body: serde_json::Value = serde_json::from_slice(&dead.delivery.data).unwrap();
    assert_eq!(body["ticketId"], "T-0");
    assert_eq!(
        death_reason(&dead.delivery.properties).as_deref(),
        Some("delivery_limit"),
        "dead-lettered by the broker for its delivery count"
    );
    assert_eq!(depth(&scenario.queue).await, 0, "not looping any more");
    assert!(
        scenario.mock.calls_to(Endpoint::Start).is_empty(),
        "no start ever answered"
    );
    let _ = conn.close(200, "done".into()).await;
}

/// The `reason` of the first `x-death` entry the broker wrote.
fn death_reason(props: &lapin::BasicProperties) -> Option<String> {
    let headers = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}
