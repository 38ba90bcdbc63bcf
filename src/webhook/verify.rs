//! Whether to believe a webhook: its `X-Jelou-Signature` (HMAC-SHA256 of the raw body, checked
//! in constant time), and its `timestamp` inside the replay window (`webhook.max_age`), so
//! that a captured request cannot be sent again later.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header Jelou signs with.
pub const SIGNATURE_HEADER: &str = "x-jelou-signature";

/// `sha256=<hex>` of `body` keyed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature header in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// An event's `timestamp` in ms since the epoch (Jelou sends ms; seconds are taken too).
fn event_time_ms(payload: &Value) -> Option<i64> {
    let ts = match payload.get("timestamp")? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    // Before 1973 in ms is after 5000 AD in seconds: a value this small is seconds.
    Some(if ts.abs() < 1e11 { ts * 1000.0 } else { ts } as i64)
}

/// How far outside the replay window an event's timestamp is; None when it is inside (or
/// the event carries none: Jelou's always do, and its signature still had to match).
pub fn outside_window(payload: &Value, max_age: std::time::Duration, now_ms: i64) -> Option<i64> {
    let at = event_time_ms(payload)?;
    let max = max_age.as_millis().min(i64::MAX as u128) as i64;
    let off = now_ms.saturating_sub(at);
    (off.saturating_abs() > max).then_some(off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signatures_verify_only_for_the_same_key_and_body() {
        let sig = sign(b"secret", b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify(b"secret", b"{\"a\":1}", Some(&sig)));
        assert!(!verify(b"secret", b"{\"a\":2}", Some(&sig)));
        assert!(!verify(b"other", b"{\"a\":1}", Some(&sig)));
        assert!(!verify(b"secret", b"{\"a\":1}", None));
        assert!(!verify(b"secret", b"{\"a\":1}", Some("sha256=zz")));
        assert!(!verify(
            b"secret",
            b"{\"a\":1}",
            Some(sig.trim_start_matches("sha256="))
        ));
    }

    #[test]
    fn the_replay_window_goes_both_ways() {
        let day = std::time::Duration::from_secs(86_400);
        let now = 1_800_000_000_000i64;
        let at = |ts: Value| outside_window(&json!({ "timestamp": ts }), day, now);
        assert_eq!(at(json!(now - 1000)), None);
        assert_eq!(at(json!(now - 86_400_001)), Some(86_400_001));
        assert_eq!(at(json!(now + 86_400_001)), Some(-86_400_001));
        assert_eq!(
            at(json!((now - 1000) / 1000)),
            None,
            "seconds are taken too"
        );
        assert_eq!(at(json!("1799999999000")), None);
        assert_eq!(outside_window(&json!({}), day, now), None);
    }
}
