//! gzip for the answers worth it, decided per response (`server.gzip`).
//!
//! actix-web's `Compress` middleware chooses the encoding from the request alone and
//! compresses every response unless it already names a `Content-Encoding`; keeping it off
//! event streams and small bodies meant marking those `Content-Encoding: identity`, a
//! header clients then saw on most answers. Here the decision looks at the response:
//! gzip when the client accepts it and the body is not an event stream (compression would
//! hold events back until a block fills), carries no encoding of its own, and is of unknown
//! length or at least [`GZIP_MIN_BYTES`]. Anything else leaves unchanged, with no header
//! added. The encoding itself is actix-http's `Encoder`, the one `Compress` uses.

use actix_http::encoding::Encoder;
use actix_web::body::{BodySize, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{
    AcceptEncoding, ContentEncoding, Encoding, Header, CONTENT_ENCODING, CONTENT_TYPE,
};
use actix_web::http::StatusCode;

/// Bodies smaller than this are never compressed: gzip's per-response setup (hundreds of
/// KB of encoder state) costs more than it saves on a few hundred bytes. Measured in
/// `docs/PERFORMANCE.md` ("Operations").
pub const GZIP_MIN_BYTES: u64 = 1024;

/// True when the request's `Accept-Encoding` takes gzip (with a non-zero quality).
pub fn accepts_gzip(req: &ServiceRequest) -> bool {
    match AcceptEncoding::parse(req) {
        Ok(accept) => {
            accept.negotiate([Encoding::gzip(), Encoding::identity()].iter())
                == Some(Encoding::gzip())
        }
        Err(_) => false,
    }
}

/// True when a response with this status, head and body size is worth gzip.
fn worth_it(
    status: StatusCode,
    headers: &actix_web::http::header::HeaderMap,
    size: BodySize,
) -> bool {
    let big = match size {
        BodySize::None => false,
        BodySize::Sized(n) => n >= GZIP_MIN_BYTES,
        BodySize::Stream => true,
    };
    let event_stream = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    big && !event_stream
        && !headers.contains_key(CONTENT_ENCODING)
        && !matches!(
            status,
            StatusCode::SWITCHING_PROTOCOLS | StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT
        )
}

/// The response gzipped when `accepts` (the client takes gzip) and it is worth it; else
/// unchanged.
pub fn maybe_gzip<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
    accepts: bool,
) -> ServiceResponse<EitherBody<Encoder<B>, B>> {
    if !accepts || !worth_it(res.status(), res.headers(), res.response().body().size()) {
        return res.map_into_right_body();
    }
    res.map_body(|head, body| {
        EitherBody::left(Encoder::response(ContentEncoding::Gzip, head, body))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderMap;
    use actix_web::http::header::HeaderValue;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        h
    }

    #[test]
    fn only_bodies_worth_it_are_compressed() {
        let json = headers("application/json");
        assert!(worth_it(StatusCode::OK, &json, BodySize::Sized(1024)));
        assert!(worth_it(StatusCode::OK, &json, BodySize::Stream));
        assert!(!worth_it(StatusCode::OK, &json, BodySize::Sized(1023)));
        assert!(!worth_it(StatusCode::OK, &json, BodySize::None));
        assert!(!worth_it(
            StatusCode::OK,
            &headers("text/event-stream"),
            BodySize::Stream
        ));
        let mut encoded = json.clone();
        encoded.insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(!worth_it(StatusCode::OK, &encoded, BodySize::Stream));
        assert!(!worth_it(
            StatusCode::NO_CONTENT,
            &json,
            BodySize::Sized(4096)
        ));
    }

    #[test]
    fn accept_encoding_is_negotiated() {
        use actix_web::test::TestRequest;
        let accepts = |value: &str| {
            accepts_gzip(
                &TestRequest::default()
                    .insert_header(("accept-encoding", value))
                    .to_srv_request(),
            )
        };
        assert!(accepts("gzip"));
        assert!(accepts("gzip, deflate, br"));
        assert!(!accepts("br"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("identity"));
        assert!(!accepts_gzip(&TestRequest::default().to_srv_request()));
    }
}
