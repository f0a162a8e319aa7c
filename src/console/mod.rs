//! The admin console's credentials: which admin token opens `/admin` (the configured one, or
//! the one the gateway made itself: a first run's bootstrap token or its replacement through
//! the console, kept in the store only as a SHA-256), and the signed-in browser sessions.
//!
//! A session is an `HttpOnly; SameSite=Strict` cookie (`Secure` behind TLS) naming a random id;
//! a request that changes something must also carry the session's CSRF token in
//! `x-dashgate-csrf`, which a page of another origin cannot read nor send.

pub mod firstrun;

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, header};
use subtle::ConstantTimeEq;

use crate::auth::hash_key;
use crate::config::Config;
use crate::store::{Store, StoreError};

/// The store settings holding the gateway-made admin token.
const TOKEN_SETTING: &str = "admin_token_sha256";
const KIND_SETTING: &str = "admin_token_kind";
pub const COOKIE: &str = "dashgate_session";
pub const CSRF_HEADER: &str = "x-dashgate-csrf";
/// How long a console session lasts without signing in again.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most: signing in over and over cannot grow memory without bound.
const MAX_SESSIONS: usize = 1024;

/// Where the admin token that works now comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `auth.admin_token` (or `DASHGATE_ADMIN_TOKEN`).
    Config,
    /// Made at a first run and printed once; the console asks to replace it.
    Bootstrap,
    /// Made through the console, replacing the bootstrap token.
    Console,
}

impl TokenSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Bootstrap => "bootstrap",
            Self::Console => "console",
        }
    }
}

struct Session {
    csrf: String,
    until: Instant,
}

/// What a signed-in request proved.
pub enum Admitted {
    Bearer,
    Session,
}

pub struct Console {
    token: RwLock<Option<([u8; 32], TokenSource)>>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// The bootstrap token made at this start, until `main` has printed it.
    fresh: Mutex<Option<String>>,
}

/// A random hex string of `bytes` random bytes.
pub fn random_hex(bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).ok()?;
    Some(hex::encode(buf))
}

