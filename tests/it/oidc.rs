//! OIDC/JWT bearer tokens end to end: the test generates its own Ed25519 and P-256 keys,
//! serves them as a JWKS on 127.0.0.1:0, and signs tokens the gateway must accept or refuse.
use std::sync::{Arc, Mutex};

use crate::common::*;
use actix_web::{web, App, HttpResponse, HttpServer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.example.org";

struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn ed25519(kid: &str) -> SigningKey {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
                    "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())}),
    }
}

fn p256(kid: &str) -> SigningKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}),
    }
}

fn sign(key: &SigningKey, claims: Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "sub": sub, "aud": "inference-gateway", "exp": now() + 600, "iat": now(),
           "preferred_username": format!("{sub}@example.org"), "name": "Dana", "groups": ["hpc-users"]})
}

async fn jwks_server(keys: Arc<Mutex<Vec<Value>>>) -> String {
    let data = web::Data::from(keys);
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).route(
            "/jwks.json",
            web::get().to(|keys: web::Data<Mutex<Vec<Value>>>| async move {
                HttpResponse::Ok().json(json!({"keys": *keys.lock().unwrap()}))
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}/jwks.json", server.addrs()[0]);
    actix_rt::spawn(server.run());
    url
}

async fn whoami(gw: &TestGateway, token: &str) -> (u16, Value) {
    let mut res = gw
        .client()
        .get(gw.at("/whoami"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let body = res.body().await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[actix_rt::test]
async fn jwts_are_verified_against_the_jwks() {
    let ed = ed25519("ed-1");
    let ec = p256("ec-1");
    let keys = Arc::new(Mutex::new(vec![ed.jwk.clone(), ec.jwk.clone()]));
    let jwks_url = jwks_server(Arc::clone(&keys)).await;
    let mock = MockUpstream::start(Behavior::default()).await.unwrap();
    let toml = format!(
        "[auth]\nmode = \"required\"\n[auth.oidc]\nenabled = true\njwks_url = \"{jwks_url}\"\n\
         issuer = \"{ISSUER}\"\naudience = [\"inference-gateway\"]\nrequired_groups = [\"hpc-users\"]\n"
    );
    let gw = TestApp::builder()
        .target(target("a", "m", mock.url()))
        .toml(&toml)
        .start()
        .await;

    for key in [&ed, &ec] {
        let (status, me) = whoami(&gw, &sign(key, claims("dana"))).await;
        assert_eq!(status, 200, "{:?}: {me}", key.alg);
        assert_eq!(me["username"], "dana@example.org");
        assert_eq!(me["id"], "dana");
        assert_eq!(me["groups"], json!(["hpc-users"]));
        assert_eq!(me["auth_method"], "oidc");
    }
    let token = sign(&ed, claims("dana"));
    let mut res = gw
        .client()
        .post(gw.at("/v1/chat/completions"))
        .bearer_auth(&token)
        .send_json(&chat("m"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let _ = res.body().await;

    let mut expired = claims("dana");
    expired["exp"] = json!(now() - 3600);
    let mut wrong_issuer = claims("dana");
    wrong_issuer["iss"] = json!("https://evil.example.org");
    let mut wrong_audience = claims("dana");
    wrong_audience["aud"] = json!("someone-else");
    let mut no_group = claims("dana");
    no_group["groups"] = json!(["students"]);
    let stranger = ed25519("ed-1"); // same kid, another key: bad signature
                                    // Flip a character inside the signature: the last one may only carry padding bits,
                                    // so changing it can leave the decoded signature as it was.
    let mut tampered = sign(&ed, claims("dana"));
    let at = tampered.rfind('.').unwrap() + 5;
    let flipped = if &tampered[at..=at] == "A" { "B" } else { "A" };
    tampered.replace_range(at..=at, flipped);

    let cases = [
        (sign(&ed, expired), 401, "expired"),
        (sign(&ed, wrong_issuer), 401, "issuer"),
        (sign(&ed, wrong_audience), 401, "not meant"),
        (sign(&stranger, claims("dana")), 401, "signature"),
        (tampered, 401, ""),
        (sign(&ed, no_group), 403, "required_groups"),
        ("not.a.jwt".to_string(), 401, ""),
    ];
    for (token, status, words) in cases {
        let (got, body) = whoami(&gw, &token).await;
        assert_eq!(got, status, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(words),
            "{body}"
        );
    }

    // A key rotated in after start is picked up when a token names it.
    let rotated = p256("ec-2");
    keys.lock().unwrap().push(rotated.jwk.clone());
    let (status, body) = whoami(&gw, &sign(&rotated, claims("erin"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "erin");
    gw.stop().await;
}
