//! Jelou's conversation model, as decisions: a user has at most one active conversation per
//! bot, a start may replace it, and a close is addressed by bot + user, not by conversation.
//! So before a close the bridge asks which ticket owns the (bot, user)'s conversation, and
//! after it checks that the conversation Jelou ended is the ticket's own.
//!
//! Plain functions of what the store knows; [`crate::bridge`] carries them out.

use crate::store::{TicketRecord, TicketState};

/// What a `ticket.resolved` leads to, given the ticket and the other open tickets of the
/// same bot + user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClosePlan {
    /// Close by bot + user: the ticket owns the conversation (or no ticket of the bridge
    /// does: a conversation started before the bridge was installed).
    Call,
    /// Another open ticket got the same conversation from its start: the conversation
    /// stays open for it, and this ticket is closed without a call.
    Shared { conversation_id: String },
    /// Another open ticket of the user holds a different conversation: which one Jelou
    /// still has open is not certain from the store alone; read this ticket's conversation
    /// first (closed: record it; active: call).
    Verify { conversation_id: String },
    /// The bridge never started this ticket, and the (bot, user)'s conversation belongs to
    /// another ticket: closing would end that ticket's conversation.
    OwnedByAnother { ticket_id: String },
}

/// `endedReason` when a ticket is closed without a Jelou call because another open ticket
/// shares its conversation.
pub const SHARED: &str = "shared_conversation_still_open";

/// Decides a close. `others` are the other open tickets (`active` or `closing`) of the same
/// bot + user.
pub fn plan_close(ticket: &TicketRecord, others: &[TicketRecord]) -> ClosePlan {
    let open: Vec<&TicketRecord> = others
        .iter()
        .filter(|o| o.ticket_id != ticket.ticket_id)
        .filter(|o| matches!(o.state, TicketState::Active | TicketState::Closing))
        .collect();
    let Some(own) = ticket.conversation_id.as_deref() else {
        return match open.first() {
            Some(owner) => ClosePlan::OwnedByAnother {
                ticket_id: owner.ticket_id.clone(),
            },
            None => ClosePlan::Call,
        };
    };
    if open
        .iter()
        .any(|o| o.conversation_id.as_deref() == Some(own))
    {
        return ClosePlan::Shared {
            conversation_id: own.to_string(),
        };
    }
    if open.iter().any(|o| o.conversation_id.is_some()) {
        return ClosePlan::Verify {
            conversation_id: own.to_string(),
        };
    }
    ClosePlan::Call
}

/// A close answer names the conversation Jelou ended. It is the ticket's only if it is the
/// one the store recorded for it (or the store had none, or Jelou named none).
pub fn ended_other_conversation<'a>(
    recorded: Option<&str>,
    answered: Option<&'a str>,
) -> Option<&'a str> {
    match (recorded, answered) {
        (Some(ours), Some(theirs)) if ours != theirs => Some(theirs),
        _ => None,
    }
}

/// What a `ticket.opened` finds when its ticket is already past `starting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reopened {
    /// Started before: publish `conversation.started` again with this id.
    Started { conversation_id: String },
    /// Resolved before it was ever started (or its conversation is unknown): no start.
    AlreadyResolved,
}

