//! Reading the gateway's `/metrics` in tests.

use super::TestGateway;

/// `/metrics` as text (200, Prometheus text format).
pub async fn metrics_text(gw: &TestGateway) -> String {
    let mut res = gw.client().get(gw.at("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    String::from_utf8(res.body().limit(4 << 20).await.unwrap().to_vec()).unwrap()
}

/// The value of the sample `series` (name and labels exactly as exported), `None` when the
/// series is absent: a renamed metric fails an assertion instead of reading as 0.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}
