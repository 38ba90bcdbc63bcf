//! Deletes the queues that interrupted test runs left on the broker (names starting with
//! `jbt-`), read one per line from standard input — feed it `rabbitmqctl list_queues -q name`.
//! Left behind, hundreds of quorum queues wear a broker down. Used by `scripts/test.sh`.
//!
//! Test names carry their process id (`jbt-…-p<pid>-…`): the queues of a test process still
//! running (a concurrent run) are left alone.

use std::io::BufRead;

use lapin::options::QueueDeleteOptions;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let names: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .map(|l| l.trim().to_string())
        .filter(|n| n.starts_with("jbt-"))
        .filter(|n| !testkit::owner_alive(n))
        .collect();
    let conn = testkit::connect_to(
        &testkit::amqp_url(),
        "clean_test_queues",
        std::time::Duration::from_secs(20),
    )
    .await?;
    let mut deleted = 0;
    for name in &names {
        // A failed delete closes the channel: one channel per queue keeps going.
        let channel = conn.create_channel().await?;
        if channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
            .is_ok()
        {
            deleted += 1;
            let _ = channel.close(200, "done".into()).await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
    println!("deleted {deleted} of {} leftover test queues", names.len());
    Ok(())
}
