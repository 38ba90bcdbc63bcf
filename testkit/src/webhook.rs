//! Jelou's webhooks as the tests send them: signed here, independently of the bridge's own
//! signing code, and posted to a running bridge.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// `sha256=<hex>`: the `X-Jelou-Signature` of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts `body` to the bridge's webhook at `http` with `signature` (if any); the status and
/// the answer (JSON, else its text as a JSON string).
pub async fn post_raw(http: &str, body: &[u8], signature: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{http}/webhooks/jelou"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(sig) = signature {
        req = req.header("X-Jelou-Signature", sig);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Posts `event` to the bridge's webhook at `http` signed with `secret`, as Jelou does; the
/// status and the answer.
pub async fn post_webhook(http: &str, secret: &str, event: &Value) -> (u16, Value) {
    let body = event.to_string();
    post_raw(
        http,
        body.as_bytes(),
        Some(&signature(secret, body.as_bytes())),
    )
    .await
}
