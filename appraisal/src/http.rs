//! What every HTTP client of the verifier (collateral from a PCCS, Intel Trust Authority,
//! a JWKS) does with an answer: read the body up to a bound, and describe a transport
//! error with its causes.

/// An HTTP client builder as every fetcher of the appraisal starts it: each request
/// bounded by `timeout`, connecting within at most 5 s of it.
pub fn client_builder(timeout: std::time::Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
}

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// The connection failed or timed out while the body was arriving.
    Transport(reqwest::Error),
    /// Larger than the bound (by its Content-Length, or as it arrived).
    TooLarge,
}

/// The body of `resp`, refused as soon as it is known to exceed `max` bytes: nothing
/// larger is ever held in memory, whatever the peer announces or sends.
pub async fn read_bounded(resp: &mut reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and each of its causes, `: `-separated.
pub use teesql_proto::runtime::error_chain;
