//! Notification channels (the SNS part), declared in the manifest as
//! `[channels.<name>]`:
//!
//! - `inbox` keeps each recipient's messages for the app (`GET /v1/inbox/{recipient}`);
//! - `webhook` POSTs each notification as JSON to a URL, signed with
//!   HMAC-SHA256 (`x-weir-signature: sha256=<hex>` over the body) and with a
//!   delivery id stable across retries (`x-weir-delivery`); failed attempts are
//!   retried with backoff for `retry-duration`, then the delivery is kept among
//!   the channel's failed deliveries (`GET /v1/channels/{channel}/failed`);
//! - `log` writes the subject and recipient to the host's log.
//!
//! Every notification carries its business event's idempotency key; a key is
//! sent at most once per channel, across retries and restarts, because it is
//! recorded in the state database in the same commit as the inbox message or
//! the webhook delivery (which therefore survives a restart too).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;

pub use weir_plugin::Notification;

use crate::state::{Delivery, InboxMessage, OutboxEntry, Settle, StateStore};

/// First wait before a webhook is tried again; it doubles up to [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(500);
/// Longest wait between two attempts of a webhook delivery.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
/// How long one webhook request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the webhook sender looks for due deliveries.
const SENDER_TICK: Duration = Duration::from_millis(50);
/// How often, when the deliveries are on a cluster (looking is a scan there).
const SHARED_SENDER_TICK: Duration = Duration::from_millis(500);

/// What a channel does with a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelKind {
    /// Kept per recipient for the app to read.
    Inbox,
    /// POSTed to a URL.
    Webhook(WebhookSpec),
    /// Written to the host's log (subject and recipient; never the body).
    Log,
}

/// Where and how a webhook channel POSTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    /// An http:// or https:// URL.
    pub url: String,
    /// The HMAC-SHA256 key of the signature header.
    pub secret: String,
    /// How long a delivery is retried before it is kept as failed.
    pub retry_duration: Duration,
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
    /// Notifications sent (new keys) per channel since the start.
    sent: BTreeMap<String, AtomicU64>,
    /// Each webhook channel's requests since the start.
    webhooks: BTreeMap<String, WebhookCounts>,
    /// The latest notifications sent, newest last (for the dashboard).
    recent: Mutex<VecDeque<Sent>>,
}

/// How many of the latest notifications [`Channels::recent`] keeps.
const RECENT: usize = 20;

/// A notification sent, as the dashboard lists it: who got what, not the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sent {
    /// Its channel.
    pub channel: String,
    /// Its recipient.
    pub recipient: String,
    /// Its one-line summary.
    pub subject: String,
    /// When it was sent (RFC 3339).
    pub sent_at: String,
}

/// What a webhook channel's sender did since the host started.
#[derive(Debug, Default)]
struct WebhookCounts {
    attempts: AtomicU64,
    delivered: AtomicU64,
    given_up: AtomicU64,
    seconds: crate::metrics::Seconds,
}

/// What `weir status` and `/metrics` show of a channel.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStatus {
    /// Its name.
    pub name: String,
    /// Notifications sent (each idempotency key once) since the start.
    pub sent: u64,
    /// Webhook requests made, first tries and retries.
    pub attempts: u64,
    /// Webhook deliveries the receiver acknowledged.
    pub delivered: u64,
    /// Webhook deliveries given up on after the retry duration.
    pub given_up: u64,
}

