//! The way through, shared by both dialects: route the request, call the upstream in the
//! dialect it speaks, and hand the reply back raw (client and upstream speak the same dialect:
//! the fast path) or as canonical steps for the client's dialect to encode.

use std::collections::VecDeque;

use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use crate::auth::Caller;
use crate::chat::Chat;
use crate::config::UpstreamDialect;
use crate::error::GatewayError;
use crate::event::{ChatEvent, Reply, StreamError};
use crate::provider::{self, Api, Upstream};
use crate::sse;
use crate::state::AppState;
use crate::transform::{self, MediaStats, Prepared};

// Moved out, named here still so the dialects' imports stay as they were.
pub use crate::event::Step;
pub use crate::provider::sse::Next;
use crate::provider::sse::protocol_error;
pub use crate::route::retry::{Call, send_with_retries};
pub use crate::route::{SseEvents, Upstreamed};

/// The two dialects of DashScope, as clients and upstreams speak them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI-compatible (DashScope compatible mode).
    OpenAi,
    /// DashScope native (`/api/v1/services/aigc/...`).
    Native,
}

/// A decoded client chat request on its way upstream (named apart from axum's `Request`, the
/// raw HTTP one the handlers take).
pub struct ChatRequest<'a> {
    pub dialect: Dialect,
    /// The client's endpoint; on the fast path the upstream gets the same one.
    pub api: Api,
    pub chat: Chat,
    /// The client's body, forwarded unchanged on the fast path.
    pub original: Bytes,
    pub caller: &'a Caller,
    pub headers: &'a HeaderMap,
    pub request_id: &'a str,
    /// The request's meter: admission's reservation is settled through it.
    pub meter: &'a crate::usage::Meter,
}

