//! The leader a signed manifest names: its TXT records at `_teesql-leader.<domain>`, and
//! the address its `leader_url` is dialled at, as TeeSQL's clients dial it.

use std::net::SocketAddr;

use super::settings::MAX_MANIFEST_RECORDS;

/// Why a manifest's `leader_url` names no address to dial ([`leader_address`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaderUrlError {
    /// Not a URL.
    #[error("leader_url {url:?}: {source}")]
    Parse {
        /// The URL as given.
        url: String,
        /// The URL parser's error.
        #[source]
        source: url::ParseError,
    },
    /// No host in it.
    #[error("leader_url {url:?}: no host")]
    NoHost {
        /// The URL as given.
        url: String,
    },
    /// A scheme other than https or http, and no port.
    #[error("leader_url {url:?}: scheme {scheme:?} (expected https or http)")]
    Scheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
}

/// Why a domain's manifest records could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ManifestLookupError {
    /// No DNS resolver could be made.
    #[error("DNS resolver: {0}")]
    Resolver(#[source] hickory_resolver::net::NetError),
    /// The TXT lookup failed.
    #[error("DNS TXT {name}: {source}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The resolver's error.
        #[source]
        source: hickory_resolver::net::NetError,
    },
    /// The name has no TXT record.
    #[error("DNS TXT {name}: no records")]
    NoRecords {
        /// The name looked up.
        name: String,
    },
}

/// The host and port to dial for a manifest's `leader_url`: an explicit port wins;
/// dstack gateway names `<id>-<port>s.<node>` (TLS passthrough) get 443; otherwise
/// https -> 443, http -> 80, any other scheme is an error.
pub fn leader_address(leader_url: &str) -> Result<(String, u16), LeaderUrlError> {
    let url = url::Url::parse(leader_url.trim()).map_err(|source| LeaderUrlError::Parse {
        url: leader_url.to_string(),
        source,
    })?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => {
            return Err(LeaderUrlError::NoHost {
                url: leader_url.to_string(),
            });
        }
    };
    if let Some(port) = url.port() {
        return Ok((host, port));
    }
    let gateway = host
        .split('.')
        .next()
        .and_then(|label| label.rsplit_once('-'))
        .is_some_and(|(_, tail)| {
            tail.strip_suffix('s')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
    match url.scheme() {
        _ if gateway => Ok((host, 443)),
        "https" => Ok((host, 443)),
        "http" => Ok((host, 80)),
        other => Err(LeaderUrlError::Scheme {
            url: leader_url.to_string(),
            scheme: other.to_string(),
        }),
    }
}

/// Every TXT record at `_teesql-leader.<domain>` (a name that already starts with
/// `_teesql-leader.` is used as it is), each record's chunks joined.
pub(super) async fn resolve_manifests(
    domain: &str,
    dns_server: Option<SocketAddr>,
) -> Result<Vec<String>, ManifestLookupError> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    let domain = domain.trim().trim_end_matches('.');
    let name = if domain.starts_with("_teesql-leader.") {
        format!("{domain}.")
    } else {
        format!("_teesql-leader.{domain}.")
    };
    let builder = match dns_server {
        None => hickory_resolver::TokioResolver::builder_tokio()
            .map_err(ManifestLookupError::Resolver)?,
        Some(addr) => {
            let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
            udp.port = addr.port();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            hickory_resolver::TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                Default::default(),
            )
        }
    };
    let resolver = builder.build().map_err(ManifestLookupError::Resolver)?;
    let answer =
        resolver
            .txt_lookup(name.clone())
            .await
            .map_err(|source| ManifestLookupError::Lookup {
                name: name.clone(),
                source,
            })?;
    let records: Vec<String> = answer
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .take(MAX_MANIFEST_RECORDS)
        .collect();
    if records.is_empty() {
        return Err(ManifestLookupError::NoRecords { name });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_urls_map_to_ports_as_teesql_clients_dial_them() {
        let cases = [
            (
                "https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433s.dstack-base-prod4.phala.network",
                "ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433s.dstack-base-prod4.phala.network",
                443,
            ),
            (
                "https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network",
                "ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network",
                443,
            ),
            ("https://example.com:8443/path/here", "example.com", 8443),
            ("http://localhost:5433", "localhost", 5433),
            ("https://db.example.com:5432", "db.example.com", 5432),
            ("http://db.example.com", "db.example.com", 80),
            ("https://db.example.com:443", "db.example.com", 443),
            ("https://[::1]:5433", "::1", 5433),
            // A gateway name is served on 443 whatever the scheme says.
            (
                "http://abc-5433s.node.example",
                "abc-5433s.node.example",
                443,
            ),
        ];
        for (url, host, port) in cases {
            assert_eq!(
                leader_address(url).unwrap(),
                (host.to_string(), port),
                "{url}"
            );
        }
        for bad in ["https://", "ftp://db.example.com", "not a url", ""] {
            assert!(leader_address(bad).is_err(), "{bad}");
        }
    }
}
