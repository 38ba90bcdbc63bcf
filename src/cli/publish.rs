//! `jelou-bridge publish`: a well-formed sample ticket event, and its outcome.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};

use crate::amqp::connection;
use crate::amqp::publisher::{PublishError, Publisher};
use crate::config::Settings;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Opened,
    Resolved,
    /// An agent's message to the customer (`ticket.reply`, with --text).
    Reply,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Which event to send.
    #[arg(value_enum)]
    kind: Kind,
    /// Ticket id.
    #[arg(long)]
    ticket: String,
    /// Jelou user id (required for opened).
    #[arg(long)]
    user: Option<String>,
    /// Jelou bot id (defaults to jelou.bot_id, or "sandbox-bot").
    #[arg(long)]
    bot: Option<String>,
    /// Jelou queue to assign (opened).
    #[arg(long)]
    queue: Option<String>,
    /// initialMessage (opened), closingMessage (resolved) or the message's text (reply).
    #[arg(long)]
    text: Option<String>,
    /// The reply's messageId (reply; default: a fresh one).
    #[arg(long)]
    message_id: Option<String>,
    /// After a reply's outcome, also wait this long for the customer's answer
    /// (`jelou.message` of the ticket) and print it.
    #[arg(long, value_parser = humantime::parse_duration)]
    wait_customer: Option<Duration>,
    /// How long to wait for the outcome.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Send and exit without waiting.
    #[arg(long)]
    no_wait: bool,
}

pub async fn run(settings: &Settings, args: PublishArgs) -> anyhow::Result<ExitCode> {
    let bot = args
        .bot
        .clone()
        .or_else(|| settings.jelou.bot_id.clone())
        .unwrap_or_else(|| "sandbox-bot".into());
    let (routing_key, body) = match args.kind {
        Kind::Opened => {
            let Some(user) = &args.user else {
                eprintln!("jelou-bridge: publish opened needs --user");
                return Ok(ExitCode::from(2));
            };
            let mut body = json!({"ticketId": args.ticket, "userId": user, "botId": bot});
            if let Some(q) = &args.queue {
                body["queue"] = json!(q);
            }
            if let Some(t) = &args.text {
                body["initialMessage"] = json!(t);
            }
            ("ticket.opened", body)
        }
        Kind::Resolved => {
            let mut body = json!({"ticketId": args.ticket});
            if let Some(u) = &args.user {
                body["userId"] = json!(u);
                body["botId"] = json!(bot);
            }
            if let Some(t) = &args.text {
                body["closingMessage"] = json!(t);
            }
            ("ticket.resolved", body)
        }
        Kind::Reply => {
            let Some(text) = &args.text else {
                eprintln!("jelou-bridge: publish reply needs --text");
                return Ok(ExitCode::from(2));
            };
            let message_id = args
                .message_id
                .clone()
                .unwrap_or_else(|| format!("M-{}", uuid::Uuid::new_v4().simple()));
            let body = json!({"ticketId": args.ticket, "messageId": message_id, "text": text});
            ("ticket.reply", body)
        }
    };
    let conn = connection::connect(&settings.amqp, "jelou-bridge publish").await?;
    let publisher = Publisher::open(&conn, settings.amqp.confirm_timeout).await?;
    // A private, server-named reply queue: the bridge sends the outcome there too.
    let replies = conn.create_channel().await?;
    let (reply_queue, mut consumer) =
        crate::amqp::private_consumer(&replies, None, "jelou-bridge publish").await?;
    // Bound before publishing, so the customer's answer cannot slip past.
    let customer = match args.wait_customer {
        Some(_) => Some(
            crate::amqp::private_consumer(
                &replies,
                Some((&settings.amqp.events_exchange, "jelou.message")),
                "jelou-bridge publish (customer)",
            )
            .await?
            .1,
        ),
        None => None,
    };
    let correlation_id = uuid::Uuid::new_v4().to_string();
    // What the helpdesk must set too: the sharded topology hashes this header (docs/scaling.md).
    let mut headers = FieldTable::default();
    crate::amqp::set_str(&mut headers, &settings.amqp.shard_header, &args.ticket);
    let props = BasicProperties::default()
        .with_headers(headers)
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_correlation_id(correlation_id.as_str().into())
        .with_reply_to(reply_queue);
    let payload = serde_json::to_vec(&body)?;
    match publisher
        .publish(&settings.amqp.exchange, routing_key, &payload, props, true)
        .await
    {
        Ok(()) => {}
        Err(PublishError::Returned(_)) => {
            eprintln!(
                "jelou-bridge: no queue is bound to exchange {:?} for {routing_key}: start the bridge once so it declares its topology",
                settings.amqp.exchange
            );
            return Ok(ExitCode::from(1));
        }
        Err(e) => anyhow::bail!(
            "cannot publish to exchange {:?}: {e}",
            settings.amqp.exchange
        ),
    }
    println!("published {routing_key} {body} (correlation_id {correlation_id})");
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "waiting up to {} for the outcome…",
        humantime::format_duration(args.timeout)
    );
    let deadline = Instant::now() + args.timeout;
    loop {
        let next = tokio::time::timeout_at(deadline.into(), consumer.next()).await;
        let delivery = match next {
            Err(_) => {
                eprintln!(
                    "jelou-bridge: no outcome within {}: is `jelou-bridge run` consuming {:?}? (`jelou-bridge dlq list` shows failures)",
                    humantime::format_duration(args.timeout),
                    settings.amqp.queue
                );
                return Ok(ExitCode::from(1));
            }
            Ok(None) => anyhow::bail!("the reply queue was closed"),
            Ok(Some(d)) => d?,
        };
        let same = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str())
            == Some(correlation_id.as_str());
        if !same {
            continue;
        }
        let outcome: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
        println!("{}", serde_json::to_string_pretty(&outcome)?);
        let failed = outcome.get("event").and_then(Value::as_str) == Some("ticket.failed");
        let mut answered = true;
        if let (Some(consumer), Some(wait), false) = (customer, args.wait_customer, failed) {
            answered = print_customer_answer(consumer, &args.ticket, wait).await?;
        }
        let _ = conn.close(200, "done".into()).await;
        return Ok(if failed || !answered {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
}

/// Prints the first `jelou.message` of `ticket` that arrives within `wait`; false if none.
async fn print_customer_answer(
    mut consumer: lapin::Consumer,
    ticket: &str,
    wait: Duration,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        let delivery = match tokio::time::timeout_at(deadline.into(), consumer.next()).await {
            Ok(Some(d)) => d?,
            _ => {
                eprintln!(
                    "(no message from the customer within {})",
                    humantime::format_duration(wait)
                );
                return Ok(false);
            }
        };
        let event: Value = serde_json::from_slice(&delivery.data).unwrap_or(Value::Null);
        if event.get("ticketId").and_then(Value::as_str) == Some(ticket) {
            println!("the customer answered:");
            println!("{}", serde_json::to_string_pretty(&event)?);
            return Ok(true);
        }
    }
}
