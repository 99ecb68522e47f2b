//! The request id: chosen once per request at the edge (`server::edges`), kept in the
//! request's extensions, read by every handler that logs or forwards it, and put on the
//! answer as `x-request-id`.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of one request, as a header value (sent upstream and returned).
#[derive(Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    /// Chooses the id of `req`: the client's `x-request-id` when it is 1 to 128 printable
    /// ASCII bytes (its value is then shared, not copied), else a new UUID.
    pub fn choose(req: &HttpRequest) -> RequestId {
        let sane = |v: &&HeaderValue| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
        };
        if let Some(given) = req.headers().get(&REQUEST_ID).filter(sane) {
            return RequestId(given.clone());
        }
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        // Owned by a shared buffer from the start: the id is cloned into the extensions,
        // the upstream request and the answer, and a plain `Vec` would be copied into a
        // shared one at the first clone (a second allocation). A UUID's text is always a
        // valid header value; the fallback is never taken.
        RequestId(
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
                .unwrap_or(HeaderValue::from_static("-")),
        )
    }

    /// The id the edge chose for `req` (chosen here when no edge ran, as in unit tests).
    pub fn of(req: &HttpRequest) -> RequestId {
        if let Some(id) = req.extensions().get::<RequestId>() {
            return id.clone();
        }
        let id = RequestId::choose(req);
        req.extensions_mut().insert(id.clone());
        id
    }

    /// As text (printable ASCII by construction).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("-")
    }
}

/// The request id of `req` as text, for a log line.
pub fn request_id(req: &HttpRequest) -> String {
    RequestId::of(req).as_str().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_sane_request_id_is_kept_as_sent_and_any_other_replaced() {
        let req = TestRequest::default()
            .insert_header(("x-request-id", "abc-123"))
            .to_http_request();
        assert_eq!(RequestId::choose(&req).as_str(), "abc-123");
        for bad in ["has space", "", &"x".repeat(129)] {
            let req = TestRequest::default()
                .insert_header(("x-request-id", bad))
                .to_http_request();
            let id = RequestId::choose(&req);
            assert!(
                uuid::Uuid::parse_str(id.as_str()).is_ok(),
                "{bad:?} gave {}",
                id.as_str()
            );
        }
    }

    #[test]
    fn the_id_is_chosen_once_per_request() {
        let req = TestRequest::default().to_http_request();
        let first = request_id(&req);
        assert_eq!(request_id(&req), first);
        assert!(uuid::Uuid::parse_str(&first).is_ok(), "{first}");
    }
}
