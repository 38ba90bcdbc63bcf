//! The commands. Exit codes: 0 ok, 1 operational failure, 2 usage or configuration error.

mod check_config;
mod dlq;
mod publish;
mod tickets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::{ConfigError, Settings, Sources};
use crate::jelou::mock::{MockJelou, MockOptions, WebhookTarget};
use crate::shutdown::stop_on_signal;
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "jelou-bridge",
    version,
    about = "Bridges helpdesk ticket events on RabbitMQ to Jelou's external-support API, and Jelou's webhooks back onto the bus.",
    after_help = "Configuration: compiled-in defaults, then config/default.toml and config/$JELOU_BRIDGE_ENV.toml in the working directory, then --config FILE, then JELOU_BRIDGE__SECTION__KEY environment variables.\n\nExit codes: 0 ok, 1 operational failure (broker, store or Jelou unreachable, a failed outcome, a timeout), 2 usage or configuration error."
)]
pub struct Cli {
    /// A configuration file layered over config/default.toml and config/$JELOU_BRIDGE_ENV.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGINT/SIGTERM, then shut down gracefully.
    Run {
        /// Use an in-process stand-in for Jelou: try the bridge without credentials.
        #[arg(long)]
        sandbox: bool,
    },
    /// Print the effective configuration, secrets redacted; exit 2 if it is broken.
    CheckConfig {
        /// Also check that the broker, the store and Jelou's base URL can be reached.
        #[arg(long)]
        probe: bool,
        /// Check as `run --sandbox` would (Jelou credentials not required).
        #[arg(long)]
        sandbox: bool,
    },
    /// Send a sample ticket event to the helpdesk exchange and wait for its outcome.
    Publish(publish::PublishArgs),
    /// Inspect and replay dead letters.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// What the store knows of tickets.
    Tickets {
        #[command(subcommand)]
        command: tickets::TicketsCommand,
    },
    /// Bring the store in line with Jelou's view of each open conversation (closed by an
    /// operator while a webhook was missed, say). Safe while the daemon runs, and to repeat.
    Reconcile {
        /// Only tickets not updated for this long.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many tickets per run.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Run a local stand-in for Jelou's API (start, close, read, send-message).
    MockJelou(MockArgs),
    /// Write the JSON Schemas of every bus message, `DIR/<message>.schema.json`.
    Schemas {
        /// Directory to write them into (created when missing).
        #[arg(long, value_name = "DIR", default_value = "schemas")]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Delay added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of calls (0.0–1.0) answered with --fail-status.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Status of injected failures.
    #[arg(long, default_value_t = 503)]
    fail_status: u16,
    /// Require this x-api-key.
    #[arg(long, env = "MOCK_JELOU_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Send Jelou-style signed webhooks (conversation.start/close) to this URL.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Key for signing those webhooks.
    #[arg(long, env = "MOCK_JELOU_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Answer every message sent to a conversation with a customer's message (a webhook).
    #[arg(long)]
    echo_messages: bool,
}

/// Runs the command line; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jelou-bridge: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(dispatch(cli))
}

/// Loads the settings or says, in one line, which key is wrong.
fn load(config: &Option<PathBuf>, sandbox: bool) -> Result<Settings, ExitCode> {
    Settings::load(&Sources::from_process(config.clone()), sandbox).map_err(|e: ConfigError| {
        eprintln!("jelou-bridge: {e}");
        ExitCode::from(2)
    })
}

async fn dispatch(cli: Cli) -> ExitCode {
    let settings = match &cli.command {
        Command::MockJelou(_) | Command::Schemas { .. } => Settings::defaults(),
        Command::Run { sandbox } | Command::CheckConfig { sandbox, .. } => {
            match load(&cli.config, *sandbox) {
                Ok(s) => s,
                Err(code) => return code,
            }
        }
        // Calls Jelou: its credentials are required.
        Command::Reconcile { .. } => match load(&cli.config, false) {
            Ok(s) => s,
            Err(code) => return code,
        },
        _ => match load(&cli.config, true) {
            Ok(s) => s,
            Err(code) => return code,
        },
    };
    let traces = match telemetry::init(&settings.log, &settings.telemetry) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("jelou-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Run { sandbox } => run(settings, sandbox).await,
        Command::CheckConfig { probe, .. } => check_config::run(&settings, probe).await,
        Command::Publish(args) => publish::run(&settings, args).await,
        Command::Dlq { command } => dlq::run(&settings, command).await,
        Command::Tickets { command } => tickets::run(&settings, command).await,
        Command::Reconcile {
            older_than,
            dry_run,
            limit,
        } => {
            let options = crate::reconcile::Options {
                older_than,
                dry_run,
                limit,
            };
            reconcile(&settings, options).await
        }
        Command::MockJelou(args) => mock_jelou(&settings, args).await,
        Command::Schemas { out } => schemas(&out),
    };
    // Flushing the last spans blocks (bounded): off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    match result {
        Ok(code) => code,
        // A store a newer release migrated: one line naming the key, exit 2, as for any
        // configuration this binary cannot run with.
        Err(e) if schema_too_new(&e) => {
            eprintln!("jelou-bridge: {e}");
            ExitCode::from(2)
        }
        // The chain, each cause once: a store error's line already carries its cause.
        Err(e) => {
            eprintln!("jelou-bridge: {}", crate::error::error_chain(&*e));
            ExitCode::from(1)
        }
    }
}

