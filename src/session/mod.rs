//! Server-side sessions (docs/fleet.md, "Sessions"): a client names a conversation with
//! `x-dashgate-session`; the gateway keeps it in the store, puts the stored history in front
//! of each new turn (after the new turn's media went through the image policy: only cleaned
//! frames are ever stored), and stores the turn with its answer when the reply completes.
//!
//! A session belongs to its owner: the key (`key:<name>`), or for a device token the account
//! and device (`device:<account>/<device>`), so a renewed token keeps its device's sessions.
//! Another owner sees no such session (404). One turn at a time per session: a second one
//! while the first is running is refused with 409 `session_busy` (in this process; across
//! gateways the store's row version keeps the first turn's answer, the second is not stored).

mod history;
mod metrics;
mod tap;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use tokio::sync::Semaphore;

pub use crate::config::SessionsConfig;
pub use history::{Entry, PLACEHOLDER};
pub use metrics::SessionMetrics;
pub use tap::Shape;

use crate::auth::Caller;
use crate::chat::{Chat, Message, Role};
use crate::config::MediaConfig;
use crate::error::GatewayError;
use crate::provider::Upstream;
use crate::store::{SessionRecord, Store, now_ms};

/// The request header naming a session.
pub const HEADER: &str = "x-dashgate-session";

/// What the gateway holds for sessions besides the store: the sessions with a turn running.
pub struct Sessions {
    pub config: SessionsConfig,
    busy: Arc<Mutex<HashSet<(String, String)>>>,
    metrics: SessionMetrics,
}

/// A session id: 1 to 128 letters, digits or `- _ . :`.
pub fn check_id(id: &str) -> Result<(), GatewayError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(GatewayError::param(
            HEADER,
            format!("`{HEADER}` must be 1 to 128 letters, digits or `- _ . :`"),
        ))
    }
}

/// Whose sessions a caller sees.
pub fn owner_of(caller: &Caller) -> String {
    match (&caller.account, &caller.device) {
        (Some(account), Some(device)) => format!("device:{account}/{device}"),
        _ => format!("key:{}", crate::files::owner_of(caller)),
    }
}

pub fn store_failed(e: crate::store::StoreError) -> GatewayError {
    tracing::warn!(error = %e, "sessions: store failed");
    GatewayError::StoreUnavailable
}

/// Marks a session busy while its turn runs.
struct Busy {
    set: Arc<Mutex<HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// One turn of a session on its way: what to store once the answer is complete.
pub struct Turn {
    _busy: Busy,
    owner: String,
    id: String,
    /// The stored row's version, 0 for a new session.
    version: i64,
    created_at: i64,
    /// The history sent with this turn, then the turn's own messages.
    entries: Vec<Entry>,
    turn_len: usize,
    store: Store,
    config: SessionsConfig,
    metrics: SessionMetrics,
    /// Set once the answer came: a turn dropped without one (refused, failed, the client hung
    /// up mid-stream) is counted as `incomplete`, and nothing of it is stored.
    answered: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.turn("incomplete");
        }
    }
}

impl Sessions {
    pub fn new(config: SessionsConfig, metrics: SessionMetrics) -> Sessions {
        Sessions {
            config,
            busy: Default::default(),
            metrics,
        }
    }

    pub fn fresh_since(&self) -> i64 {
        now_ms().saturating_sub(self.config.ttl_ms())
    }

    /// For a request naming a session: the stored history put in front of its messages (after
    /// its system messages). `None` for a request without the header. The new turn's media go
    /// through the image policy of the model's first upstream in `upstreams`, else `media`,
    /// decoded under `media_limiter`.
    // The parts of the AppState a turn reads, one by one: sessions sit below the state.
    #[allow(clippy::too_many_arguments)]
    pub async fn begin(
        &self,
        store: &Store,
        upstreams: &[Arc<Upstream>],
        media: &MediaConfig,
        media_limiter: &Arc<Semaphore>,
        caller: &Caller,
        headers: &HeaderMap,
        chat: &mut Chat,
    ) -> Result<Option<Turn>, GatewayError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let id = value.to_str().unwrap_or("");
        check_id(id)?;
        // A model the caller may not use is refused before any session work.
        caller.check_model(&chat.model)?;
        let owner = owner_of(caller);
        let key = (owner.clone(), id.to_string());
        let busy = {
            let mut set = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            if !set.insert(key.clone()) {
                self.metrics.turn("busy");
                return Err(GatewayError::SessionBusy(id.to_string()));
            }
            Busy {
                set: self.busy.clone(),
                key,
            }
        };
        let fresh_since = self.fresh_since();
        let stored = store
            .session(&owner, id, fresh_since)
            .await
            .map_err(store_failed)?;
        let (mut history, version, created_at) = match stored {
            Some(record) => {
                let entries: Vec<Entry> = serde_json::from_str(&record.messages)
                    .map_err(|e| store_failed(crate::store::StoreError::Corrupt(e.to_string())))?;
                (entries, record.version, record.created_at)
            }
            None => {
                let live = store
                    .count_sessions(&owner, fresh_since)
                    .await
                    .map_err(store_failed)?;
                if live >= self.config.max_sessions_per_owner {
                    self.metrics.turn("too_many");
                    return Err(GatewayError::TooManySessions(
                        self.config.max_sessions_per_owner,
                    ));
                }
                (Vec::new(), 0, now_ms())
            }
        };
        let all = std::mem::take(&mut chat.messages);
        let system = all
            .iter()
            .take_while(|m| matches!(m.role, Role::System | Role::Developer))
            .count();
        let mut messages = all;
        let turn_messages = messages.split_off(system);
        if turn_messages.is_empty() {
            chat.messages = messages;
            return Err(GatewayError::param(
                "messages",
                "a session turn needs a message after the system messages",
            ));
        }
        let turn = clean_turn(upstreams, media, media_limiter, chat, turn_messages).await?;
        let turn_images: usize = turn.iter().map(|e| e.images as usize).sum();
        let turn_tokens: u64 = turn.iter().map(Entry::tokens).sum();
        let omitted = history::omit_images(&mut history, turn_images, self.config.keep_images);
        let dropped =
            history::trim_to_tokens(&mut history, turn_tokens, self.config.max_history_tokens);
        self.metrics.trimmed(omitted, dropped);
        messages.extend(history.iter().map(|e| e.message.clone()));
        messages.extend(turn.iter().map(|e| e.message.clone()));
        chat.messages = messages;
        let turn_len = turn.len();
        history.extend(turn);
        Ok(Some(Turn {
            _busy: busy,
            owner,
            id: id.to_string(),
            version,
            created_at,
            entries: history,
            turn_len,
            store: store.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            answered: false,
        }))
    }
}

