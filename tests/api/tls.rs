//! Transport security: `amqps://` to the broker, through a TLS-terminating proxy this test
//! puts in front of the local RabbitMQ, with a CA and certificates generated here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jelou_bridge::app::Application;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use testkit::*;

const WAIT: Duration = Duration::from_secs(20);

/// A test CA, a server certificate for 127.0.0.1/localhost and a client certificate it
/// signed, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    server_cert: String,
    server_key: String,
}

impl Pki {
    fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "jelou-bridge test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            vec!["jelou-bridge".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        std::fs::write(dir.path().join("client.pem"), client_cert).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key).unwrap();
        Pki {
            dir,
            server_cert,
            server_key,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The proxy's TLS settings; with `client_auth`, clients must show a certificate this
    /// CA signed.
    fn server_config(&self, client_auth: bool) -> Arc<ServerConfig> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_slice_iter(self.server_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.server_key.as_bytes()).unwrap();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
                roots.add(ca.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(builder.with_single_cert(certs, key).unwrap())
    }
}

/// Terminates TLS and forwards the plain AMQP bytes to the test broker.
struct TlsProxy {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl TlsProxy {
    async fn start(config: Arc<ServerConfig>) -> TlsProxy {
        let broker = url::Url::parse(&amqp_url()).unwrap();
        let upstream = format!(
            "{}:{}",
            broker.host_str().unwrap(),
            broker.port().unwrap_or(5672)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = TlsProxy {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            refused: Arc::default(),
            stop: CancellationToken::new(),
        };
        let acceptor = TlsAcceptor::from(config);
        let (accepted, refused, stop) = (
            proxy.accepted.clone(),
            proxy.refused.clone(),
            proxy.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    conn = listener.accept() => conn.unwrap(),
                    _ = stop.cancelled() => return,
                };
                let (acceptor, upstream, stop) = (acceptor.clone(), upstream.clone(), stop.clone());
                let (accepted, refused) = (accepted.clone(), refused.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        refused.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mut plain = TcpStream::connect(&upstream).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tls, &mut plain) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.addr.port())
    }

