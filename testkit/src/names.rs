//! Names and addresses every test shares: the services' URLs (`JB_TEST_AMQP_URL`,
//! `JB_TEST_PG_URL`), the stand-in's credentials, and unique names that say which process
//! made them, so a crashed run's leftovers can be told from a live run's.

/// The API key the stand-in for Jelou wants and the bridge sends.
pub const API_KEY: &str = "test-api-key-7f3a";
/// The Jelou project the bridge is configured with.
pub const PROJECT: &str = "proj-test";
/// The key the tests' webhooks and send-message calls are signed with.
pub const SIGNING_SECRET: &str = "whsec-test-5d1c";

/// The broker the tests use: `JB_TEST_AMQP_URL`, else the local RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("JB_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The PostgreSQL server the tests create their databases on: `JB_TEST_PG_URL`, else the
/// local one.
pub fn pg_url() -> String {
    std::env::var("JB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// A short unique name for a test's exchanges and queues. It carries this process's id
/// (`-p<pid>-`), so the clean-up of leftovers (examples/clean_test_queues.rs, through
/// [`owner_alive`]) can tell a crashed run's queues from those of a run still going.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-p{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Whether the process named in a [`unique`] name (`-p<pid>-`) is still running.
pub fn owner_alive(name: &str) -> bool {
    name.split('-')
        .filter_map(|part| part.strip_prefix('p')?.parse::<u32>().ok())
        .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// A local port nobody listens on (for a broker, store or Jelou that must not answer). Not
/// for a server to bind: whoever binds must bind port 0 and say which port it got.
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a local port can be bound")
        .port()
}
