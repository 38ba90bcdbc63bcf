//! Who takes a new conversation: the message's assignment, else its `queue`, else the first
//! routing rule (`routing.rules`) whose field matches, else `routing.default_queue`.

use serde_json::Value;

use super::{Assignment, TicketOpened};
use crate::config::RoutingSettings;

/// The start call's assignment: the message's own, else a queue by [`choose_queue`].
pub(super) fn assignment(t: &TicketOpened, routing: &RoutingSettings) -> Assignment {
    t.assignment.clone().unwrap_or_else(|| Assignment {
        kind: "queue".into(),
        target: choose_queue(t, routing),
    })
}

/// The message's `queue`, else the first rule whose field matches, else the default.
pub fn choose_queue(t: &TicketOpened, routing: &RoutingSettings) -> String {
    if let Some(q) = &t.queue {
        return q.clone();
    }
    routing
        .rules
        .iter()
        .find(|rule| {
            lookup(&t.body, &rule.field)
                .and_then(scalar_text)
                .is_some_and(|v| rule.equals.contains(&v))
        })
        .map(|rule| rule.queue.clone())
        .unwrap_or_else(|| routing.default_queue.clone())
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OneOrMany, RoutingRule, Settings};
    use crate::ticket::fixtures::opened;
    use crate::ticket::start_request;
    use serde_json::json;

    fn settings_with_rules() -> Settings {
        let mut s = Settings::defaults();
        s.routing.rules = vec![
            RoutingRule {
                field: "metadata.category".into(),
                equals: OneOrMany::One("billing".into()),
                queue: "FACTURACION".into(),
            },
            RoutingRule {
                field: "metadata.priority".into(),
                equals: OneOrMany::Many(vec!["high".into(), "urgent".into()]),
                queue: "PRIORIDAD".into(),
            },
        ];
        s
    }

    #[test]
    fn assignment_precedence() {
        let s = settings_with_rules();
        let base = json!({"ticketId": "T-1", "userId": "U", "botId": "B",
            "metadata": {"category": "billing", "priority": "high"}});
        // 1. the message's assignment
        let mut b = base.clone();
        b["assignment"] = json!({"type": "operator", "target": "agent-7"});
        b["queue"] = json!("VENTAS");
        assert_eq!(
            start_request(&opened(b), &s).unwrap().assignment,
            Assignment {
                kind: "operator".into(),
                target: "agent-7".into()
            }
        );
        // 2. the message's queue
        let mut b = base.clone();
        b["queue"] = json!("VENTAS");
        assert_eq!(
            start_request(&opened(b), &s).unwrap().assignment.target,
            "VENTAS"
        );
        // 3. the first matching rule (billing comes before priority)
        assert_eq!(
            start_request(&opened(base), &s).unwrap().assignment.target,
            "FACTURACION"
        );
        let b = json!({"ticketId": "T-1", "userId": "U", "botId": "B", "metadata": {"priority": "urgent"}});
        assert_eq!(
            start_request(&opened(b), &s).unwrap().assignment.target,
            "PRIORIDAD"
        );
        // 4. the default queue
        let b = json!({"ticketId": "T-1", "userId": "U", "botId": "B"});
        let a = start_request(&opened(b), &s).unwrap().assignment;
        assert_eq!(
            a,
            Assignment {
                kind: "queue".into(),
                target: "SOPORTE".into()
            }
        );
    }
}
