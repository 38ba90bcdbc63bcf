//! `jelou-bridge tickets`: what the store knows.

use std::process::ExitCode;

use crate::config::Settings;
use crate::store::{Store, TicketRecord, TicketState};

#[derive(Debug, clap::Subcommand)]
pub enum TicketsCommand {
    /// One ticket, as JSON: times in RFC 3339 (UTC), and its trace id when known.
    Show {
        /// The ticket id.
        ticket: String,
    },
    /// Recent tickets, newest first, one per line.
    List {
        /// Only tickets in this state.
        #[arg(long, value_parser = ["starting", "active", "closing", "closed", "failed"])]
        state: Option<String>,
        /// At most this many lines.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

pub async fn run(settings: &Settings, command: TicketsCommand) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&settings.store, "tickets-cli".into()).await?;
    let code = match command {
        TicketsCommand::Show { ticket } => match store.get(&ticket).await? {
            Some(record) => {
                println!("{}", serde_json::to_string_pretty(&shown(&record)?)?);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("jelou-bridge: the store has no ticket {ticket:?}");
                ExitCode::from(1)
            }
        },
        TicketsCommand::List { state, limit } => {
            let state = match state.as_deref().map(str::parse::<TicketState>) {
                None => None,
                Some(Ok(s)) => Some(s),
                Some(Err(e)) => {
                    eprintln!("jelou-bridge: --state: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let records = store.list(state, limit).await?;
            println!(
                "{:<24} {:<9} {:<32} {:<24} LAST ERROR",
                "TICKET", "STATE", "CONVERSATION", "UPDATED"
            );
            for r in &records {
                println!(
                    "{:<24} {:<9} {:<32} {:<24} {}",
                    r.ticket_id,
                    r.state.as_str(),
                    r.conversation_id.as_deref().unwrap_or("-"),
                    rfc3339(r.updated_at),
                    r.last_error.as_deref().unwrap_or("")
                );
            }
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}

/// A store time (ms since the epoch) as people read it: RFC 3339, UTC, to the millisecond.
fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// The record as `tickets show` prints it: the store's epoch milliseconds as RFC 3339, and
/// the trace id of the ticket's `traceparent` (what a trace backend is searched by).
fn shown(record: &TicketRecord) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(record)?;
    if let Some(fields) = value.as_object_mut() {
        for (key, ms) in [
            ("createdAt", Some(record.created_at)),
            ("updatedAt", Some(record.updated_at)),
            ("leaseUntil", record.lease_until),
        ] {
            if let Some(ms) = ms {
                fields.insert(key.into(), rfc3339(ms).into());
            }
        }
        let trace_id = record
            .traceparent
            .as_deref()
            .and_then(crate::trace_context::trace_id);
        fields.insert("traceId".into(), trace_id.into());
    }
    Ok(value)
}