impl Channels {
    /// The channels of `specs`, remembering what was sent in `state`.
    pub fn new(specs: &[ChannelSpec], state: Arc<StateStore>) -> Channels {
        Channels {
            kinds: specs.iter().map(|c| (c.name.clone(), c.kind.clone())).collect(),
            state,
            sent: specs.iter().map(|c| (c.name.clone(), AtomicU64::new(0))).collect(),
            webhooks: specs
                .iter()
                .filter(|c| matches!(c.kind, ChannelKind::Webhook(_)))
                .map(|c| (c.name.clone(), WebhookCounts::default()))
                .collect(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }

    /// Each channel's counts.
    pub fn status(&self) -> Vec<ChannelStatus> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.sent
            .iter()
            .map(|(name, sent)| {
                let webhook = self.webhooks.get(name);
                let count = |f: fn(&WebhookCounts) -> &AtomicU64| webhook.map_or(0, |w| get(f(w)));
                ChannelStatus {
                    name: name.clone(),
                    sent: get(sent),
                    attempts: count(|w| &w.attempts),
                    delivered: count(|w| &w.delivered),
                    given_up: count(|w| &w.given_up),
                }
            })
            .collect()
    }

    /// How long each webhook channel's requests took.
    pub fn webhook_times(&self) -> Vec<(String, crate::metrics::Seconds)> {
        self.webhooks.iter().map(|(name, w)| (name.clone(), w.seconds.clone())).collect()
    }

    /// Sends a notification unless its key was sent on its channel before;
    /// returns whether it was new.
    pub fn send(&self, n: Notification) -> Result<bool, String> {
        let tx = self.state.begin().map_err(|e| e.to_string())?;
        let sent = self.send_in(n, &tx)?;
        tx.commit().map_err(|e| e.to_string())?;
        let new = sent.is_some();
        if let Some(sent) = sent {
            self.count_sent(sent);
        }
        Ok(new)
    }

    /// [`Channels::send`] as part of `tx`: recorded (and delivered) only if it
    /// commits. Returns what was sent if its key was new; the caller counts it
    /// with [`Channels::count_sent`] once `tx` commits.
    pub fn send_in(&self, n: Notification, tx: &crate::state::StateTx) -> Result<Option<Sent>, String> {
        let Some(kind) = self.kinds.get(&n.channel) else {
            return Err(format!(
                "no notification channel `{0}`: declare it as [channels.{0}] in the pipeline manifest",
                n.channel
            ));
        };
        crate::names::check(crate::names::NameKind::Recipient, "recipient", &n.recipient).map_err(|e| e.to_string())?;
        if n.idempotency_key.is_empty() {
            return Err("a notification needs an idempotency key (the same for the same business event)".into());
        }
        let now = crate::stream::now_ms();
        let message = InboxMessage {
            sequence: 0,
            channel: n.channel.clone(),
            recipient: n.recipient.clone(),
            subject: n.subject.clone(),
            body: n.body.clone(),
            idempotency_key: n.idempotency_key.clone(),
            sent_at: crate::time::format_ms(now),
        };
        let sent_at_text = message.sent_at.clone();
        let delivery = match kind {
            ChannelKind::Inbox => Delivery::Inbox(message),
            ChannelKind::Log => Delivery::None,
            ChannelKind::Webhook(_) => {
                let delivery_id = delivery_id(&n.channel, &n.idempotency_key);
                let body = serde_json::json!({
                    "delivery_id": delivery_id,
                    "channel": message.channel,
                    "recipient": message.recipient,
                    "subject": message.subject,
                    "body": message.body,
                    "idempotency_key": message.idempotency_key,
                    "sent_at": message.sent_at,
                });
                Delivery::Outbox(OutboxEntry {
                    delivery_id,
                    channel: n.channel.clone(),
                    body: body.to_string(),
                    first_ms: now,
                    next_ms: now,
                    attempts: 0,
                    last_error: None,
                })
            }
        };
        let new = tx.record_sent(&n.channel, &n.idempotency_key, delivery).map_err(|e| e.to_string())?;
        match kind {
            // What a log channel is for: the operator reads it in the host's log.
            ChannelKind::Log if new => {
                tracing::info!(channel = %n.channel, recipient = %n.recipient, subject = %n.subject, "notification")
            }
            _ if new => tracing::debug!(channel = %n.channel, recipient = %n.recipient, "notification sent"),
            _ => {}
        }
        Ok(new.then_some(Sent {
            channel: n.channel,
            recipient: n.recipient,
            subject: n.subject,
            sent_at: sent_at_text,
        }))
    }

    /// Counts a notification sent, once its transaction committed, and keeps
    /// it among the latest.
    pub fn count_sent(&self, sent: Sent) {
        if let Some(count) = self.sent.get(&sent.channel) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(sent);
        }
    }

    /// The latest notifications sent since the start, newest first.
    pub fn recent(&self) -> Vec<Sent> {
        self.recent.lock().map(|r| r.iter().rev().cloned().collect()).unwrap_or_default()
    }

    /// Notifications sent per channel since the start (keys sent before not counted).
    pub fn sent(&self) -> BTreeMap<String, u64> {
        self.sent.iter().map(|(name, n)| (name.clone(), n.load(Ordering::Relaxed))).collect()
    }

    /// Whether `name` is an inbox channel.
    pub fn is_inbox(&self, name: &str) -> bool {
        self.kinds.get(name) == Some(&ChannelKind::Inbox)
    }

    /// Whether `name` is a webhook channel.
    pub fn is_webhook(&self, name: &str) -> bool {
        matches!(self.kinds.get(name), Some(ChannelKind::Webhook(_)))
    }

    /// The inbox channels' names.
    pub fn inboxes(&self) -> impl Iterator<Item = &str> {
        self.kinds.iter().filter(|(_, k)| **k == ChannelKind::Inbox).map(|(n, _)| n.as_str())
    }

