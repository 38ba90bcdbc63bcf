//! `[routing]` and `[close]`: what the bridge tells Jelou about a ticket beyond what its event
//! says: the Jelou queue a new conversation goes to, and the closing text.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The `[routing]` section: which Jelou queue a `ticket.opened` lands in.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RoutingSettings {
    /// Jelou queue assigned when neither the message nor a rule names one.
    pub default_queue: String,
    /// Rules tried in order, the first match wins; none by default.
    #[serde(default)]
    pub rules: Vec<RoutingRule>,
}

/// `field` (a dotted path into the `ticket.opened` body) equal to one of `equals` → `queue`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RoutingRule {
    /// Dotted path into the `ticket.opened` body, e.g. `metadata.category`.
    pub field: String,
    /// The value, or values, that make the rule match.
    pub equals: OneOrMany,
    /// The Jelou queue a matching ticket is assigned to.
    pub queue: String,
}

/// A string or a list of strings, as a rule's `equals` may be written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `equals = "billing"`.
    One(String),
    /// `equals = ["billing", "invoices"]`.
    Many(Vec<String>),
}

impl OneOrMany {
    /// Whether `value` is the one, or one of the many.
    pub fn contains(&self, value: &str) -> bool {
        match self {
            OneOrMany::One(v) => v == value,
            OneOrMany::Many(vs) => vs.iter().any(|v| v == value),
        }
    }
}

impl RoutingSettings {
    /// Checks the section; the first problem found is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.default_queue.trim().is_empty() {
            return Err(ConfigError::new(
                "routing.default_queue",
                "must not be empty",
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.field.is_empty() || rule.queue.is_empty() {
                return Err(ConfigError::new(
                    format!("routing.rules[{i}]"),
                    "needs a field and a queue",
                ));
            }
        }
        Ok(())
    }
}

/// The `[close]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CloseSettings {
    /// Closing text when a `ticket.resolved` names neither a redirect nor a closing message
    /// (`{ticketId}` is replaced).
    pub default_text: String,
}