/// The new turn's messages through the image policy of the model's first upstream (without
/// fetching URLs): what is stored is what went upstream, never a frame with its GPS.
async fn clean_turn(
    upstreams: &[Arc<Upstream>],
    fallback: &MediaConfig,
    media_limiter: &Arc<Semaphore>,
    chat: &Chat,
    messages: Vec<Message>,
) -> Result<Vec<Entry>, GatewayError> {
    let mut turn = Chat {
        messages,
        ..chat.clone()
    };
    let mut per_image = 0;
    if turn.has_media() {
        let media = match upstreams.iter().find(|u| u.serves(&chat.model)) {
            Some(upstream) => upstream.media.clone(),
            None => fallback.clone(),
        };
        let prepared = crate::transform::prepare(&turn, &media, None, media_limiter).await?;
        crate::transform::apply_to_chat(&mut turn, &prepared.replacements);
        per_image = prepared.stats.tokens_after / u64::from(prepared.stats.images.max(1));
    }
    Ok(turn
        .messages
        .into_iter()
        .map(|m| Entry::new(m, per_image))
        .collect())
}

impl Turn {
    /// Stores the turn with its answer; what could not be stored is logged and counted.
    async fn commit(mut self, answer: Message) {
        self.answered = true;
        self.entries.push(Entry::new(answer, 0));
        let keep_last = self.turn_len + 1;
        if history::trim_to_bytes(&mut self.entries, keep_last, self.config.max_session_bytes)
            .is_none()
        {
            tracing::warn!(session = %self.id, "sessions: a turn larger than max_session_bytes was not stored");
            self.metrics.turn("too_large");
            return;
        }
        let Ok(messages) = serde_json::to_string(&self.entries) else {
            self.metrics.turn("store_error");
            return;
        };
        let now = now_ms();
        let record = SessionRecord {
            owner: std::mem::take(&mut self.owner),
            id: self.id.clone(),
            messages,
            tokens: i64::try_from(self.entries.iter().map(Entry::tokens).sum::<u64>())
                .unwrap_or(i64::MAX),
            version: self.version,
            created_at: self.created_at.min(now),
            updated_at: now,
        };
        let fresh_since = now.saturating_sub(self.config.ttl_ms());
        match self.store.put_session(&record, fresh_since).await {
            Ok(true) => self.metrics.turn("stored"),
            Ok(false) => {
                tracing::warn!(session = %self.id, "sessions: another turn was stored first; this one was not");
                self.metrics.turn("conflict");
            }
            Err(e) => {
                tracing::warn!(session = %self.id, error = %e, "sessions: the turn could not be stored");
                self.metrics.turn("store_error");
            }
        }
    }
}

/// The client's body with its messages replaced by the session's (history and the cleaned new
/// turn), in the client's dialect; every other field stays as sent, for the fast path.
pub fn rewrite_body(
    original: &[u8],
    chat: &Chat,
    native: bool,
) -> Result<bytes::Bytes, GatewayError> {
    use serde_json::Value;
    let bad = |e: serde_json::Error| GatewayError::InvalidJson(e.to_string());
    let mut json: Value = serde_json::from_slice(original).map_err(bad)?;
    let messages = if native {
        let (_, body) = crate::provider::dashscope::encode_request(chat);
        let mut encoded: Value = serde_json::from_slice(&body).map_err(bad)?;
        encoded["input"]["messages"].take()
    } else {
        serde_json::to_value(&chat.messages).map_err(bad)?
    };
    let holder = if native {
        json.get_mut("input").and_then(Value::as_object_mut)
    } else {
        json.as_object_mut()
    };
    let Some(holder) = holder else {
        return Err(GatewayError::param("messages", "expected a JSON object"));
    };
    // A native `input.prompt` becomes the messages it stood for.
    holder.remove("prompt");
    holder.insert("messages".into(), messages);
    serde_json::to_vec(&json)
        .map(bytes::Bytes::from)
        .map_err(bad)
}

/// The response, with the turn (if the request named a session) stored when it completes.
pub async fn finish(
    turn: Option<Turn>,
    response: axum::response::Response,
    shape: Shape,
) -> axum::response::Response {
    match turn {
        Some(turn) => turn.finish(response, shape).await,
        None => response,
    }
}
