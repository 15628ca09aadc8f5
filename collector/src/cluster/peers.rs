//! `--peers`: base URLs (`http://skein-1:3200,https://skein-2:3200`) or
//! `dns+http://NAME:PORT` / `dns+https://NAME:PORT`, every address NAME resolves to
//! (a Kubernetes headless Service), resolved again every [`RESOLVE_EVERY`].

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// How long a DNS answer is used before the name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSource {
    /// A base URL, used as given (no trailing slash).
    Url(String),
    /// Every address `host` resolves to, as `scheme://addr:port`.
    Dns { scheme: &'static str, host: String, port: u16 },
}

impl PeerSource {
    /// Parses one `--peers` entry.
    pub fn parse(s: &str) -> Result<PeerSource, String> {
        let s = s.trim().trim_end_matches('/');
        let (dns, rest) = match s.strip_prefix("dns+") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let url = url::Url::parse(rest).map_err(|e| format!("{s}: {e}"))?;
        let scheme = match url.scheme() {
            "http" => "http",
            "https" => "https",
            other => return Err(format!("{s}: scheme {other} (http or https)")),
        };
        if !url.path().trim_matches('/').is_empty() || url.query().is_some() {
            return Err(format!("{s}: a peer is a base URL without a path"));
        }
        let host = url.host_str().ok_or_else(|| format!("{s}: no host"))?.to_string();
        if dns {
            let port = url.port().ok_or_else(|| format!("{s}: dns+ needs a port"))?;
            Ok(PeerSource::Dns { scheme, host, port })
        } else {
            Ok(PeerSource::Url(format!("{scheme}://{}", &rest[scheme.len() + 3..])))
        }
    }
}

struct Resolved {
    at: Instant,
    urls: Vec<String>,
}

pub struct Peers {
    sources: Vec<PeerSource>,
    resolved: Mutex<Option<Resolved>>,
}

impl Peers {
    pub fn new(sources: Vec<PeerSource>) -> Peers {
        Peers { sources, resolved: Mutex::new(None) }
    }

    pub fn configured(&self) -> bool {
        !self.sources.is_empty()
    }

    /// The peers' base URLs now. A name that does not resolve contributes nothing this time
    /// (its replicas are then missing from answers, which say so only if they are asked);
    /// the last good answer is kept for a name that fails.
    pub async fn current(&self) -> Vec<String> {
        if self.sources.iter().all(|s| matches!(s, PeerSource::Url(_))) {
            return self
                .sources
                .iter()
                .filter_map(|s| match s {
                    PeerSource::Url(u) => Some(u.clone()),
                    PeerSource::Dns { .. } => None,
                })
                .collect();
        }
        let mut cache = self.resolved.lock().await;
        if let Some(r) = cache.as_ref()
            && r.at.elapsed() < RESOLVE_EVERY
        {
            return r.urls.clone();
        }
        let previous = cache.as_ref().map(|r| r.urls.clone()).unwrap_or_default();
        let mut urls = Vec::new();
        for s in &self.sources {
            match s {
                PeerSource::Url(u) => urls.push(u.clone()),
                PeerSource::Dns { scheme, host, port } => {
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(addrs) => {
                            let mut found: Vec<String> =
                                addrs.map(|a| format!("{scheme}://{a}")).collect();
                            found.sort();
                            found.dedup();
                            urls.extend(found);
                        }
                        Err(e) => {
                            tracing::warn!(host, error = %e, "cannot resolve peers");
                            let prefix = format!("{scheme}://");
                            urls.extend(
                                previous.iter().filter(|u| u.starts_with(&prefix)).cloned(),
                            );
                        }
                    }
                }
            }
        }
        urls.sort();
        urls.dedup();
        *cache = Some(Resolved { at: Instant::now(), urls: urls.clone() });
        urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_entries_are_base_urls_or_dns_names_with_a_port() {
        assert_eq!(
            PeerSource::parse("http://skein-1:3200/").unwrap(),
            PeerSource::Url("http://skein-1:3200".into())
        );
        assert_eq!(
            PeerSource::parse("dns+https://skein-headless:3200").unwrap(),
            PeerSource::Dns { scheme: "https", host: "skein-headless".into(), port: 3200 }
        );
        for bad in ["ftp://x:1", "dns+http://x", "http://x:1/api", "not a url"] {
            assert!(PeerSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn dns_peers_list_every_address_of_the_name() {
        let peers = Peers::new(vec![PeerSource::parse("dns+http://localhost:3200").unwrap()]);
        let urls = peers.current().await;
        assert!(urls.iter().any(|u| u == "http://127.0.0.1:3200"), "{urls:?}");
    }
}
