//! The broker's own limit on this machine: a minimal consumer on the same queue type and
//! prefetch as the bridge that, for each delivery, publishes one persistent message with
//! publisher confirms and then acks. No HTTP, no store: what is left is what RabbitMQ and the
//! AMQP client cost, the ceiling the bridge is held against.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jelou_bridge::config::Settings;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

use crate::bus;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Limit {
    pub prefetch: u16,
    /// Wait before each publish, standing in for Jelou's answer time (0: none).
    pub latency_ms: u64,
    pub messages: usize,
    pub per_second: f64,
    /// CPU of this whole process (the minimal consumer and the observer) per message: a floor
    /// for what the AMQP side of the bridge can cost.
    pub cpu_us_per_message: f64,
}

/// An outcome-sized body (the bridge's `conversation.started` is about this long).
fn outcome_body() -> Vec<u8> {
    serde_json::json!({
        "event": "conversation.started", "ticketId": null,
        "conversationId": "conv-lt-0000000000-B00000-000000", "botId": "bot-loadtest",
        "userId": "user-00000", "status": "active", "occurredAt": "2026-01-01T00:00:00.000000Z",
    })
    .to_string()
    .into_bytes()
}

pub async fn measure(
    amqp_url: &str,
    prefix: &str,
    prefetch: u16,
    latency: Duration,
    n: usize,
    stall: Duration,
) -> anyhow::Result<Limit> {
    let mut settings = Settings::defaults();
    settings.amqp.exchange = format!("{prefix}.limit-in");
    settings.amqp.queue = format!("{prefix}.limit");
    settings.amqp.events_exchange = format!("{prefix}.limit-out");
    let admin = bus::connect(amqp_url, "loadtest limit admin").await?;
    let result = async {
        let channel = bus::confirm_channel(&admin).await?;
        bus::declare(&channel, &settings).await?;
        let mut seen = bus::observe(&admin, &settings.amqp.events_exchange, prefix.into()).await?;
        bus::preload(&channel, &settings.amqp.exchange, prefix, n).await?;

        // Its own connection, as the bridge has: a consuming channel and a confirm channel.
        let conn = bus::connect(amqp_url, "loadtest broker-limit consumer").await?;
        let consuming = conn.create_channel().await?;
        consuming
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let publisher = bus::confirm_channel(&conn).await?;
        let mut consumer = consuming
            .basic_consume(
                settings.amqp.queue.as_str().into(),
                "loadtest-limit".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let body: Arc<[u8]> = outcome_body().into();
        let events = settings.amqp.events_exchange.clone();
        let worker = tokio::spawn(async move {
            while let Some(next) = consumer.next().await {
                // Said, not swallowed: the run then stalls, and this says why.
                let delivery = match next {
                    Ok(delivery) => delivery,
                    Err(e) => {
                        eprintln!("the broker-only consumer stopped: {e}");
                        break;
                    }
                };
                let publisher = publisher.clone();
                let body = body.clone();
                let events = events.clone();
                tokio::spawn(async move {
                    if !latency.is_zero() {
                        tokio::time::sleep(latency).await;
                    }
                    let props = BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2);
                    let confirmed = match publisher
                        .basic_publish(
                            events.as_str().into(),
                            "conversation.started".into(),
                            BasicPublishOptions::default(),
                            &body,
                            props,
                        )
                        .await
                    {
                        Ok(confirm) => matches!(confirm.await, Ok(c) if c.is_ack()),
                        Err(_) => false,
                    };
                    if confirmed {
                        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    }
                });
            }
        });
        let ((first, cpu0), (last, cpu1)) = collect(&mut seen, n, stall).await?;
        worker.abort();
        let _ = conn.close(200, "done".into()).await;
        Ok::<_, anyhow::Error>(Limit {
            prefetch,
            latency_ms: latency.as_millis() as u64,
            messages: n,
            per_second: rate(n, first, last),
            cpu_us_per_message: (cpu1 - cpu0) * 1e6 / n.saturating_sub(1).max(1) as f64,
        })
    }
    .await;
    bus::remove(amqp_url, &settings).await;
    let _ = admin.close(200, "done".into()).await;
    result
}

/// Waits for `n` messages; the times of the first and the last, with this process's CPU
/// seconds then.
async fn collect(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<bus::Seen>,
    n: usize,
    stall: Duration,
) -> anyhow::Result<((Instant, f64), (Instant, f64))> {
    let cpu = || crate::proc_stats::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let mut first = None;
    let mut last = (Instant::now(), 0.0);
    for got in 0..n {
        let s = tokio::time::timeout(stall, seen.recv())
            .await
            .map_err(|_| anyhow::anyhow!("broker-limit run stalled after {got} of {n} messages"))?
            .ok_or_else(|| anyhow::anyhow!("observer stopped"))?;
        if first.is_none() {
            first = Some((s.at, cpu()));
        }
        if got + 1 == n {
            last = (s.at, cpu());
        }
    }
    Ok((first.unwrap_or(last), last))
}

/// Messages a second between the first and the last of `n`.
pub fn rate(n: usize, first: Instant, last: Instant) -> f64 {
    let secs = last.duration_since(first).as_secs_f64();
    if n < 2 || secs <= 0.0 {
        return 0.0;
    }
    (n - 1) as f64 / secs
}
