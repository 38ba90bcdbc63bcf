//! Opening a broker connection: plain or TLS (rustls, an extra CA, a client certificate).

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;

use crate::config::AmqpSettings;

/// Connects once; the caller decides about retrying. Errors never carry the password.
pub async fn connect(settings: &AmqpSettings, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    let url = settings.url.expose_secret();
    let tls = tls_config(settings)?;
    let runtime = lapin::runtime::default_runtime()
        .map_err(|e| anyhow::anyhow!("no async runtime for the broker connection: {e}"))?;
    Connection::connect_with_config(url, props, tls, runtime)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the broker at {}: {}",
                settings.redacted_url(),
                crate::jelou::client::error_chain(&e)
            )
        })
}

fn tls_config(settings: &AmqpSettings) -> anyhow::Result<OwnedTLSConfig> {
    let read = |key: &str, path: &str| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{key}: cannot read {path}: {e}"))
    };
    let cert_chain = if settings.ca_file.is_empty() {
        None
    } else {
        Some(String::from_utf8(read("amqp.ca_file", &settings.ca_file)?)?)
    };
    let identity = if settings.client_cert_file.is_empty() {
        None
    } else {
        Some(OwnedIdentity::PKCS8 {
            pem: read("amqp.client_cert_file", &settings.client_cert_file)?,
            key: read("amqp.client_key_file", &settings.client_key_file)?,
        })
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}
