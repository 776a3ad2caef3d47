//! Notification channels (the SNS part), declared in the manifest as
//! `[channels.<name>]`: an `inbox` keeps each recipient's messages for the
//! app (`GET /v1/inbox/{recipient}`), a `log` writes them to the host's log.
//! Every notification carries its business event's idempotency key; a key is
//! sent at most once per channel, across retries and restarts, because it is
//! recorded in the state database in the same commit as the message.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::plugin::Notification;
use crate::state::{InboxMessage, StateStore};

/// What a channel does with a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Kept per recipient for the app to read.
    Inbox,
    /// Written to the host's log (subject and recipient; never the body).
    Log,
}

/// A `[channels.<name>]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Its name, as plugins address it.
    pub name: String,
    /// What it does.
    pub kind: ChannelKind,
}

/// The pipeline's channels.
pub struct Channels {
    kinds: BTreeMap<String, ChannelKind>,
    state: Arc<StateStore>,
}

impl Channels {
    /// The channels of `specs`, remembering what was sent in `state`.
    pub fn new(specs: &[ChannelSpec], state: Arc<StateStore>) -> Channels {
        Channels { kinds: specs.iter().map(|c| (c.name.clone(), c.kind)).collect(), state }
    }

    /// Sends a notification unless its key was sent on its channel before;
    /// returns whether it was new.
    pub fn send(&self, n: Notification) -> Result<bool, String> {
        let Some(kind) = self.kinds.get(&n.channel) else {
            return Err(format!(
                "no notification channel `{0}`: declare it as [channels.{0}] in the pipeline manifest",
                n.channel
            ));
        };
        if n.idempotency_key.is_empty() {
            return Err("a notification needs an idempotency key (the same for the same business event)".into());
        }
        let message = InboxMessage {
            sequence: 0,
            channel: n.channel.clone(),
            recipient: n.recipient.clone(),
            subject: n.subject.clone(),
            body: n.body.clone(),
            idempotency_key: n.idempotency_key.clone(),
            sent_at: crate::sink::format_ms(crate::stream::now_ms()),
        };
        let inbox = (*kind == ChannelKind::Inbox).then_some(message);
        let new = self.state.record_sent(&n.channel, &n.idempotency_key, inbox).map_err(|e| e.to_string())?;
        if new {
            tracing::info!(channel = %n.channel, recipient = %n.recipient, subject = %n.subject, "notification sent");
        }
        Ok(new)
    }

    /// Whether `name` is an inbox channel.
    pub fn is_inbox(&self, name: &str) -> bool {
        self.kinds.get(name) == Some(&ChannelKind::Inbox)
    }

    /// The inbox channels' names.
    pub fn inboxes(&self) -> impl Iterator<Item = &str> {
        self.kinds.iter().filter(|(_, k)| **k == ChannelKind::Inbox).map(|(n, _)| n.as_str())
    }
}
