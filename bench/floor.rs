//! The floor row of `bench/run.sh`: actix-web and awc relaying requests to one upstream with
//! nothing else (no routing by model, no auth, quotas, logs, metrics or failover), set up
//! like the gateway's relay (a per-worker awc client, the first body chunk awaited before
//! answering, the backend's Content-Length kept). It shows what the framework itself
//! costs, so the gateway's row can be read as framework plus features.
//!
//! `FLOOR_BIND=127.0.0.1:PORT FLOOR_UPSTREAM=http://127.0.0.1:PORT cargo run --release
//! --example floor`
use std::time::Duration;

use actix_web::body::SizedStream;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::StreamExt;

struct Upstream {
    client: awc::Client,
    base: String,
}

async fn relay(req: HttpRequest, body: Bytes, up: web::Data<Upstream>) -> HttpResponse {
    let sent = up
        .client
        .request(req.method().clone(), format!("{}{}", up.base, req.path()))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await;
    let Ok(mut res) = sent else {
        return HttpResponse::BadGateway().finish();
    };
    let first = res.next().await;
    let mut answer = HttpResponse::build(res.status());
    if let Some(ct) = res.headers().get("content-type") {
        answer.insert_header(("content-type", ct.clone()));
    }
    let length = res
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = futures_util::stream::iter(first).chain(res);
    match length {
        Some(n) => answer.body(SizedStream::new(n, body)),
        None => answer.streaming(body),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::var("FLOOR_BIND").unwrap_or_else(|_| "127.0.0.1:8001".into());
    let base = std::env::var("FLOOR_UPSTREAM").unwrap_or_else(|_| "http://127.0.0.1:8002".into());
    HttpServer::new(move || {
        let connector = awc::Connector::new()
            .timeout(Duration::from_secs(5))
            .limit(2048)
            .conn_keep_alive(Duration::from_secs(30));
        let client = awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            .timeout(Duration::from_secs(60))
            .finish();
        App::new()
            .app_data(web::Data::new(Upstream {
                client,
                base: base.clone(),
            }))
            .default_service(web::to(relay))
    })
    .bind(bind)?
    .run()
    .await
}
