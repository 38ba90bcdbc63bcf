//! The contract as schemas: every bus message with its direction and JSON Schema, derived
//! from the types in `inbound` and `outbound`, and the files `schemas/` holds.

use std::path::{Path, PathBuf};

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde_json::Value;

use super::{
    ConversationClosed, ConversationStarted, JelouEvent, MessageSent, TicketFailed,
    TicketOpenedMessage, TicketReplyMessage, TicketResolvedMessage,
};

/// Which way a message goes on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Helpdesk → bridge, on `amqp.exchange`.
    Inbound,
    /// Bridge → bus, on `amqp.events_exchange`.
    Outbound,
}

/// One message of the bus contract: its name (the routing key and `event`), its direction
/// and the schema of its body.
pub struct Message {
    /// The routing key, and the body's `event` where it has one.
    pub name: &'static str,
    pub direction: Direction,
    /// The body's JSON Schema, titled with `name`.
    pub schema: Schema,
}

/// Every message of the contract, in the order the contract lists them.
pub fn messages() -> Vec<Message> {
    use crate::events::{CONVERSATION_CLOSED, CONVERSATION_STARTED, MESSAGE_SENT, TICKET_FAILED};
    use Direction::{Inbound, Outbound};
    vec![
        message::<TicketOpenedMessage>("ticket.opened", Inbound),
        message::<TicketResolvedMessage>("ticket.resolved", Inbound),
        message::<TicketReplyMessage>("ticket.reply", Inbound),
        message::<ConversationStarted>(CONVERSATION_STARTED, Outbound),
        message::<ConversationClosed>(CONVERSATION_CLOSED, Outbound),
        message::<MessageSent>(MESSAGE_SENT, Outbound),
        message::<TicketFailed>(TICKET_FAILED, Outbound),
        message::<JelouEvent>("jelou.conversation.start", Outbound),
        message::<JelouEvent>("jelou.conversation.close", Outbound),
        message::<JelouEvent>("jelou.message", Outbound),
    ]
}

/// The schema of `T` as `name`'s body: inbound ones as serde would read them (optional
/// fields may be left out), outbound ones as the bridge writes them (every field present
/// unless skipped when empty). `event`, when given, must be the message's name.
fn message<T: JsonSchema>(name: &'static str, direction: Direction) -> Message {
    let settings = SchemaSettings::draft2020_12();
    let settings = match direction {
        Direction::Inbound => settings.for_deserialize(),
        Direction::Outbound => settings.for_serialize(),
    };
    let mut schema = settings.into_generator().into_root_schema_for::<T>();
    schema.insert("title".into(), Value::String(name.into()));
    if let Some(event) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("event"))
        .and_then(Value::as_object_mut)
    {
        event.insert("const".into(), Value::String(name.into()));
    }
    Message {
        name,
        direction,
        schema,
    }
}

/// A schema file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The file name of `message`'s schema.
pub fn file_name(message: &str) -> String {
    format!("{message}.schema.json")
}

/// A schema as its file holds it: pretty JSON, keys in a stable order, a final newline.
pub fn render(schema: &Schema) -> String {
    // Through `Value` so that keys come out sorted however serde_json's maps are configured.
    let sorted = sort_keys(schema.as_value().clone());
    let mut text = serde_json::to_string_pretty(&sorted).unwrap_or_default();
    text.push('\n');
    text
}

fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Writes `DIR/<message>.schema.json` for every message; the paths written.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError {
        path: dir.to_path_buf(),
        source,
    })?;
    messages()
        .iter()
        .map(|m| {
            let path = dir.join(file_name(m.name));
            std::fs::write(&path, render(&m.schema)).map_err(|source| WriteError {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

/// The schema of message `name`, as a validator (unit tests).
#[cfg(test)]
fn validator(name: &str) -> jsonschema::Validator {
    let message = messages()
        .into_iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no schema for {name}"));
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(message.schema.as_value())
        .unwrap()
}

/// What `name`'s schema finds wrong with `body`, one line an error; empty when it is valid
/// (unit tests).
#[cfg(test)]
pub(super) fn errors(name: &str, body: &Value) -> Vec<String> {
    validator(name)
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn committed_schemas_are_what_the_code_produces() {
        let fresh = tempfile::tempdir().unwrap();
        write_all(fresh.path()).unwrap();
        let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let list = |dir: &Path| {
            let mut names: Vec<_> = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".schema.json"))
                .collect();
            names.sort();
            names
        };
        let hint = "run `cargo run -- schemas --out schemas` and commit the result";
        assert_eq!(
            list(&committed),
            list(fresh.path()),
            "schemas/ does not hold one file per bus message: {hint}"
        );
        for name in list(fresh.path()) {
            let want = std::fs::read(fresh.path().join(&name)).unwrap();
            let have = std::fs::read(committed.join(&name)).unwrap();
            assert!(
                have == want,
                "schemas/{name} differs from what the code produces: {hint}"
            );
        }
    }

    #[test]
    fn every_contract_message_has_a_schema() {
        let names: Vec<_> = messages().iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "ticket.opened",
                "ticket.resolved",
                "ticket.reply",
                "conversation.started",
                "conversation.closed",
                "message.sent",
                "ticket.failed",
                "jelou.conversation.start",
                "jelou.conversation.close",
                "jelou.message",
            ]
        );
        for m in messages() {
            assert_eq!(
                m.schema.get("$schema"),
                Some(&json!("https://json-schema.org/draft/2020-12/schema")),
                "{}",
                m.name
            );
        }
    }
}
