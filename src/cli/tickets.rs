//! `jelou-bridge tickets`: what the store knows.

use std::process::ExitCode;

use crate::config::Settings;
use crate::store::{Store, TicketState};

#[derive(Debug, clap::Subcommand)]
pub enum TicketsCommand {
    /// One ticket, as JSON.
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
                println!("{}", serde_json::to_string_pretty(&record)?);
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
                "{:<24} {:<9} {:<32} {:<20} LAST ERROR",
                "TICKET", "STATE", "CONVERSATION", "UPDATED"
            );
            for r in &records {
                let updated = std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(r.updated_at.max(0) as u64);
                println!(
                    "{:<24} {:<9} {:<32} {:<20} {}",
                    r.ticket_id,
                    r.state.as_str(),
                    r.conversation_id.as_deref().unwrap_or("-"),
                    humantime::format_rfc3339_seconds(updated),
                    r.last_error.as_deref().unwrap_or("")
                );
            }
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}
