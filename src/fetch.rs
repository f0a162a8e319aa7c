//! Fetching media URLs for upstreams that cannot (a local vLLM): size, time and redirect
//! limits, and an SSRF guard. Loopback, private, link-local (cloud metadata at 169.254.169.254),
//! shared (CGNAT), multicast and unspecified addresses are refused unless allow-listed. The guard
//! sits in the resolver, so every connection, redirects included, goes to a vetted address;
//! IP-literal hosts, which skip the resolver, are checked before each request and redirect.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::MediaConfig;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{0} points to a private, loopback or link-local address, which the gateway does not fetch"
    )]
    Forbidden(String),
    #[error("only http and https URLs are fetched, not {0}")]
    Scheme(String),
    #[error("the image at the URL is larger than {0} bytes")]
    TooLarge(usize),
    #[error("fetching the URL timed out")]
    Timeout,
    #[error("fetching the URL gave status {0}")]
    Status(u16),
    #[error("the URL could not be fetched: {0}")]
    Failed(String),
}

/// What may be fetched although its address is private.
#[derive(Default)]
struct AllowList {
    hosts: HashSet<String>,
    ips: HashSet<IpAddr>,
}

impl AllowList {
    fn new(entries: &[String]) -> Self {
        let mut allow = Self::default();
        for entry in entries {
            match entry.parse::<IpAddr>() {
                Ok(ip) => allow.ips.insert(ip),
                Err(_) => allow.hosts.insert(entry.to_ascii_lowercase()),
            };
        }
        allow
    }

    fn permits(&self, host: &str, ip: IpAddr) -> bool {
        self.hosts.contains(host) || self.ips.contains(&ip) || !forbidden(ip)
    }
}

/// Addresses a gateway must not be made to call on a client's behalf.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
        }
    }
}

/// A resolver that drops forbidden addresses (and fails when none is left).
struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let vetted: Vec<SocketAddr> = found
                .filter(|addr| allow.permits(&host, addr.ip()))
                .collect();
            if vetted.is_empty() {
                return Err(Box::new(FetchError::Forbidden(host))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(vetted.into_iter()) as Addrs)
        })
    }
}

/// Checks a URL's scheme and, for an IP-literal host, its address.
fn check_url(url: &reqwest::Url, allow: &AllowList) -> Result<(), FetchError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::Scheme(url.scheme().to_string()));
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
        None => return Err(FetchError::Failed("the URL has no host".into())),
    };
    match ip {
        Some(ip) if !allow.permits(&ip.to_string(), ip) => {
            Err(FetchError::Forbidden(url.as_str().to_string()))
        }
        _ => Ok(()),
    }
}

pub struct Fetcher {
    client: reqwest::Client,
    allow: Arc<AllowList>,
    max_bytes: usize,
    timeout: Duration,
}

impl Fetcher {
    pub fn new(media: &MediaConfig) -> Result<Self, String> {
        let allow = Arc::new(AllowList::new(&media.fetch_allow));
        let guard = allow.clone();
        let max_redirects = media.fetch_max_redirects;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                return attempt.error(FetchError::Failed("too many redirects".into()));
            }
            match check_url(attempt.url(), &guard) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        let client = reqwest::Client::builder()
            .dns_resolver(GuardedResolver {
                allow: allow.clone(),
            })
            .redirect(redirects)
            // An environment proxy (`HTTP_PROXY`) would get the host name and resolve it
            // itself, past the guard: client URLs are always fetched directly.
            .no_proxy()
            .connect_timeout(Duration::from_millis(media.fetch_timeout_ms))
            .user_agent(concat!("dashgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            allow,
            max_bytes: media.fetch_max_bytes,
            timeout: Duration::from_millis(media.fetch_timeout_ms),
        })
    }

    /// The body and content type at `url`, within the limits.
    pub async fn fetch(&self, url: &str) -> Result<(Bytes, Option<String>), FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::Failed(e.to_string()))?;
        check_url(&parsed, &self.allow)?;
        let work = async {
            let response = self.client.get(parsed).send().await.map_err(|e| {
                // The guard's refusal arrives wrapped in a connect or redirect error.
                let text = format!("{e:?}");
                if text.contains("Forbidden") {
                    FetchError::Forbidden(url.to_string())
                } else {
                    FetchError::Failed(e.to_string())
                }
            })?;
            if !response.status().is_success() {
                return Err(FetchError::Status(response.status().as_u16()));
            }
            if response
                .content_length()
                .is_some_and(|n| n > self.max_bytes as u64)
            {
                return Err(FetchError::TooLarge(self.max_bytes));
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
            let mut body = BytesMut::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| FetchError::Failed(e.to_string()))?;
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(FetchError::TooLarge(self.max_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((body.freeze(), content_type))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| FetchError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                forbidden(ip.parse().unwrap_or(IpAddr::from([1, 1, 1, 1]))),
                "{ip}"
            );
        }
        for ip in ["8.8.8.8", "47.96.0.1", "2408:4000::1"] {
            assert!(
                !forbidden(ip.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))),
                "{ip}"
            );
        }
    }

    #[test]
    fn ip_literal_urls_are_checked_before_any_connection() {
        let allow = AllowList::new(&["127.0.0.1".to_string()]);
        let url = |u: &str| reqwest::Url::parse(u).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            check_url(&url("http://10.0.0.1/a.jpg"), &allow),
            Err(FetchError::Forbidden(_))
        ));
        assert!(matches!(
            check_url(&url("http://[::1]/a.jpg"), &allow),
            Err(FetchError::Forbidden(_))
        ));
        assert!(
            check_url(&url("http://127.0.0.1:8080/a.jpg"), &allow).is_ok(),
            "allow-listed"
        );
        assert!(matches!(
            check_url(&url("ftp://example.com/a.jpg"), &allow),
            Err(FetchError::Scheme(_))
        ));
    }
}
