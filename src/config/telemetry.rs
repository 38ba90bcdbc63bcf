//! `[log]` and `[telemetry]`: the process's log lines, and where its trace spans go.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON unless stderr is a terminal.
    Auto,
    /// One JSON object a line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// The `[log]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LogSettings {
    /// `auto`, `json` or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `jelou_bridge=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

/// Traces: W3C trace context always travels with a ticket; these settings only say where the
/// spans go.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TelemetrySettings {
    /// OTLP/HTTP (protobuf) collector URL, e.g. `http://127.0.0.1:4318` (`/v1/traces` is
    /// appended unless the path already ends with it); none or empty: spans are not exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
}

impl TelemetrySettings {
    /// Where spans are POSTed, when export is on.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref().map(str::trim)?;
        if base.is_empty() {
            return None;
        }
        if base.trim_end_matches('/').ends_with("/v1/traces") {
            return Some(base.to_string());
        }
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }

    /// Checks the section; the first problem found is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(traces) = self.traces_url() {
            let url = url::Url::parse(&traces).map_err(|e| {
                ConfigError::new("telemetry.otlp_endpoint", format!("not a URL: {e}"))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new(
                    "telemetry.otlp_endpoint",
                    "scheme must be http or https (OTLP over HTTP)",
                ));
            }
            // The exporter's own error lines quote the URL: no secret may be in it.
            if !url.username().is_empty() || url.password().is_some() {
                return Err(ConfigError::new(
                    "telemetry.otlp_endpoint",
                    "must not carry credentials; set OTEL_EXPORTER_OTLP_HEADERS instead",
                ));
            }
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::new(
                "telemetry.service_name",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::vars;
    use crate::config::Settings;

    #[test]
    fn otlp_endpoint_gets_the_traces_path_and_a_bad_one_is_named() {
        let s = Settings::load(
            &vars(&[(
                "JELOU_BRIDGE__TELEMETRY__OTLP_ENDPOINT",
                "http://otel:4318/",
            )]),
            true,
        )
        .unwrap();
        assert_eq!(
            s.telemetry.traces_url().as_deref(),
            Some("http://otel:4318/v1/traces")
        );
        let e = Settings::load(
            &vars(&[("JELOU_BRIDGE__TELEMETRY__OTLP_ENDPOINT", "otel:4317")]),
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("telemetry.otlp_endpoint"), "{e}");
        let s = Settings::load(
            &vars(&[(
                "JELOU_BRIDGE__TELEMETRY__OTLP_ENDPOINT",
                "https://u:pw-otlp-123@otel:4318",
            )]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            s.contains("telemetry.otlp_endpoint") && !s.contains("pw-otlp-123"),
            "credentials refused, and not shown: {s}"
        );
    }
}
