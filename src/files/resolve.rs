//! `fileid://` in system messages (DashScope's Qwen-Long "file-id" documents): one id, several
//! comma-separated, and further files in later system messages. For a `dashscope` upstream the
//! file is uploaded to its files API once (the upstream's id is kept in the store) and the
//! reference rewritten; for any other upstream the file's text goes into the system message,
//! within `files.max_inline_tokens`.

use std::collections::HashMap;
use std::sync::Arc;

use super::Files;
use crate::auth::Caller;
use crate::chat::{Chat, Content, Role};
use crate::config::{AuthMode, ProviderKind};
use crate::error::GatewayError;
use crate::provider::Upstream;
use crate::store::{FileRecord, Store};

/// A system message that names files: where it is, and the ids in order.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRefs {
    pub message: usize,
    pub ids: Vec<String>,
}

/// The system messages whose text is a list of references: `fileid://A`, or
/// `fileid://A,fileid://B,...` (spaces and a trailing comma allowed). A system message that
/// starts with a reference but goes on with anything else is refused: the upstream would read
/// its first references, which the gateway could neither vet in place nor rewrite.
pub fn refs_of(chat: &Chat) -> Result<Vec<FileRefs>, GatewayError> {
    let mut refs = Vec::new();
    for (i, m) in chat.messages.iter().enumerate() {
        if m.role != Role::System {
            continue;
        }
        let Some(Content::Text(text)) = &m.content else {
            continue;
        };
        let starts = text
            .trim_start()
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("fileid://"));
        if !starts {
            continue;
        }
        let mut ids = Vec::new();
        for piece in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let id = piece
                .get(..9)
                .filter(|s| s.eq_ignore_ascii_case("fileid://"))
                .map(|_| &piece[9..]);
            match id {
                Some(id) if !id.contains(char::is_whitespace) => ids.push(id.to_string()),
                _ => {
                    let at = format!("messages[{i}].content");
                    return Err(GatewayError::param(
                        at.clone(),
                        format!(
                            "`{at}` starts with a file reference, so it may hold only \
                             comma-separated `fileid://` references (found `{piece}`)"
                        ),
                    ));
                }
            }
        }
        refs.push(FileRefs { message: i, ids });
    }
    Ok(refs)
}

/// Distinct `fileid://` ids a request may name outside its reference lists.
const MAX_LOOSE_REFS: usize = 64;

/// New contents for the system messages that name files: message index and text.
pub type Rewrites = Vec<(usize, String)>;

/// The rewrites each upstream serving the request needs, by upstream name; `None` when no
/// message names a file. `upstreams` are all configured ones (those serving the model get
/// rewrites); `mode` is the auth mode an upload to an upstream goes with.
pub async fn prepare(
    store: &Store,
    files: &Files,
    upstreams: &[Arc<Upstream>],
    mode: AuthMode,
    chat: &Chat,
    caller: &Caller,
) -> Result<Option<HashMap<String, Rewrites>>, GatewayError> {
    let refs = refs_of(chat)?;
    let listed: Vec<usize> = refs.iter().map(|r| r.message).collect();
    // References anywhere else are not resolved, but must name the caller's own files: each
    // distinct id looked up once, and only so many (every one is a store query).
    let mut loose = super::scan::loose_refs(chat, &listed);
    loose.retain(|l| !l.id.is_empty());
    loose.sort_by(|a, b| a.id.cmp(&b.id));
    loose.dedup_by(|a, b| a.id == b.id);
    if loose.len() > MAX_LOOSE_REFS {
        return Err(GatewayError::param(
            "messages",
            format!(
                "the request names more than {MAX_LOOSE_REFS} different `fileid://` references"
            ),
        ));
    }
    for loose in loose {
        let at = loose.message.map_or_else(
            || "messages".to_string(),
            |i| format!("messages[{i}].content"),
        );
        let found = store
            .file(&loose.id, &super::owner_of(caller))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "file lookup failed");
                GatewayError::StoreUnavailable
            })?;
        if found.is_none() {
            return Err(GatewayError::param(at, format!("no file `{}`", loose.id)));
        }
    }
    if refs.is_empty() {
        return Ok(None);
    }
    let mut records: HashMap<&str, FileRecord> = HashMap::new();
    for r in &refs {
        for id in &r.ids {
            let at = || format!("messages[{}].content", r.message);
            if id.is_empty() {
                return Err(GatewayError::param(at(), "`fileid://` names no file"));
            }
            let found = store
                .file(id, &super::owner_of(caller))
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "file lookup failed");
                    GatewayError::StoreUnavailable
                })?;
            match found {
                Some(f) if f.purpose == "file-extract" => {
                    records.insert(id.as_str(), f);
                }
                Some(_) => {
                    return Err(GatewayError::param(
                        at(),
                        format!("file `{id}` was uploaded for batch, not file-extract"),
                    ));
                }
                None => return Err(GatewayError::param(at(), format!("no file `{id}`"))),
            }
        }
    }
    let mut texts: HashMap<String, String> = HashMap::new();
    let mut out = HashMap::new();
    for upstream in upstreams.iter().filter(|u| u.serves(&chat.model)) {
        let rewrites = match upstream.config.provider {
            ProviderKind::Dashscope => {
                upload_refs(store, files, upstream, &refs, &records, caller, mode).await?
            }
            ProviderKind::Openai => {
                inline_refs(store, files, upstream, &refs, &records, &mut texts).await?
            }
        };
        out.insert(upstream.config.name.clone(), rewrites);
    }
    Ok(Some(out))
}

