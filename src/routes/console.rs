//! `GET /admin/ui`: the admin console, a static page compiled into the binary (like
//! `/docs`). The page itself holds no data and needs no key; it signs in with an admin key
//! and reads everything it shows from the admin API (`/admin/backends`, `/admin/clusters`,
//! `/admin/usage`, `/admin/keys`, `/admin/quotas`, `/admin/batches`), which checks the key
//! on every call. Its policy allows only its own script and style, and calls to this origin.

use actix_web::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use actix_web::HttpResponse;

use crate::security::CONSOLE_CSP;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const CONSOLE_JS: &str = include_str!("../ui/console.js");
const CONSOLE_CSS: &str = include_str!("../ui/console.css");
const FAVICON_SVG: &str = include_str!("../ui/favicon.svg");

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_SECURITY_POLICY, CONSOLE_CSP))
        // Revalidated on each load, so an upgraded binary's console is used at once.
        .insert_header((CACHE_CONTROL, "no-cache"))
        .content_type(content_type)
        .body(body)
}

pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

/// Its own icon, so the browser's request for one is not a 404 in the console.
pub async fn icon() -> HttpResponse {
    asset("image/svg+xml", FAVICON_SVG)
}
