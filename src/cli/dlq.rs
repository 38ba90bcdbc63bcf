//! `jelou-bridge dlq`: list dead letters, and replay them into the queue they came from.
//!
//! Messages are taken with `basic.get` and left unacknowledged while being looked at, so a
//! crash returns them; a replayed one is acked (removed) only after its republish was
//! confirmed.

use std::process::ExitCode;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::Value;

use crate::amqp::publisher::Publisher;
use crate::amqp::{connection, header_i64, header_str, headers};
use crate::config::Settings;
use crate::store::now_ms;

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Dead letters, oldest first: ticket, reason, attempts, first error, age.
    List {
        /// At most this many dead letters.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Move dead letters back to the queue they came from.
    Replay {
        /// Only this ticket's dead letters.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        ticket: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Say what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// One dead letter, as the listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub ticket_id: Option<String>,
    pub event: String,
    pub reason: String,
    pub attempts: i64,
    pub error: String,
    pub age: Duration,
    pub source_queue: Option<String>,
}

impl DeadLetter {
    fn read(routing_key: &str, props: &BasicProperties, body: &[u8]) -> DeadLetter {
        let h = props.headers().as_ref();
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        // Dead-lettered by the broker (delivery limit) rather than by the bridge: x-death.
        let death = h.and_then(|t| match t.inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().first().and_then(|v| match v {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            }),
            _ => None,
        });
        let dead_at = header_i64(h, headers::DEAD_AT)
            .or_else(|| header_i64(death.as_ref(), "time").map(|s| s * 1000))
            .unwrap_or_else(now_ms);
        DeadLetter {
            ticket_id: header_str(h, headers::TICKET_ID).or_else(|| {
                body.get("ticketId")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }),
            event: header_str(h, headers::ORIGINAL_ROUTING_KEY)
                .unwrap_or_else(|| routing_key.to_string()),
            reason: header_str(h, headers::REASON)
                .or_else(|| header_str(death.as_ref(), "reason").map(|r| format!("broker:{r}")))
                .unwrap_or_else(|| "unknown".into()),
            attempts: header_i64(h, headers::ATTEMPTS)
                .or_else(|| header_i64(death.as_ref(), "count"))
                .unwrap_or(0),
            error: header_str(h, headers::ERROR).unwrap_or_default(),
            age: Duration::from_millis((now_ms() - dead_at).max(0) as u64),
            source_queue: header_str(h, headers::SOURCE_QUEUE)
                .or_else(|| header_str(death.as_ref(), "queue")),
        }
    }
}

pub async fn run(settings: &Settings, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let conn = connection::connect(&settings.amqp, "jelou-bridge dlq").await?;
    let publisher = Publisher::open(&conn, settings.amqp.confirm_timeout).await?;
    let channel = conn.create_channel().await?;
    let dead = settings.amqp.dead_letter_queue();
    let queue = channel
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("dead-letter queue {dead:?}: {e}"))?;
    let total = queue.message_count() as usize;
    let code = match command {
        DlqCommand::List { limit } => {
            println!("{total} dead letter(s) in {dead}");
            println!(
                "{:<24} {:<16} {:<18} {:>8} {:>10}  ERROR",
                "TICKET", "EVENT", "REASON", "ATTEMPTS", "AGE"
            );
            for _ in 0..total.min(limit) {
                let Some(msg) = channel
                    .basic_get(dead.as_str().into(), BasicGetOptions::default())
                    .await?
                else {
                    break;
                };
                let d = DeadLetter::read(
                    msg.delivery.routing_key.as_str(),
                    &msg.delivery.properties,
                    &msg.delivery.data,
                );
                println!(
                    "{:<24} {:<16} {:<18} {:>8} {:>10}  {}",
                    d.ticket_id.as_deref().unwrap_or("?"),
                    d.event,
                    d.reason,
                    d.attempts,
                    humantime::format_duration(Duration::from_secs(d.age.as_secs())).to_string(),
                    d.error
                );
            }
            ExitCode::SUCCESS
        }
        DlqCommand::Replay {
            ticket,
            all: _,
            dry_run,
        } => {
            let mut replayed = 0usize;
            for _ in 0..total {
                let Some(msg) = channel
                    .basic_get(dead.as_str().into(), BasicGetOptions::default())
                    .await?
                else {
                    break;
                };
                let delivery = msg.delivery;
                let d = DeadLetter::read(
                    delivery.routing_key.as_str(),
                    &delivery.properties,
                    &delivery.data,
                );
                if ticket
                    .as_ref()
                    .is_some_and(|t| d.ticket_id.as_deref() != Some(t.as_str()))
                {
                    continue;
                }
                let target = d
                    .source_queue
                    .clone()
                    .unwrap_or_else(|| settings.amqp.queue.clone());
                if dry_run {
                    println!(
                        "would replay {} {} ({}) to {target}",
                        d.ticket_id.as_deref().unwrap_or("?"),
                        d.event,
                        d.reason
                    );
                    replayed += 1;
                    continue;
                }
                let props = fresh_properties(&delivery.properties, &d.event);
                publisher
                    .publish("", &target, &delivery.data, props, true)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("republish to {target} failed, dead letter kept: {e}")
                    })?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
                println!(
                    "replayed {} {} to {target}",
                    d.ticket_id.as_deref().unwrap_or("?"),
                    d.event
                );
                replayed += 1;
            }
            println!(
                "{replayed} dead letter(s) {}",
                if dry_run {
                    "would be replayed"
                } else {
                    "replayed"
                }
            );
            ExitCode::SUCCESS
        }
    };
    // Messages looked at but not replayed go back to the dead-letter queue here.
    let _ = conn.close(200, "done".into()).await;
    Ok(code)
}

/// The dead letter's properties without the bridge's bookkeeping, so the replay starts a
/// fresh retry budget; the original routing key is kept for the event type.
fn fresh_properties(props: &BasicProperties, event: &str) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            let k = k.as_str();
            if k.starts_with("x-jb-")
                || k.starts_with("x-death")
                || k.starts_with("x-first-death")
                || k.starts_with("x-last-death")
            {
                continue;
            }
            table.insert(k.into(), v.clone());
        }
    }
    crate::amqp::set_str(&mut table, headers::ORIGINAL_ROUTING_KEY, event);
    props.clone().with_headers(table).with_delivery_mode(2)
}
