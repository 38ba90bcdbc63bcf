//! What the bridge reads of Jelou's 2xx answers: a few strings of the `data` object
//! (`{"message": […], "status": 1, "data": {…}}`).
//!
//! Read straight into [`Data`], skipping everything else, rather than into a
//! `serde_json::Value` (a map, a key and a string allocated for every field of the answer,
//! on every call). The direct read refuses what a derived reader refuses (a field of another
//! type, `data` that is not an object, a key given twice); such an answer is read again
//! through `Value`, which is what decides then: a field that is not a string counts as
//! absent, `data` that is not an object as empty, the last of repeated keys wins, and a body
//! that is not JSON has no data at all. Each call names what it misses.
//!
//! The two readings agree on every answer that is valid JSON throughout. They can differ on
//! one that is broken only where the bridge does not look: serde_json skips unread values
//! without every check a `Value` makes (a number beyond `f64`, a lone surrogate escape in a
//! skipped string), so the direct read finds the strings where `Value` found no data.

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The strings of an answer's `data` that some call reads; absent when the answer lacks
/// them or gives them as something other than a string.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default)]
pub(crate) struct Data {
    /// Start and close: the conversation's id.
    #[serde(rename = "conversationId")]
    pub conversation_id: Option<String>,
    /// Reading a conversation: Jelou names its id `_id`.
    #[serde(rename = "_id")]
    pub underscore_id: Option<String>,
    /// Reading a conversation: an `id`, accepted too.
    pub id: Option<String>,
    /// Reading a conversation: `active` or `closed`.
    pub state: Option<String>,
    #[serde(rename = "roomId")]
    pub room_id: Option<String>,
    #[serde(rename = "endedReason")]
    pub ended_reason: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    data: Object<Data>,
}

/// `T` only from a JSON object: a derived struct would also take an array, field by position.
#[derive(Default)]
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Object)
            }
        }
        deserializer.deserialize_map(Fields(std::marker::PhantomData))
    }
}

impl Data {
    /// The `data` of a raw answer (see the module's note).
    pub(crate) fn of(raw: &[u8]) -> Data {
        serde_json::from_slice::<Object<Answer>>(raw)
            .map(|Object(answer)| answer.data.0)
            .unwrap_or_else(|_| Data::leniently(raw))
    }

    /// Through `Value`: whatever is not a string is absent.
    fn leniently(raw: &[u8]) -> Data {
        let parsed: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
        let data = parsed.get("data");
        let text = |k: &str| {
            data.and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Data {
            conversation_id: text("conversationId"),
            underscore_id: text("_id"),
            id: text("id"),
            state: text("state"),
            room_id: text("roomId"),
            ended_reason: text("endedReason"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field set (a field added to `Data` must be set here too).
    fn every_field() -> Data {
        Data {
            conversation_id: Some("C-1".into()),
            underscore_id: Some("C-2".into()),
            id: Some("C-3".into()),
            state: Some("active".into()),
            room_id: Some("R-1".into()),
            ended_reason: Some("closed by \"bot\"".into()),
        }
    }

    /// Both readings know every field: an answer carrying all of `Data`'s fields (written
    /// from `Data` itself, so a field added to it is in the answer) gives them all, both ways.
    #[test]
    fn both_readings_know_every_field() {
        let all = every_field();
        let raw = serde_json::to_vec(&serde_json::json!({ "status": 1, "data": all })).unwrap();
        assert_eq!(Data::of(&raw), all);
        assert_eq!(Data::leniently(&raw), all);
    }

    /// The direct read and the lenient one agree on every answer the direct read takes, and
    /// the lenient one decides the rest.
    #[test]
    fn answers_read_directly_or_leniently_give_the_same_data() {
        let cases: [(&str, Data); 13] = [
            (
                r#"{"message":["ok"],"statusMessage":"success","status":1,"data":{"conversationId":"C-1","_id":"C-2","id":"C-3","state":"active","roomId":"R-1","endedReason":"closed by \"bot\"","startAt":"2026-01-01","nested":{"a":[1,2]}}}"#,
                every_field(),
            ),
            (
                r#"{"data":{"conversationId":"C-1","botId":"B","userId":"U","status":"active"}}"#,
                Data {
                    conversation_id: Some("C-1".into()),
                    ..Data::default()
                },
            ),
            (r#"{"status":1}"#, Data::default()),
            (r#"{"data":{"conversationId":null}}"#, Data::default()),
            (r#"{"data":{}}"#, Data::default()),
            // Refused by the direct read, decided by the lenient one:
            (r#"{"data":null}"#, Data::default()),
            (
                r#"{"data":{"conversationId":42,"state":"closed"}}"#,
                Data {
                    state: Some("closed".into()),
                    ..Data::default()
                },
            ),
            (r#"{"data":["C-1"]}"#, Data::default()),
            (r#"{"data":"C-1"}"#, Data::default()),
            (
                r#"{"data":{"conversationId":"C-1","conversationId":"C-9"}}"#,
                Data {
                    conversation_id: Some("C-9".into()),
                    ..Data::default()
                },
            ),
            ("<html>bad gateway</html>", Data::default()),
            (r#"[{"data":{"conversationId":"C-1"}}]"#, Data::default()),
            (r#"[{"conversationId":"C-1"}]"#, Data::default()),
        ];
        for (n, (raw, want)) in cases.into_iter().enumerate() {
            // The first five are read directly; the rest need the lenient reading.
            let direct =
                serde_json::from_slice::<Object<Answer>>(raw.as_bytes()).map(|a| a.0.data.0);
            assert_eq!(direct.is_ok(), n < 5, "{raw}: {direct:?}");
            assert_eq!(Data::of(raw.as_bytes()), want, "{raw}");
            assert_eq!(Data::leniently(raw.as_bytes()), want, "{raw}");
        }
    }
}