pub fn reopened(record: &TicketRecord) -> Reopened {
    match &record.conversation_id {
        Some(id) if !id.is_empty() => Reopened::Started {
            conversation_id: id.clone(),
        },
        _ => Reopened::AlreadyResolved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(id: &str, state: TicketState, conversation: Option<&str>) -> TicketRecord {
        TicketRecord {
            ticket_id: id.into(),
            bot_id: Some("B".into()),
            user_id: Some("U".into()),
            conversation_id: conversation.map(str::to_string),
            room_id: None,
            state,
            owner: None,
            lease_until: None,
            ended_reason: None,
            last_error: None,
            attempts: 1,
            created_at: 0,
            updated_at: 0,
            traceparent: None,
        }
    }

    use TicketState::*;

    #[test]
    fn a_ticket_alone_on_its_user_is_closed_by_a_call() {
        let t = ticket("T-a", Closing, Some("C-1"));
        assert_eq!(plan_close(&t, &[]), ClosePlan::Call);
        // Closed or failed tickets of the same user own nothing.
        let old = [
            ticket("T-0", Closed, Some("C-0")),
            ticket("T-9", Failed, None),
        ];
        assert_eq!(plan_close(&t, &old), ClosePlan::Call);
    }

    #[test]
    fn a_conversation_shared_with_an_open_ticket_is_left_open() {
        let t = ticket("T-a", Closing, Some("C-1"));
        let others = [ticket("T-b", Active, Some("C-1"))];
        assert_eq!(
            plan_close(&t, &others),
            ClosePlan::Shared {
                conversation_id: "C-1".into()
            }
        );
    }

    #[test]
    fn another_open_ticket_with_another_conversation_means_reading_jelou_first() {
        let t = ticket("T-a", Closing, Some("C-1"));
        let others = [ticket("T-b", Active, Some("C-2"))];
        assert_eq!(
            plan_close(&t, &others),
            ClosePlan::Verify {
                conversation_id: "C-1".into()
            }
        );
        // A ticket still starting (no conversation yet) does not hold one.
        let starting = [ticket("T-c", Starting, None)];
        assert_eq!(plan_close(&t, &starting), ClosePlan::Call);
    }

    #[test]
    fn a_ticket_never_started_never_closes_another_tickets_conversation() {
        let unknown = ticket("T-x", Closing, None);
        assert_eq!(plan_close(&unknown, &[]), ClosePlan::Call);
        let others = [ticket("T-b", Active, Some("C-2"))];
        assert_eq!(
            plan_close(&unknown, &others),
            ClosePlan::OwnedByAnother {
                ticket_id: "T-b".into()
            }
        );
    }

    #[test]
    fn a_close_answer_is_the_tickets_only_when_it_names_its_conversation() {
        assert_eq!(ended_other_conversation(Some("C-1"), Some("C-1")), None);
        assert_eq!(
            ended_other_conversation(Some("C-1"), Some("C-2")),
            Some("C-2")
        );
        assert_eq!(ended_other_conversation(None, Some("C-2")), None);
        assert_eq!(ended_other_conversation(Some("C-1"), None), None);
    }

    #[test]
    fn an_open_for_a_closed_ticket_without_a_conversation_is_already_resolved() {
        assert_eq!(
            reopened(&ticket("T", Closed, None)),
            Reopened::AlreadyResolved
        );
        assert_eq!(
            reopened(&ticket("T", Closed, Some("C-1"))),
            Reopened::Started {
                conversation_id: "C-1".into()
            }
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn state() -> impl Strategy<Value = TicketState> {
            prop::sample::select(vec![Starting, Active, Closing, Closed, Failed])
        }

        fn conversation() -> impl Strategy<Value = Option<&'static str>> {
            prop::option::of(prop::sample::select(vec!["C-1", "C-2", "C-3"]))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Whatever the other tickets of the user look like, a close never calls Jelou
            /// while another open ticket holds the same conversation, and a ticket never
            /// started never closes a conversation another open ticket holds.
            #[test]
            fn a_close_never_ends_a_conversation_another_open_ticket_holds(
                own in conversation(),
                others in prop::collection::vec((state(), conversation()), 0..5),
            ) {
                let t = ticket("T", Closing, own);
                let others: Vec<TicketRecord> = others
                    .into_iter()
                    .enumerate()
                    .map(|(i, (st, c))| ticket(&format!("O-{i}"), st, c))
                    .collect();
                let open = |o: &&TicketRecord| matches!(o.state, Active | Closing);
                let plan = plan_close(&t, &others);
                let shared = own.is_some()
                    && others.iter().filter(open).any(|o| o.conversation_id.as_deref() == own);
                let held_by_other = others.iter().any(|o| open(&o));
                match &plan {
                    ClosePlan::Call => {
                        prop_assert!(!shared);
                        prop_assert!(own.is_some() || !held_by_other);
                    }
                    ClosePlan::Shared { conversation_id } => {
                        prop_assert!(shared);
                        prop_assert_eq!(Some(conversation_id.as_str()), own);
                    }
                    ClosePlan::OwnedByAnother { .. } => prop_assert!(own.is_none() && held_by_other),
                    ClosePlan::Verify { conversation_id } => {
                        prop_assert!(!shared);
                        prop_assert_eq!(Some(conversation_id.as_str()), own);
                    }
                }
            }
        }
    }
}
