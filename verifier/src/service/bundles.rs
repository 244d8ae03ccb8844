//! Policies from an OPA bundle: a file read again on change, or a URL polled the way OPA
//! polls a bundle server (`If-None-Match` with the last ETag; `304` = unchanged; OPA's
//! `v1/download/download.go`), each bundle verified with the pinned key when one is
//! configured ([`crate::policy::bundle`]).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::policy::bundle::{self, Bundle, BundleKey, MAX_BUNDLE_BYTES};
use crate::policy::{PolicyError, PolicySet};

/// Where the bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleLocation {
    /// A local `.tar.gz`.
    File(PathBuf),
    /// An HTTP(S) URL.
    Url(String),
}

impl std::fmt::Display for BundleLocation {
    /// A URL without its user info and query (which may carry credentials or a
    /// presigned token): what logs and errors show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Url(u) => {
                let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
                let rest = rest.split(['?', '#']).next().unwrap_or("");
                let rest = match rest.split_once('/') {
                    Some((authority, path)) => {
                        let host = authority.rsplit('@').next().unwrap_or(authority);
                        format!("{host}/{path}")
                    }
                    None => rest.rsplit('@').next().unwrap_or(rest).to_string(),
                };
                write!(f, "{scheme}://{rest}")
            }
        }
    }
}

/// A configured bundle source.
#[derive(Debug)]
pub struct BundleSource {
    /// Where it is.
    pub location: BundleLocation,
    /// The key its signature must verify with; `None`: bundles must be unsigned.
    pub key: Option<BundleKey>,
    /// How often a URL is polled.
    pub poll: Duration,
    /// The ETag of the bundle serving now (URL only): set only once a bundle is taken,
    /// so a bundle the reload refuses is asked for (and refused, and counted) again.
    etag: Mutex<Option<String>>,
    http: reqwest::Client,
}

/// A bundle fetched and compiled, not yet serving.
#[derive(Debug)]
pub struct Fetched {
    /// The compiled set.
    pub set: PolicySet,
    /// The server's ETag for it (URL only).
    pub etag: Option<String>,
}

/// Time limit of one bundle download.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

fn load_error(location: &BundleLocation, detail: impl std::fmt::Display) -> PolicyError {
    PolicyError::Bundle {
        location: location.to_string(),
        detail: detail.to_string(),
    }
}

/// The HTTP client of a [`BundleSource`] could not be built.
#[derive(Debug, thiserror::Error)]
#[error("policy bundle HTTP client: {0}")]
pub struct BundleClientError(#[source] pub reqwest::Error);

impl BundleSource {
    /// A source for `location`, verified with `key` when given.
    pub fn new(
        location: BundleLocation,
        key: Option<BundleKey>,
        poll: Duration,
    ) -> Result<Self, BundleClientError> {
        // No redirects: an https URL must not be sent on to somewhere else (plaintext).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(BundleClientError)?;
        Ok(Self {
            location,
            key,
            poll,
            etag: Mutex::new(None),
            http,
        })
    }

    /// The bundle as it is now, compiled, with its ETag (to [`Self::taken`] once the
    /// set serves); `None` when the server says it has not changed since the bundle
    /// serving now.
    pub async fn fetch(&self, eval_limit: Duration) -> Result<Option<Fetched>, PolicyError> {
        let (bytes, etag) = match &self.location {
            BundleLocation::File(path) => {
                let path = path.clone();
                let bytes = tokio::task::spawn_blocking(move || read_bounded(&path))
                    .await
                    .map_err(|e| load_error(&self.location, e))?
                    .map_err(|e| load_error(&self.location, e))?;
                (bytes, None)
            }
            BundleLocation::Url(url) => match self.download(url).await? {
                Some(got) => got,
                None => return Ok(None),
            },
        };
        let key = self.key.clone();
        let location = self.location.clone();
        let set = tokio::task::spawn_blocking(move || {
            let b: Bundle = bundle::read(&bytes, key.as_ref())?;
            PolicySet::from_bundle(b, eval_limit)
        })
        .await
        .map_err(|e| load_error(&location, e))?
        .map_err(|e| match e {
            PolicyError::Bundle { detail, .. } => load_error(&location, detail),
            other => other,
        })?;
        Ok(Some(Fetched { set, etag }))
    }

    /// The bundle fetched with `etag` serves now: the next poll asks whether it changed.
    pub fn taken(&self, etag: Option<String>) {
        if let (Some(etag), Ok(mut slot)) = (etag, self.etag.lock()) {
            *slot = Some(etag);
        }
    }

    /// The first load, from outside any runtime or inside one (a thread of its own).
    pub fn fetch_blocking(&self, eval_limit: Duration) -> Result<PolicySet, PolicyError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| load_error(&self.location, e))?;
                    rt.block_on(self.fetch(eval_limit))
                })
                .join()
                .map_err(|_| load_error(&self.location, "the loader panicked"))?
        })?
        .map(|f| {
            self.taken(f.etag);
            f.set
        })
        .ok_or_else(|| {
            load_error(
                &self.location,
                "the server answered 304 to the first request",
            )
        })
    }

    async fn download(&self, url: &str) -> Result<Option<(Vec<u8>, Option<String>)>, PolicyError> {
        let err = |detail: String| load_error(&self.location, detail);
        let etag = self.etag.lock().ok().and_then(|e| e.clone());
        let mut request = self.http.get(url);
        if let Some(etag) = &etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| err(teesql_proto::runtime::error_chain(&e)))?;
        match response.status() {
            reqwest::StatusCode::NOT_MODIFIED if etag.is_some() => return Ok(None),
            s if s.is_success() => {}
            s => return Err(err(format!("the server answered {s}"))),
        }
        let new_etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BUNDLE_BYTES)
        {
            return Err(err(format!("larger than {MAX_BUNDLE_BYTES} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| err(teesql_proto::runtime::error_chain(&e)))?
        {
            if (body.len() + chunk.len()) as u64 > MAX_BUNDLE_BYTES {
                return Err(err(format!("larger than {MAX_BUNDLE_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some((body, new_etag)))
    }
}

fn read_bounded(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(format!("larger than {MAX_BUNDLE_BYTES} bytes"));
    }
    Ok(bytes)
}
