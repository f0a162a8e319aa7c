//! The exact response cache: an identical request (same scope, same canonical request as it
//! goes upstream) is answered from a kept reply instead of the upstream, as JSON or replayed as
//! a stream in the client's dialect. Opt-in: the config allows it per key, per model or for
//! all; a request asks with `x-dashgate-cache: on | refresh` (or is in by `default_on`) and can
//! opt out with `off`. What is kept is the canonical reply, encoded once as OpenAI JSON.

mod key;
mod metrics;
mod store;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;

pub use crate::config::{CacheConfig, CacheScope};
pub use metrics::CacheMetrics;

use crate::auth::Caller;
use crate::chat::Chat;
use crate::error::GatewayError;
use crate::event::Step;
use crate::event::{ChatEvent, Reply};
use crate::usage::Meter;

pub const HEADER: &str = "x-dashgate-cache";

/// The upstream name a hit is recorded under.
pub const UPSTREAM: &str = "cache";

/// The cache of one gateway.
pub struct Cache {
    config: CacheConfig,
    backend: store::Backend,
    metrics: CacheMetrics,
}

impl Cache {
    pub fn new(config: &CacheConfig, metrics: CacheMetrics) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self {
            config: config.clone(),
            backend: store::Backend::new(config)?,
            metrics,
        }))
    }

    /// Looks the request up, where the config and the request allow it; a hit is marked on
    /// the meter (no upstream tokens; the original usage kept for reference).
    pub async fn consult(
        self: &Arc<Self>,
        caller: &Caller,
        headers: &HeaderMap,
        chat: &Chat,
        meter: &Meter,
        router: &crate::route::Router,
    ) -> Result<Consult, GatewayError> {
        let asked = match headers.get(HEADER).map(HeaderValue::to_str) {
            None => None,
            Some(Ok(v)) if v.eq_ignore_ascii_case("on") => Some(Mode::On),
            Some(Ok(v)) if v.eq_ignore_ascii_case("off") => Some(Mode::Off),
            Some(Ok(v)) if v.eq_ignore_ascii_case("refresh") => Some(Mode::Refresh),
            Some(_) => {
                return Err(GatewayError::param(
                    HEADER,
                    format!("`{HEADER}` must be `on`, `off` or `refresh`"),
                ));
            }
        };
        let mode = match asked {
            Some(mode) => mode,
            None if self.config.default_on => Mode::On,
            None => Mode::Off,
        };
        let off = Consult { active: None };
        if mode == Mode::Off
            || !caller.may_use(&chat.model)
            || !self.config.allows(&caller.name, &chat.model)
            || !(self.config.sampled || key::deterministic(chat))
        {
            return Ok(off);
        }
        let scope = match self.config.scope {
            CacheScope::Shared => "shared".to_string(),
            CacheScope::Key => format!("key:{}", caller.id.as_deref().unwrap_or(&caller.name)),
        };
        // Media is processed (resized, stripped) by the policy of the upstream that serves
        // the request, a pure function of the frame and the policy: keying on both is keying
        // on what goes upstream, without processing the frame again for a hit.
        let mut policies = String::new();
        if chat.has_media() {
            for upstream in router.serving(&chat.model) {
                let fetches = upstream.fetcher.is_some();
                policies.push_str(&format!("{:?}/{fetches};", upstream.media));
            }
        }
        let Some(key) = key::of(&scope, &policies, chat) else {
            return Ok(off);
        };
        let found = match mode {
            Mode::On => self.backend.get(&key).await,
            _ => None,
        };
        let hit = found.and_then(|body| match crate::wire::openai::decode_completion(&body) {
            Ok(reply) => Some((reply, body.len())),
            Err(e) => {
                tracing::warn!(error = %e, "cache: unreadable entry, treated as a miss");
                None
            }
        });
        let hit = match hit {
            Some((reply, bytes)) => {
                self.metrics.hit(bytes);
                meter.cache_hit();
                Some(reply)
            }
            None => {
                self.metrics.miss();
                None
            }
        };
        Ok(Consult {
            active: Some(Active {
                cache: self.clone(),
                key,
                hit,
            }),
        })
    }

    fn keep(self: &Arc<Self>, key: [u8; 32], reply: &Reply) {
        if reply.choices.is_empty() || reply.choices.iter().any(|c| c.finish_reason.is_none()) {
            return; // cut short: not an answer to give again
        }
        let body = crate::wire::openai::encode_completion(reply);
        if body.len() > self.config.max_entry_bytes {
            self.metrics.too_large();
            return;
        }
        if let store::Backend::Local(local) = &self.backend {
            // In memory, at once: the next identical request already finds it.
            let len = body.len();
            local.insert(key, Bytes::from(body));
            self.metrics.stored(len, self.backend.held_bytes());
            return;
        }
        let cache = self.clone();
        // Off the reply's path: a slow Redis must not hold the client's last byte.
        tokio::spawn(async move {
            let len = body.len();
            cache.backend.put(key, Bytes::from(body)).await;
            cache.metrics.stored(len, cache.backend.held_bytes());
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    On,
    Off,
    /// Skip the lookup, keep the new reply.
    Refresh,
}

/// What the cache said about one request.
pub struct Consult {
    active: Option<Active>,
}

struct Active {
    cache: Arc<Cache>,
    key: [u8; 32],
    hit: Option<Reply>,
}

impl Consult {
    /// `hit` or `miss` when the cache was consulted, for [`tag`].
    pub fn label(&self) -> Option<&'static str> {
        let active = self.active.as_ref()?;
        Some(if active.hit.is_some() { "hit" } else { "miss" })
    }

    /// The kept reply on a hit, with this request's own id and time, not the original's.
    pub fn take_hit(&mut self) -> Option<Reply> {
        let mut reply = self.active.as_mut()?.hit.take()?;
        reply.meta.id.clear();
        reply.meta.request_id = None;
        reply.meta.created = 0;
        Some(reply)
    }

    /// Whether the upstream's reply is to be kept (consulted, and a miss): it must then come
    /// as canonical steps or a whole reply, so a miss is answered the way a hit will be.
    pub fn keeps(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.hit.is_none())
    }

    /// Keeps a whole reply, when [`Consult::keeps`].
    pub fn keep_whole(&self, reply: &Reply) {
        if let Some(active) = self.active.as_ref().filter(|_| self.keeps()) {
            active.cache.keep(active.key, reply);
        }
    }

    /// Passes a stream's steps on, kept once it ends whole, when [`Consult::keeps`].
    pub fn keep_steps(
        self,
        steps: futures_util::stream::BoxStream<'static, Step>,
    ) -> futures_util::stream::BoxStream<'static, Step> {
        match self.active {
            Some(active) if active.hit.is_none() => tee(steps, active.cache, active.key).boxed(),
            _ => steps,
        }
    }
}

/// Marks a response with the cache's `label`, when it was consulted.
pub fn tag(mut response: Response, label: Option<&'static str>) -> Response {
    if let Some(label) = label {
        response
            .headers_mut()
            .insert(HEADER, HeaderValue::from_static(label));
    }
    response
}

/// Passes the steps on, folding them into a reply that is kept when the stream ends whole.
fn tee(
    steps: futures_util::stream::BoxStream<'static, Step>,
    cache: Arc<Cache>,
    key: [u8; 32],
) -> impl futures_util::Stream<Item = Step> {
    let state = (steps, Some(Reply::default()), cache);
    futures_util::stream::unfold(state, move |(mut steps, mut reply, cache)| async move {
        match steps.next().await {
            Some(step) => {
                match (&step, reply.as_mut()) {
                    (Step::Meta(meta), Some(r)) => r.meta = meta.clone(),
                    (Step::Event(ChatEvent::Error(_)) | Step::Fail(_), _) => reply = None,
                    (Step::Event(event), Some(r)) => r.apply(event),
                    _ => {}
                }
                Some((step, (steps, reply, cache)))
            }
            None => {
                if let Some(reply) = reply.take() {
                    cache.keep(key, &reply);
                }
                None
            }
        }
    })
}
