//! Publishing with publisher confirms: a publish counts only once the broker has confirmed
//! it; a nack, a return of a mandatory message, or no confirm in time is an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

/// Why a publish does not count. For an outcome, a dead letter or a park, the delivery that
/// led to it stays unacked, to be done again; a copy to `reply_to` that fails is only
/// warned about (the outcome is on the events exchange either way).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No broker session (between connections).
    #[error("broker unavailable")]
    Unavailable,
    /// The channel or connection failed under the publish; the cause is lapin's.
    #[error("broker error: {0}")]
    Broker(#[source] lapin::Error),
    /// The channel was not put in confirm mode, so no confirm can come (a bug, not a state).
    #[error("broker error: the channel is not in confirm mode")]
    NotConfirming,
    /// The broker refused the message (a full queue with `reject-publish`, say).
    #[error("broker refused (nacked) the message")]
    Nacked,
    /// A mandatory message no queue took: the reply code and text.
    #[error("no queue took the message (returned: {0})")]
    Returned(String),
    /// No confirm within `amqp.confirm_timeout`.
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
}

/// A confirm-mode channel. Clones share it; lapin pipelines concurrent publishes on it and
/// hands each its own confirm.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    confirm_timeout: Duration,
}

impl Publisher {
    pub async fn open(conn: &Connection, confirm_timeout: Duration) -> lapin::Result<Publisher> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            confirm_timeout,
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes and waits for the broker's confirm. `mandatory` makes an unroutable message
    /// an error (use it where a queue must take the message: delay and dead-letter queues).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let wait = async {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await
                .map_err(PublishError::Broker)?
                .await
                .map_err(PublishError::Broker)?;
            match confirm {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(returned)) => Err(PublishError::Returned(format!(
                    "{} {}",
                    returned.reply_code, returned.reply_text
                ))),
                Confirmation::Nack(_) => Err(PublishError::Nacked),
                Confirmation::NotRequested => Err(PublishError::NotConfirming),
            }
        };
        match tokio::time::timeout(self.confirm_timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::Timeout(self.confirm_timeout)),
        }
    }
}

/// The current broker session as the rest of the process sees it: whether it is up, and a
/// publisher on it (the webhook publishes through this).
#[derive(Default)]
pub struct BrokerLink {
    /// Set by the consumer's supervisor, cleared when the connection is lost.
    publisher: RwLock<Option<Publisher>>,
    connected: AtomicBool,
}

impl BrokerLink {
    pub fn set(&self, publisher: Option<Publisher>) {
        self.connected.store(publisher.is_some(), Ordering::SeqCst);
        *self.publisher.write().unwrap_or_else(|e| e.into_inner()) = publisher;
        metrics::gauge!("jelou_bridge_broker_connected").set(if self.is_connected() {
            1.0
        } else {
            0.0
        });
    }

    pub fn publisher(&self) -> Option<Publisher> {
        self.publisher
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
            && self
                .publisher()
                .is_some_and(|p| p.channel.status().connected())
    }
}