    /// Waits until the proxy has refused `n` TLS handshakes.
    async fn wait_refused(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.refused.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the proxy saw fewer than {n} refused handshakes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A ticket opened and resolved through the bridge: both outcomes on the bus.
async fn round_trip(app: &mut TestApp, ticket: &str) {
    app.bus
        .publish_json(
            "ticket.opened",
            &json!({"ticketId": ticket, "userId": "U-tls", "botId": "B"}),
        )
        .await;
    app.bus
        .publish_json("ticket.resolved", &json!({"ticketId": ticket}))
        .await;
    let seen = app.bus.expect(2, WAIT).await;
    let keys: Vec<&str> = seen.iter().map(|s| s.routing_key.as_str()).collect();
    assert_eq!(keys, ["conversation.started", "conversation.closed"]);
    assert!(seen.iter().all(|s| s.ticket() == ticket));
}

/// `check-config --probe` with these TLS settings: its broker line (Jelou's base URL points
/// nowhere, so the command as a whole fails; only the broker is under test here).
fn probe(url: &str, tls: &[(&str, String)], dir: &Path) -> String {
    let mut cmd = clean_bridge_command();
    for (key, value) in tls {
        cmd.env(format!("JELOU_BRIDGE__AMQP__{key}"), value);
    }
    let out = cmd
        .args(["check-config", "--probe", "--sandbox"])
        .env("JELOU_BRIDGE__AMQP__URL", url)
        .env(
            "JELOU_BRIDGE__STORE__URL",
            format!("sqlite://{}/probe.db", dir.display()),
        )
        .env("JELOU_BRIDGE__JELOU__BASE_URL", "http://127.0.0.1:1")
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find(|l| l.starts_with("# probe broker:"))
        .unwrap_or_else(|| panic!("no broker probe line in:\n{stdout}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_with_the_configured_ca_carries_tickets() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(pki.server_config(false)).await;
    let (url, ca) = (proxy.url(), pki.path("ca.pem"));
    let mut app = spawn_app_with(|s, _| {
        s.amqp.url = SecretString::from(url);
        s.amqp.ca_file = ca;
    })
    .await;
    round_trip(&mut app, "T-TLS-1").await;
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 1,
        "the bridge came in over TLS"
    );
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 0);
    app.stop().await;

    let line = probe(
        &proxy.url(),
        &[("CA_FILE", pki.path("ca.pem"))],
        pki.dir.path(),
    );
    assert!(
        line.contains("ok (amqps://guest:redacted@127.0.0.1:"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_to_an_untrusted_certificate_fails_clearly_and_never_gets_ready() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(pki.server_config(false)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&unique("jbt-tls"), "http://127.0.0.1:1", dir.path());
    settings.amqp.url = SecretString::from(proxy.url());
    let app = Application::build(settings, false).await.unwrap();
    let readyz = format!("http://{}/readyz", app.http_addr());
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));

    // It keeps trying (two refused handshakes: a retry after the first), and is not ready.
    proxy.wait_refused(2).await;
    let resp = reqwest::get(&readyz).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["broker"], "disconnected", "{body}");
    assert_eq!(proxy.accepted.load(Ordering::SeqCst), 0);
    stop.cancel();
    running.await.unwrap().unwrap();

    // The operator's view: one line that says what is wrong, no password.
    let line = probe(&proxy.url(), &[], dir.path());
    assert!(line.contains("FAILED"), "{line}");
    assert!(line.contains("amqps://guest:redacted@127.0.0.1:"), "{line}");
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    assert!(!line.contains("guest:guest"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_wants_a_client_certificate_gets_the_configured_one() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(pki.server_config(true)).await;
    let (url, ca, cert, key) = (
        proxy.url(),
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let mut app = spawn_app_with(|s, _| {
        s.amqp.url = SecretString::from(url);
        s.amqp.ca_file = ca;
        s.amqp.client_cert_file = cert;
        s.amqp.client_key_file = key;
    })
    .await;
    round_trip(&mut app, "T-TLS-2").await;
    app.stop().await;

    // Without the client certificate the broker side refuses the handshake.
    let refused_before = proxy.refused.load(Ordering::SeqCst);
    let line = probe(
        &proxy.url(),
        &[("CA_FILE", pki.path("ca.pem"))],
        pki.dir.path(),
    );
    assert!(line.contains("FAILED"), "{line}");
    assert!(proxy.refused.load(Ordering::SeqCst) > refused_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tls_settings_apply_to_every_failover_node() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(pki.server_config(true)).await;
    let closed_port = unused_port();
    let (url, ca, cert, key) = (
        proxy.url(),
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    // `amqp.url` is down; the only node that answers is a failover node that wants the
    // configured CA and client certificate.
    let mut app = spawn_app_with(|s, _| {
        s.amqp.url = SecretString::from(format!("amqps://guest:guest@127.0.0.1:{closed_port}/%2f"));
        s.amqp.failover_urls = vec![SecretString::from(url)];
        s.amqp.ca_file = ca;
        s.amqp.client_cert_file = cert;
        s.amqp.client_key_file = key;
    })
    .await;
    round_trip(&mut app, "T-TLS-3").await;
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 1);
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 0);
    app.stop().await;
}

#[test]
fn tls_files_that_do_not_exist_are_a_configuration_error() {
    let missing: PathBuf = std::env::temp_dir().join("jb-no-such-ca.pem");
    let out = Command::new(bridge_bin())
        .args(["check-config", "--sandbox"])
        .env(
            "JELOU_BRIDGE__AMQP__URL",
            "amqps://guest:guest@127.0.0.1:5671/%2f",
        )
        .env("JELOU_BRIDGE__AMQP__CA_FILE", &missing)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("amqp.ca_file"), "{err}");
}
