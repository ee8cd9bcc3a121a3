//! HTTP/1.1 on both sides of the proxy: the codec (heads, framing, chunked),
//! the per-connection proxy loop, and the responses Tollgate writes itself.

mod chunked;
mod codec;
mod filtered;
mod forward;
pub(crate) mod io;
mod proxy;
mod respond;

pub use chunked::{ChunkedDecoder, Decoded};
pub use codec::{
    parse_request, parse_response, BodyFraming, ConnectionOptions, HeaderRange, RequestHead, RequestLimits,
    ResponseHead, MAX_HEADERS,
};
pub use proxy::serve_connection;

/// Why a request could not be served, and so which status answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request target too long")]
    UriTooLong,
    #[error("request header fields too large")]
    HeadersTooLarge,
    #[error("request body larger than the route allows")]
    PayloadTooLarge,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("expectation not supported")]
    ExpectationFailed,
    #[error("HTTP version not supported")]
    VersionNotSupported,
    #[error("no route")]
    NotFound,
    #[error("bad gateway: {0}")]
    BadGateway(&'static str),
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    #[error("upstream timed out")]
    GatewayTimeout,
    /// A plugin failed and fails closed, or cut the stream off.
    #[error("{reason}")]
    Plugin { status: u16, reason: String },
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::NotFound => 404,
            HttpError::MethodNotAllowed => 405,
            HttpError::PayloadTooLarge => 413,
            HttpError::UriTooLong => 414,
            HttpError::ExpectationFailed => 417,
            HttpError::HeadersTooLarge => 431,
            HttpError::BadGateway(_) => 502,
            HttpError::NoHealthyUpstream => 503,
            HttpError::GatewayTimeout => 504,
            HttpError::VersionNotSupported => 505,
            HttpError::Plugin { status, .. } => *status,
        }
    }
}