fn schema_too_new(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::store::StoreError>(),
        Some(crate::store::StoreError::SchemaTooNew(_))
    )
}

async fn reconcile(
    settings: &Settings,
    options: crate::reconcile::Options,
) -> anyhow::Result<ExitCode> {
    use crate::reconcile::Finding;
    let store = crate::store::Store::connect(&settings.store, "reconcile".into()).await?;
    let jelou = crate::jelou::JelouClient::new(&settings.jelou, None)?;
    let conn = crate::amqp::connection::connect(&settings.amqp, "jelou-bridge reconcile").await?;
    let publisher = crate::amqp::Publisher::open(&conn, settings.amqp.confirm_timeout).await?;
    let lines = crate::reconcile::run(
        &store,
        &jelou,
        &publisher,
        &settings.amqp.events_exchange,
        &options,
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "done".into())).await;
    store.close().await;
    let lines = lines?;
    let verb = if options.dry_run {
        "would close"
    } else {
        "closed"
    };
    let (mut changed, mut errors) = (0, 0);
    for line in &lines {
        let t = &line.ticket;
        let what = match &line.finding {
            Finding::InLine => continue,
            Finding::Closed { ended_reason } => {
                changed += 1;
                format!(
                    "{} -> {verb} (Jelou: closed, {})",
                    t.state.as_str(),
                    ended_reason.as_deref().unwrap_or("no reason given")
                )
            }
            Finding::RoomLearned(room) => {
                changed += 1;
                format!("room {room} learned")
            }
            Finding::UnknownToJelou => "Jelou does not know this conversation; left as is".into(),
            Finding::Error(e) => {
                errors += 1;
                format!("error: {e}")
            }
        };
        println!(
            "{:<24} {:<32} {what}",
            t.ticket_id,
            t.conversation_id.as_deref().unwrap_or("-")
        );
    }
    println!(
        "reconcile: {} checked, {changed} {}, {errors} errors{}",
        lines.len(),
        if options.dry_run {
            "to change"
        } else {
            "changed"
        },
        if options.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run(settings: Settings, sandbox: bool) -> anyhow::Result<ExitCode> {
    let app = Application::build(settings, sandbox).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

fn schemas(out: &std::path::Path) -> anyhow::Result<ExitCode> {
    for path in crate::contract::write_all(out)? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn mock_jelou(settings: &Settings, args: MockArgs) -> anyhow::Result<ExitCode> {
    let webhook = match (args.webhook_url, args.webhook_secret) {
        (Some(url), Some(secret)) => Some(WebhookTarget { url, secret }),
        (Some(_), None) => anyhow::bail!("--webhook-url needs --webhook-secret"),
        _ => None,
    };
    let mock = MockJelou::start(
        args.listen,
        MockOptions {
            start_path: settings.jelou.start_path.clone(),
            close_path: settings.jelou.close_path.clone(),
            conversation_path: settings.jelou.conversation_path.clone(),
            latency: Duration::from_millis(args.latency_ms),
            fail_rate: args.fail_rate.clamp(0.0, 1.0),
            fail_status: args.fail_status,
            api_key: args.api_key,
            webhook,
            echo_messages: args.echo_messages,
            record_calls: false,
            ..MockOptions::default()
        },
    )
    .await?;
    tracing::info!(listen = %mock.addr(), base_url = %mock.base_url(), messages_url = %mock.messages_url(), "mock-jelou serving Jelou's start, close, conversation and send-message endpoints");
    println!(
        "mock-jelou listening on {} (set jelou.base_url = \"{}\" and jelou.messages_url = \"{}\")",
        mock.addr(),
        mock.base_url(),
        mock.messages_url()
    );
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    stop.cancelled().await;
    mock.stop();
    Ok(ExitCode::SUCCESS)
}