/// What came back.
pub enum Outcome {
    /// The upstream's reply in the client's own dialect, to relay as it is.
    Raw(Upstreamed),
    /// A translated stream, from the named upstream.
    Steps(BoxStream<'static, Step>, String),
    /// A translated whole reply, from the named upstream.
    Whole(Reply, String),
}

impl Outcome {
    /// A translated outcome as the steps of a stream (a whole reply becomes steps, for a client
    /// that asked for a stream), with the upstream's name; a raw reply has no steps and comes
    /// back as the error, like `Arc::try_unwrap`.
    // Moved once per request, as `Outcome::Raw` itself is: boxing would only add an allocation.
    #[allow(clippy::result_large_err)]
    pub fn try_into_steps(self) -> Result<(BoxStream<'static, Step>, String), Upstreamed> {
        match self {
            Outcome::Raw(upstreamed) => Err(upstreamed),
            Outcome::Steps(steps, name) => Ok((steps, name)),
            Outcome::Whole(reply, name) => {
                let mut steps = vec![Step::Meta(reply.meta.clone())];
                steps.extend(reply.events().into_iter().map(Step::Event));
                Ok((futures_util::stream::iter(steps).boxed(), name))
            }
        }
    }
}

/// The dialect an upstream is spoken to for a client of `client` dialect.
fn wire_for(upstream: &Upstream, client: Dialect) -> Dialect {
    if !upstream.has_native() {
        return Dialect::OpenAi;
    }
    match upstream.config.dialect {
        UpstreamDialect::Auto => client,
        UpstreamDialect::Compatible => Dialect::OpenAi,
        UpstreamDialect::Native => Dialect::Native,
    }
}

pub async fn dispatch(
    state: &AppState,
    request: ChatRequest<'_>,
) -> Result<(Outcome, Option<MediaStats>), GatewayError> {
    request.caller.check_model(&request.chat.model)?;
    let call = Call {
        model: &request.chat.model,
        stream: request.chat.is_stream(),
        caller: request.caller,
        headers: request.headers,
        request_id: request.request_id,
        meter: request.meter,
        reserve: 0,
    };
    let variants = if request.chat.has_media() {
        let span = tracing::trace_span!(
            target: crate::telemetry::otel::TARGET,
            "dashgate.media",
            dashgate.images = tracing::field::Empty,
            dashgate.image_original_bytes = tracing::field::Empty,
            dashgate.image_sent_bytes = tracing::field::Empty,
        );
        let variants =
            tracing::Instrument::instrument(prepare_media(state, &request), span.clone()).await?;
        if let Some(stats) = variants.first().map(|v| v.prepared.stats) {
            span.record("dashgate.images", i64::from(stats.images));
            span.record("dashgate.image_original_bytes", stats.original_bytes as i64);
            span.record("dashgate.image_sent_bytes", stats.sent_bytes as i64);
        }
        variants
    } else {
        Vec::new()
    };
    let fast_path = state.config.server.fast_path;
    // Every stream is metered from the upstream's own usage, also for a client that did not
    // ask for it (the usage chunk is then kept from it).
    let ask_usage =
        request.dialect == Dialect::OpenAi && call.stream && !request.chat.wants_usage();
    // Bodies are made once per media variant and dialect, whichever upstream a retry lands on.
    // One set per variant, and a last one for the request as it came.
    let mut bodies: Vec<[Option<(Api, Bytes)>; 3]> = vec![[None, None, None]; variants.len() + 1];
    // Documents named as `fileid://`: each upstream gets its own rewrite of the request.
    let (upstreams, mode) = (state.router.upstreams(), state.auth.mode());
    let files = crate::files::resolve::prepare(
        &state.store,
        &state.files,
        upstreams,
        mode,
        &request.chat,
        request.caller,
    )
    .await?;
    let mut file_bodies: std::collections::HashMap<String, (Api, Bytes)> = Default::default();
    let image_stats = variants
        .first()
        .map(|v| v.prepared.stats)
        .unwrap_or_default();
    let call = Call {
        reserve: reserve_for(
            state,
            request.original.len(),
            &image_stats,
            request.chat.max_tokens,
        ),
        ..call
    };
    let upstreamed = send_with_retries(&state.attempts(), &call, |upstream| {
        let wire = wire_for(upstream, request.dialect);
        let at = variant_of(&variants, upstream).min(variants.len());
        let (chat, prepared) = match variants.get(at) {
            Some(v) => (v.chat.as_ref().unwrap_or(&request.chat), Some(&v.prepared)),
            None => (&request.chat, None),
        };
        let rewrites = files.as_ref().and_then(|f| f.get(&upstream.config.name));
        if let Some(rewrites) = rewrites {
            return file_bodies
                .entry(upstream.config.name.clone())
                .or_insert_with(|| {
                    let chat = crate::files::resolve::apply(chat, rewrites);
                    match wire {
                        Dialect::OpenAi => (Api::Chat, provider::openai::encode_request(&chat)),
                        Dialect::Native => provider::dashscope::encode_request(&chat),
                    }
                })
                .clone();
        }
        let changed = prepared.is_some_and(|p| !p.replacements.is_empty());
        let slot = match (wire == request.dialect && fast_path, wire) {
            (true, _) => 2,
            (false, Dialect::OpenAi) => 0,
            (false, Dialect::Native) => 1,
        };
        bodies[at][slot]
            .get_or_insert_with(|| match slot {
                2 if !changed && ask_usage => (request.api, asking_usage(&request.original, chat)),
                2 if !changed => (request.api, request.original.clone()),
                2 => {
                    let replacements = prepared.map_or(&[][..], |p| &p.replacements[..]);
                    let native = request.dialect == Dialect::Native;
                    let body = transform::apply_to_body(&request.original, replacements, native);
                    // Never the original when the edit did not apply: it still holds what the
                    // media stage removed. The checked request, encoded, instead.
                    let body = body.unwrap_or_else(|| match request.dialect {
                        Dialect::OpenAi => provider::openai::encode_request(chat),
                        Dialect::Native => provider::dashscope::encode_request(chat).1,
                    });
                    let body = if ask_usage {
                        asking_usage(&body, chat)
                    } else {
                        body
                    };
                    (request.api, body)
                }
                0 => (Api::Chat, provider::openai::encode_request(chat)),
                _ => provider::dashscope::encode_request(chat),
            })
            .clone()
    })
    .await?;
    let media = variants
        .get(variant_of(&variants, &upstreamed.lease.upstream))
        .map(|v| v.prepared.stats)
        .filter(|stats| stats.images > 0);
    let wire = wire_for(&upstreamed.lease.upstream, request.dialect);
    if wire == request.dialect && fast_path {
        return Ok((Outcome::Raw(upstreamed), media));
    }
    let name = upstreamed.lease.upstream.config.name.clone();
    if call.stream && upstreamed.is_event_stream() {
        let steps = decode_stream(upstreamed.into_events(), wire).boxed();
        return Ok((Outcome::Steps(steps, name), media));
    }
    let upstream = upstreamed.lease.upstream.clone();
    let body = upstreamed.read_whole().await?;
    let reply = match wire {
        Dialect::OpenAi => provider::openai::decode_completion(&body),
        Dialect::Native => provider::dashscope::decode_reply(&body),
    };
    reply
        .map(|reply| (Outcome::Whole(reply, name), media))
        .map_err(|e| protocol_error(&upstream, &format!("unreadable reply: {e}")))
}

/// The tokens a request may use, reserved at admission: its prompt estimated from its text
/// bytes (four to a token) and its images' tokens, and its `max_tokens` or the configured
/// default.
pub fn reserve_for(
    state: &AppState,
    body_bytes: usize,
    images: &MediaStats,
    max_tokens: Option<u32>,
) -> u64 {
    let image_text = images.original_bytes.saturating_mul(4) / 3;
    let text = (body_bytes as u64).saturating_sub(image_text) / 4;
    let completion = max_tokens.map_or(state.config.limits.reserve_completion_tokens, u64::from);
    text + images.tokens_after + completion
}

/// An OpenAI-dialect stream request body that asks for the usage chunk. Without
/// `stream_options` the field is put in front, bytes otherwise untouched; with one (that does
/// not ask), the request is encoded anew.
fn asking_usage(body: &Bytes, chat: &Chat) -> Bytes {
    const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    match start {
        Some(i) if chat.stream_options.is_none() && body[i] == b'{' => {
            let mut out = Vec::with_capacity(body.len() + FIELD.len());
            out.extend_from_slice(&body[..=i]);
            out.extend_from_slice(FIELD);
            out.extend_from_slice(&body[i + 1..]);
            Bytes::from(out)
        }
        _ => provider::openai::encode_request(chat),
    }
}

/// A request as one media policy made it.
struct Variant {
    media: crate::config::MediaConfig,
    fetches: bool,
    /// The request with new URLs, when the policy changed any (a camera frame is megabytes:
    /// no copy when nothing changed).
    chat: Option<Chat>,
    prepared: Prepared,
}

/// The variant an upstream's policy makes (an index past the end: no media, the request as is).
fn variant_of(variants: &[Variant], upstream: &Upstream) -> usize {
    variants
        .iter()
        .position(|v| v.media == upstream.media && v.fetches == upstream.fetcher.is_some())
        .unwrap_or(usize::MAX)
}

/// Runs the transform stage once per distinct media policy among the upstreams serving the
/// model (almost always one); a text-only request needs none.
async fn prepare_media(
    state: &AppState,
    request: &ChatRequest<'_>,
) -> Result<Vec<Variant>, GatewayError> {
    let mut variants: Vec<Variant> = Vec::new();
    if !request.chat.has_media() {
        return Ok(variants);
    }
    for upstream in state.router.serving(&request.chat.model) {
        if variant_of(&variants, upstream) != usize::MAX {
            continue;
        }
        let limiter = &state.media_limiter;
        let prepared = transform::prepare(
            &request.chat,
            &upstream.media,
            upstream.fetcher.as_ref(),
            limiter,
        )
        .await?;
        let chat = (!prepared.replacements.is_empty()).then(|| {
            let mut chat = request.chat.clone();
            transform::apply_to_chat(&mut chat, &prepared.replacements);
            chat
        });
        variants.push(Variant {
            media: upstream.media.clone(),
            fetches: upstream.fetcher.is_some(),
            chat,
            prepared,
        });
    }
    Ok(variants)
}

/// Decodes an upstream stream of either dialect into canonical steps.
fn decode_stream(events: SseEvents, wire: Dialect) -> impl Stream<Item = Step> {
    struct State {
        events: SseEvents,
        wire: Dialect,
        native: provider::dashscope::Decoder,
        pending: VecDeque<Step>,
        meta_sent: bool,
        done: bool,
    }
    let state = State {
        events,
        wire,
        native: provider::dashscope::Decoder::default(),
        pending: VecDeque::new(),
        meta_sent: false,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(step) = s.pending.pop_front() {
                return Some((step, s));
            }
            if s.done {
                return None;
            }
            let event = match s.events.next().await {
                Next::Event(event) => event,
                Next::End => return None,
                Next::Fail(error) => {
                    s.done = true;
                    return Some((Step::Fail(error), s));
                }
            };
            if sse::is_done(&event) {
                return None;
            }
            let Some(data) = sse::data_of(&event) else {
                continue; // a comment or keep-alive
            };
            if let Some(status) = sse::error_status(&event) {
                // A native error frame: `event:error`, `:HTTP_STATUS/NNN`, `data:{code,message}`.
                s.done = true;
                let fields: serde_json::Value = serde_json::from_slice(data).unwrap_or_default();
                let text = |k: &str| {
                    fields
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string()
                };
                let error = StreamError {
                    status,
                    code: text("code"),
                    kind: None,
                    message: text("message"),
                };
                return Some((Step::Event(ChatEvent::Error(error)), s));
            }
            let decoded = match s.wire {
                Dialect::OpenAi => provider::openai::decode_chunk(data),
                Dialect::Native => s.native.decode(data),
            };
            match decoded {
                Ok((meta, events)) => {
                    if !s.meta_sent {
                        s.meta_sent = true;
                        s.pending.push_back(Step::Meta(meta));
                    }
                    for event in events {
                        s.done |= matches!(event, ChatEvent::Error(_));
                        s.pending.push_back(Step::Event(event));
                    }
                }
                Err(e) => {
                    s.done = true;
                    let error =
                        protocol_error(s.events.upstream(), &format!("unreadable event: {e}"));
                    return Some((Step::Fail(error), s));
                }
            }
        }
    })
}

/// A fast-path outcome as canonical steps or a canonical reply (the response cache keeps only
/// those); `dialect` is the client's, which the fast path's upstream spoke.
pub async fn canonical(outcome: Outcome, dialect: Dialect) -> Result<Outcome, GatewayError> {
    let Outcome::Raw(upstreamed) = outcome else {
        return Ok(outcome);
    };
    let name = upstreamed.lease.upstream.config.name.clone();
    if upstreamed.is_event_stream() {
        let steps = decode_stream(upstreamed.into_events(), dialect).boxed();
        return Ok(Outcome::Steps(steps, name));
    }
    let upstream = upstreamed.lease.upstream.clone();
    let body = upstreamed.read_whole().await?;
    let reply = match dialect {
        Dialect::OpenAi => provider::openai::decode_completion(&body),
        Dialect::Native => provider::dashscope::decode_reply(&body),
    };
    reply
        .map(|reply| Outcome::Whole(reply, name))
        .map_err(|e| protocol_error(&upstream, &format!("unreadable reply: {e}")))
}