fn parse_hash(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

impl Console {
    /// Decides the admin token at start. With none configured and nothing in the store (no keys
    /// there nor in `[[keys]]`, no token made through the console), a bootstrap token is made;
    /// [`Console::take_bootstrap_token`] hands it out once for printing.
    pub async fn open(config: &Config, store: &Store) -> Result<Console, StoreError> {
        let console = Console {
            token: RwLock::new(None),
            sessions: Mutex::new(HashMap::new()),
            fresh: Mutex::new(None),
        };
        if let Some(token) = config.auth.admin_token.as_ref().filter(|t| !t.is_empty()) {
            // A configured token ends the gateway-made one for good.
            store.delete_setting(TOKEN_SETTING).await?;
            store.delete_setting(KIND_SETTING).await?;
            *console.write() = Some((hash_key(token.expose()), TokenSource::Config));
            return Ok(console);
        }
        let stored = store
            .setting(TOKEN_SETTING)
            .await?
            .and_then(|h| parse_hash(&h));
        let kind = match store.setting(KIND_SETTING).await?.as_deref() {
            Some("console") => TokenSource::Console,
            _ => TokenSource::Bootstrap,
        };
        let empty = config.keys.is_empty() && store.key_count().await? == 0;
        if empty && kind == TokenSource::Bootstrap {
            if let Some(token) = random_hex(24).map(|h| format!("dga-{h}")) {
                console
                    .replace_token(store, &token, TokenSource::Bootstrap)
                    .await?;
                *console.fresh.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
            }
        } else if let Some(hash) = stored {
            *console.write() = Some((hash, kind));
        }
        Ok(console)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<([u8; 32], TokenSource)>> {
        self.token.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The bootstrap token made at this start, once.
    pub fn take_bootstrap_token(&self) -> Option<String> {
        self.fresh.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether `/admin` exists at all.
    pub fn enabled(&self) -> bool {
        self.source().is_some()
    }

    pub fn source(&self) -> Option<TokenSource> {
        self.token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(_, source)| source)
    }

    /// Whether `given` is the admin token, in constant time.
    pub fn is_admin_token(&self, given: &str) -> bool {
        let given = hash_key(given);
        match *self.token.read().unwrap_or_else(|e| e.into_inner()) {
            Some((expected, _)) => bool::from(expected.ct_eq(&given)),
            None => false,
        }
    }

    /// Stores a gateway-made admin token (its hash) and makes it the only one; every session
    /// signed in with the old one ends.
    pub async fn replace_token(
        &self,
        store: &Store,
        token: &str,
        source: TokenSource,
    ) -> Result<(), StoreError> {
        let hash = hash_key(token);
        store.set_setting(TOKEN_SETTING, &hex::encode(hash)).await?;
        store.set_setting(KIND_SETTING, source.as_str()).await?;
        *self.write() = Some((hash, source));
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    /// A new session: its cookie value and CSRF token.
    pub fn start_session(&self) -> Option<(String, String)> {
        let id = random_hex(32)?;
        let csrf = random_hex(32)?;
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.until > now);
        if sessions.len() >= MAX_SESSIONS {
            // The one closest to its end makes room.
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.until)
                .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        let session = Session {
            csrf: csrf.clone(),
            until: now + SESSION_TTL,
        };
        sessions.insert(hash_key(&id), session);
        Some((id, csrf))
    }

    /// The CSRF token of the session the request's cookie names, if it is live.
    pub fn session_csrf(&self, headers: &HeaderMap) -> Option<String> {
        let id = session_cookie(headers)?;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.get(&hash_key(id))?;
        (session.until > Instant::now()).then(|| session.csrf.clone())
    }

    pub fn end_session(&self, headers: &HeaderMap) {
        if let Some(id) = session_cookie(headers) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.remove(&hash_key(id));
        }
    }

    /// Lets a request in by the admin token as Bearer, or by a live session cookie; with the
    /// cookie, anything but a read must also carry the session's CSRF token.
    pub fn admit(&self, method: &Method, headers: &HeaderMap) -> Option<Admitted> {
        if let Some(token) = crate::auth::bearer(headers) {
            return self.is_admin_token(token).then_some(Admitted::Bearer);
        }
        let csrf = self.session_csrf(headers)?;
        if matches!(*method, Method::GET | Method::HEAD) {
            return Some(Admitted::Session);
        }
        let sent = headers.get(CSRF_HEADER)?.as_bytes();
        bool::from(sent.ct_eq(csrf.as_bytes())).then_some(Admitted::Session)
    }
}

/// The session id in the request's `Cookie` header.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn console() -> Console {
        Console {
            token: RwLock::new(Some((hash_key("dga-secret"), TokenSource::Bootstrap))),
            sessions: Mutex::new(HashMap::new()),
            fresh: Mutex::new(None),
        }
    }

    fn with_cookie(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let cookie = format!("other=1; {COOKIE}={id}");
        headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        headers
    }

    #[test]
    fn a_session_reads_freely_but_writes_only_with_its_csrf_token() {
        let console = console();
        let (id, csrf) = console.start_session().unwrap();
        let mut headers = with_cookie(&id);
        assert!(console.admit(&Method::GET, &headers).is_some());
        assert!(console.admit(&Method::POST, &headers).is_none());
        headers.insert(CSRF_HEADER, HeaderValue::from_static("forged"));
        assert!(console.admit(&Method::POST, &headers).is_none());
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&csrf).unwrap());
        assert!(console.admit(&Method::DELETE, &headers).is_some());
        console.end_session(&headers);
        assert!(console.admit(&Method::GET, &headers).is_none());
    }

    #[test]
    fn only_the_admin_token_opens_by_bearer() {
        let console = console();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert!(console.admit(&Method::POST, &headers).is_none());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer dga-secret"),
        );
        assert!(console.admit(&Method::POST, &headers).is_some());
        assert!(with_cookie("unknown").get(header::COOKIE).is_some());
        assert!(
            console
                .admit(&Method::GET, &with_cookie("unknown"))
                .is_none()
        );
    }
}