async fn upload_refs(
    store: &Store,
    files: &Files,
    upstream: &Upstream,
    refs: &[FileRefs],
    records: &HashMap<&str, FileRecord>,
    caller: &Caller,
    mode: AuthMode,
) -> Result<Rewrites, GatewayError> {
    let name = &upstream.config.name;
    let mut rewrites = Vec::new();
    for r in refs {
        let mut ids = Vec::new();
        for id in &r.ids {
            let known = store.upstream_file(id, name).await.ok().flatten();
            let remote = match known {
                Some(remote) => remote,
                None => {
                    let file = &records[id.as_str()];
                    let bytes = files.get(id).await.map_err(|e| {
                        tracing::warn!(error = %e, file = %id, "file bytes unreadable");
                        GatewayError::StoreUnavailable
                    })?;
                    let token = caller.passthrough_token.as_deref();
                    let remote = upstream
                        .upload_file(&file.filename, bytes, "file-extract", mode, token)
                        .await?;
                    if let Err(e) = store.set_upstream_file(id, name, &remote).await {
                        tracing::warn!(error = %e, "upstream file id not kept; uploaded again next time");
                    }
                    // Another gateway may have won the race: use the id the store keeps.
                    store
                        .upstream_file(id, name)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(remote)
                }
            };
            ids.push(format!("fileid://{remote}"));
        }
        rewrites.push((r.message, ids.join(",")));
    }
    Ok(rewrites)
}

/// Tokens a text is estimated to take: a byte of UTF-8 in three (about a CJK character, or
/// a little more than the ~4 characters of English a token holds).
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(3)
}

async fn inline_refs(
    store: &Store,
    files: &Files,
    upstream: &Upstream,
    refs: &[FileRefs],
    records: &HashMap<&str, FileRecord>,
    texts: &mut HashMap<String, String>,
) -> Result<Rewrites, GatewayError> {
    let limit = files.config.max_inline_tokens;
    let mut total = 0;
    let mut rewrites = Vec::new();
    for r in refs {
        let at = || format!("messages[{}].content", r.message);
        let mut docs = Vec::new();
        for id in &r.ids {
            if !texts.contains_key(id) {
                let file = &records[id.as_str()];
                let text = super::cage::text(files, store, file)
                    .await
                    .map_err(|failure| refused(at(), id, failure))?;
                texts.insert(id.clone(), text);
            }
            let text = &texts[id];
            total += estimate_tokens(text);
            let filename = &records[id.as_str()].filename;
            docs.push(format!(
                "<document name=\"{filename}\">\n{text}\n</document>"
            ));
        }
        if total > limit {
            return Err(GatewayError::param(
                at(),
                format!(
                    "the documents come to about {total} tokens; upstream `{}` reads them \
                     inline, up to {limit} (files.max_inline_tokens)",
                    upstream.config.name
                ),
            ));
        }
        rewrites.push((r.message, docs.join("\n")));
    }
    Ok(rewrites)
}

/// The client's error for a file whose text extraction refused it, naming the limit.
fn refused(at: String, id: &str, failure: super::cage::Failure) -> GatewayError {
    match failure {
        super::cage::Failure::Refused(r) if r.status == 413 => GatewayError::DocumentTooLarge {
            param: at,
            message: format!("file `{id}`: {}", r.message),
        },
        super::cage::Failure::Refused(r) => {
            GatewayError::param(at, format!("file `{id}`: {}", r.message))
        }
        super::cage::Failure::Broken(_) => GatewayError::Internal,
    }
}

/// The chat with an upstream's rewrites applied.
pub fn apply(chat: &Chat, rewrites: &Rewrites) -> Chat {
    let mut chat = chat.clone();
    for (at, text) in rewrites {
        if let Some(m) = chat.messages.get_mut(*at) {
            m.content = Some(Content::Text(text.clone()));
        }
    }
    chat
}

/// Deletes a file's copies at the upstreams (best effort: logged when it fails).
pub async fn forget_upstream_copies(store: &Store, upstreams: &[Arc<Upstream>], file_id: &str) {
    let copies = store.upstream_files_of(file_id).await.unwrap_or_default();
    for (name, remote) in copies {
        let upstream = upstreams.iter().find(|u| u.config.name == name);
        if let Some(upstream) = upstream {
            if let Err(e) = upstream.delete_file(&remote).await {
                tracing::warn!(error = %e, upstream = %name, file = %remote, "upstream copy not deleted");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_single_several_and_across_messages() {
        let chat: Chat = serde_json::from_value(serde_json::json!({
            "model": "qwen-long",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "system", "content": "fileid://file-fe-a"},
                {"role": "system", "content": "fileid://file-fe-b, fileid://file-fe-c"},
                {"role": "user", "content": "fileid://file-fe-x is not a reference here"},
                {"role": "system", "content": "fileid://file-fe-d , "}
            ]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let refs = refs_of(&chat).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            refs,
            vec![
                FileRefs {
                    message: 1,
                    ids: vec!["file-fe-a".into()]
                },
                FileRefs {
                    message: 2,
                    ids: vec!["file-fe-b".into(), "file-fe-c".into()]
                },
                FileRefs {
                    message: 4,
                    ids: vec!["file-fe-d".into()]
                },
            ]
        );
        let mixed: Chat = serde_json::from_value(serde_json::json!({
            "model": "qwen-long",
            "messages": [{"role": "system", "content": "fileid://file-fe-d, and some text"}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            refs_of(&mixed),
            Err(GatewayError::InvalidParameter { param: Some(p), .. }) if p == "messages[0].content"
        ));
    }
}