    /// Makes the webhook deliveries (queued ones from before a restart too) on a
    /// thread of its own, which ends when the channels are dropped.
    pub fn start_webhooks(self: &Arc<Self>) {
        if !self.kinds.values().any(|k| matches!(k, ChannelKind::Webhook(_))) {
            return;
        }
        let tick = if self.state.is_shared() { SHARED_SENDER_TICK } else { SENDER_TICK };
        let channels: Weak<Channels> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("webhooks".into()).spawn(move || {
            let span = tracing::info_span!("channels.webhooks");
            let _enter = span.enter();
            let Ok(client) = crate::outbound::HttpClient::new() else {
                return tracing::error!("cannot start the webhook sender; deliveries stay queued");
            };
            loop {
                std::thread::sleep(tick);
                let Some(channels) = channels.upgrade() else { return };
                let due = match channels.state.due_deliveries(crate::stream::now_ms()) {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the webhook deliveries");
                        continue;
                    }
                };
                for entry in due {
                    // Hosts sharing the state attempt each delivery once at a time.
                    let until = crate::stream::now_ms() + 2 * REQUEST_TIMEOUT.as_millis() as i64;
                    match channels.state.take_delivery(&entry, until) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot take a webhook delivery for an attempt");
                            continue;
                        }
                    }
                    if let Err(e) = crate::io::block_on(channels.attempt(&client, entry)) {
                        // The delivery stays queued in the state database: tried again next tick.
                        tracing::error!(error = %e, "cannot run the webhook sender");
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the webhook sender; deliveries stay queued");
        }
    }

    /// One attempt of a delivery, settled in the state database.
    async fn attempt(&self, client: &crate::outbound::HttpClient, mut entry: OutboxEntry) {
        let Some(ChannelKind::Webhook(spec)) = self.kinds.get(&entry.channel) else {
            // The channel left the manifest: nowhere to deliver to.
            entry.last_error = Some(format!("channel `{}` is no longer a webhook", entry.channel));
            let _ = self.state.settle(&entry, Settle::GiveUp);
            return;
        };
        let signature = signature(&spec.secret, entry.body.as_bytes());
        let request = hyper::Request::post(&spec.url)
            .header("content-type", "application/json")
            .header("x-weir-delivery", &entry.delivery_id)
            .header("x-weir-signature", signature)
            .body(bytes::Bytes::from(entry.body.clone()))
            .map_err(|e| crate::outbound::OutboundError::Request(e.to_string()));
        let started = std::time::Instant::now();
        let response = match request {
            Ok(request) => client.send(request, REQUEST_TIMEOUT).await,
            Err(e) => Err(e),
        };
        let counts = self.webhooks.get(&entry.channel);
        if let Some(counts) = counts {
            counts.seconds.observe(started.elapsed());
            counts.attempts.fetch_add(1, Ordering::Relaxed);
        }
        entry.attempts += 1;
        let now = crate::stream::now_ms();
        let outcome = match response {
            Ok(r) if r.status().is_success() => Settle::Delivered,
            Ok(r) => {
                entry.last_error = Some(format!("{} answered {}", spec.url, r.status()));
                retry_or_give_up(&mut entry, spec, now)
            }
            Err(e) => {
                entry.last_error = Some(format!("{}: {e}", spec.url));
                retry_or_give_up(&mut entry, spec, now)
            }
        };
        if let Some(counts) = counts {
            match outcome {
                Settle::Delivered => counts.delivered.fetch_add(1, Ordering::Relaxed),
                Settle::GiveUp => counts.given_up.fetch_add(1, Ordering::Relaxed),
                Settle::Retry => 0,
            };
        }
        match outcome {
            Settle::Delivered => {
                tracing::debug!(delivery = %entry.delivery_id, attempts = entry.attempts, "webhook delivered")
            }
            Settle::Retry => {
                tracing::warn!(delivery = %entry.delivery_id, error = ?entry.last_error, "webhook failed; retried later")
            }
            Settle::GiveUp => {
                tracing::error!(delivery = %entry.delivery_id, error = ?entry.last_error, "webhook failed for good")
            }
        }
        if let Err(e) = self.state.settle(&entry, outcome) {
            tracing::error!(error = %e, "cannot record the webhook attempt; it will be made again");
        }
    }
}

/// The next attempt after a failure, or giving up past the retry duration.
fn retry_or_give_up(entry: &mut OutboxEntry, spec: &WebhookSpec, now_ms: i64) -> Settle {
    let wait = FIRST_RETRY_WAIT.saturating_mul(1 << (entry.attempts.saturating_sub(1)).min(10)).min(MAX_RETRY_WAIT);
    let next = now_ms + wait.as_millis() as i64;
    if next - entry.first_ms > spec.retry_duration.as_millis() as i64 {
        return Settle::GiveUp;
    }
    entry.next_ms = next;
    Settle::Retry
}

/// A delivery's id: the same for the same channel and business event.
fn delivery_id(channel: &str, key: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{channel}\0{key}").as_bytes());
    crate::sigv4::hex(&digest[..16])
}
/// The `x-weir-signature` of a webhook body: `sha256=` and the hex HMAC-SHA256
/// of the body under the channel's secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", crate::sigv4::hex(&crate::sigv4::hmac(secret.as_bytes(), body)))
}
