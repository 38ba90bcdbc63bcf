//! The stand-in for Jelou's API (`jelou_bridge::jelou::mock`) as the tests use it: started
//! with the tests' API key, what it was asked per ticket, and calls to it from outside the
//! bridge.

use std::collections::HashMap;

use jelou_bridge::jelou::mock::{MockJelou, MockOptions, RecordedCall};
use jelou_bridge::jelou::Endpoint;
use serde_json::Value;

use crate::names::{API_KEY, PROJECT};

/// The stand-in's defaults, wanting the tests' [`API_KEY`].
pub fn stand_in_options() -> MockOptions {
    MockOptions {
        api_key: Some(API_KEY.into()),
        ..MockOptions::default()
    }
}

/// A stand-in with `options` on a port of its own.
pub async fn start_stand_in(options: MockOptions) -> MockJelou {
    MockJelou::start("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("the stand-in for Jelou starts")
}

/// The calls to `endpoint` the stand-in answered, per ticket: `metadata.ticketId` of starts;
/// the user of closes, `U-<i>` → `T-<i>` (each ticket `T-<i>` its own user `U-<i>`).
pub fn calls_per_ticket(
    mock: &MockJelou,
    endpoint: Endpoint,
) -> HashMap<String, Vec<RecordedCall>> {
    let mut out: HashMap<String, Vec<RecordedCall>> = HashMap::new();
    for call in mock.calls_to(endpoint) {
        let ticket = match endpoint {
            Endpoint::Start => call
                .body
                .pointer("/metadata/ticketId")
                .and_then(Value::as_str)
                .map(str::to_string),
            Endpoint::Close => call.body["userId"]
                .as_str()
                .map(|u| u.replacen("U-", "T-", 1)),
            Endpoint::Message | Endpoint::Conversation => None,
        };
        if let Some(t) = ticket {
            out.entry(t).or_default().push(call);
        }
    }
    out
}

/// Calls the stand-in's start or close endpoint as something outside the bridge would (a
/// conversation opened before the bridge was installed, an operator's tool): the answer's
/// `data`, after checking it was a 200.
pub async fn jelou_outside_the_bridge(
    mock: &MockJelou,
    endpoint: Endpoint,
    bot: &str,
    user: &str,
) -> Value {
    let options = MockOptions::default();
    let path = match endpoint {
        Endpoint::Start => options.start_path,
        Endpoint::Close => options.close_path,
        other => panic!("no {other:?} call from outside the bridge"),
    };
    let response = reqwest::Client::new()
        .post(format!(
            "{}{}",
            mock.base_url(),
            path.replace("{projectId}", PROJECT)
        ))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({"botId": bot, "userId": user}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{endpoint:?} outside the bridge");
    let mut body: Value = response.json().await.unwrap();
    body["data"].take()
}
