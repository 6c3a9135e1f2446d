//! Asymmetric connection tokens on a real `herald standalone` process: every key type from PEM
//! files, `alg` confusion refused, a JWKS served by the test, key rotation without a restart
//! and without dropping connections, and one key set fetch for many connections with the same
//! unknown `kid`. Keys are made by `openssl genpkey`; tokens are signed by the gateway crate's
//! `SigningKey` (ring) and by the `jsonwebtoken` crate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_gateway::auth::{Algorithm, PublicKey, SigningKey};
use herald_testkit::WsClient;
use serde_json::{Value, json};

use crate::common::StandaloneProcess;

fn openssl(args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl runs");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// A key pair of `kind` (`RSA`, `P-256`, `P-384`, `ED25519`): private PKCS#8 PEM, public SPKI PEM.
fn generate(kind: &str) -> (String, String) {
    let private = match kind {
        "RSA" => openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], ""),
        "ED25519" => openssl(&["genpkey", "-algorithm", "ED25519"], ""),
        curve => {
            openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", &format!("ec_paramgen_curve:{curve}")], "")
        }
    };
    let public = openssl(&["pkey", "-pubout"], &private);
    (private, public)
}

fn write_temp(name: &str, contents: &str) -> String {
    let path = std::env::temp_dir().join(format!("herald-e2e-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

fn token(private: &str, alg: Algorithm, kid: &str, user: &str) -> String {
    let exp = herald_protocol::publication::now_millis() / 1000 + 600;
    SigningKey::from_pem(private, alg).unwrap().sign(Some(kid), &json!({"sub": user, "exp": exp}))
}

fn url(process: &StandaloneProcess, token: &str) -> String {
    format!("ws://127.0.0.1:{}/ws?token={token}", process.ws)
}

/// Connects with `token`, retrying while the process starts or the key set is refreshed.
async fn connect_within(
    process: &StandaloneProcess,
    token: &str,
    wait: Duration,
) -> anyhow::Result<WsClient> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match WsClient::connect(&url(process, token)).await {
            Ok((client, _)) => return Ok(client),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn metric(process: &StandaloneProcess, name: &str) -> String {
    let body =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", process.ws)).await.unwrap().text().await.unwrap();
    body.lines().filter(|l| l.starts_with(name)).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn tokens_of_every_key_type_are_accepted_from_pem_files_and_alg_confusion_is_refused() {
    let keys =
        [("RSA", "rsa"), ("P-256", "p256"), ("P-384", "p384"), ("ED25519", "ed")].map(|(kind, kid)| {
            let (private, public) = generate(kind);
            (kid, private, write_temp(&format!("{kid}.pem"), &public), public)
        });
    let public_keys =
        keys.iter().map(|(kid, _, file, _)| format!("{{file={file:?}, kid={kid:?}}}")).collect::<Vec<_>>();
    let public_keys = format!("[{}]", public_keys.join(", "));
    let process = StandaloneProcess::start(&[("HERALD_AUTH__PUBLIC_KEYS", public_keys.as_str())]);
    let private = |kid: &str| keys.iter().find(|k| k.0 == kid).unwrap().1.as_str();

    let accepted = [
        (Algorithm::RS256, "rsa"),
        (Algorithm::RS512, "rsa"),
        (Algorithm::PS256, "rsa"),
        (Algorithm::ES256, "p256"),
        (Algorithm::ES384, "p384"),
        (Algorithm::EdDSA, "ed"),
    ];
    let mut clients = Vec::new();
    for (alg, kid) in accepted {
        let token = token(private(kid), alg, kid, &format!("user-{kid}"));
        clients.push(
            connect_within(&process, &token, Duration::from_secs(15))
                .await
                .unwrap_or_else(|e| panic!("{alg}: {e}")),
        );
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("p256".into());
    let library = jsonwebtoken::encode(
        &header,
        &json!({"sub": "lib"}),
        &jsonwebtoken::EncodingKey::from_ec_pem(private("p256").as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(WsClient::connect(&url(&process, &library)).await.is_ok(), "a token of another JWT library");

    let rsa_public_pem = keys[0].3.as_str();
    let claims = URL_SAFE_NO_PAD.encode(r#"{"sub":"mallory"}"#);
    let hs256_keyed_with_public_key = {
        use hmac::{KeyInit, Mac};
        let signed = format!("{}.{claims}", URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"rsa"}"#));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(rsa_public_pem.as_bytes()).unwrap();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    };
    let none = format!("{}.{claims}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"rsa"}"#));
    let rs256_naming_the_ec_key = token(private("rsa"), Algorithm::RS256, "p256", "mallory");
    let es384_with_the_p256_key = token(private("p256"), Algorithm::ES256, "p384", "mallory");
    for (what, token) in [
        ("HS256 keyed with the RSA public key", hs256_keyed_with_public_key),
        ("alg none", none),
        ("RS256 naming an EC key", rs256_naming_the_ec_key),
        ("ES256 naming a P-384 key", es384_with_the_p256_key),
    ] {
        assert!(WsClient::connect(&url(&process, &token)).await.is_err(), "{what} was accepted");
    }
    for client in &mut clients {
        client.subscribe("news:still-here").await.expect("connections stay up");
    }
}

/// A JWKS endpoint on 127.0.0.1:0 whose key set the test switches, counting its requests.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
}

type JwksState = (Arc<Mutex<Value>>, Arc<AtomicUsize>);

async fn jwks_server(keys: Value) -> JwksServer {
    let state: JwksState = (Arc::new(Mutex::new(keys)), Arc::new(AtomicUsize::new(0)));
    let app = axum::Router::new()
        .route(
            "/.well-known/jwks.json",
            axum::routing::get(
                |axum::extract::State((keys, hits)): axum::extract::State<JwksState>| async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"keys": keys.lock().unwrap().clone()}))
                },
            ),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    JwksServer { url, keys: state.0, hits: state.1 }
}

fn jwk(public_pem: &str, kid: &str, alg: Algorithm) -> Value {
    let mut jwk = PublicKey::from_pem(public_pem).unwrap().to_jwk();
    jwk["kid"] = kid.into();
    jwk["alg"] = alg.name().into();
    jwk["use"] = "sig".into();
    jwk
}

#[tokio::test]
async fn a_jwks_key_rotation_is_picked_up_without_a_restart_or_dropped_connections() {
    let (old_private, old_public) = generate("RSA");
    let (new_private, new_public) = generate("P-256");
    let server = jwks_server(json!([jwk(&old_public, "2026-old", Algorithm::RS256)])).await;
    let process = StandaloneProcess::start(&[
        ("HERALD_AUTH__JWKS_URL", server.url.as_str()),
        ("HERALD_AUTH__JWKS_MIN_REFETCH_INTERVAL", "500ms"),
    ]);
    let old_token = token(&old_private, Algorithm::RS256, "2026-old", "alice");
    let mut old = connect_within(&process, &old_token, Duration::from_secs(15)).await.unwrap();
    let mut again = WsClient::connect(&url(&process, &old_token)).await.unwrap().0;
    let fetched = server.hits.load(Ordering::SeqCst);

    // The provider rotates: the old key is gone, a new one (another type, too) signs.
    *server.keys.lock().unwrap() = json!([jwk(&new_public, "2026-new", Algorithm::ES256)]);
    let new_token = token(&new_private, Algorithm::ES256, "2026-new", "bob");
    let mut new =
        connect_within(&process, &new_token, Duration::from_secs(5)).await.expect("new kid accepted");
    assert!(server.hits.load(Ordering::SeqCst) > fetched, "the key set was fetched again");
    for client in [&mut old, &mut again, &mut new] {
        client.subscribe("news:rotation").await.expect("connections outlive the rotation");
    }
    let ok_fetches = metric(&process, "herald_gateway_jwks_fetches_total{result=\"ok\"}").await;
    assert!(ok_fetches.ends_with(" 2"), "start-up and rotation: {ok_fetches}");
    let refused = WsClient::connect(&url(&process, &old_token)).await;
    assert!(refused.is_err(), "a token of the removed key, even one verified before, is refused now");
}

#[tokio::test]
async fn fifty_connections_with_the_same_unknown_kid_cause_one_fetch() {
    let (private, public) = generate("ED25519");
    let (_, other_public) = generate("ED25519");
    let server = jwks_server(json!([jwk(&other_public, "first", Algorithm::EdDSA)])).await;
    let process = StandaloneProcess::start(&[
        ("HERALD_AUTH__JWKS_URL", server.url.as_str()),
        ("HERALD_AUTH__JWKS_MIN_REFETCH_INTERVAL", "1s"),
    ]);
    let first = token(&private, Algorithm::EdDSA, "first", "nobody");
    // Started: a token of a known kid but the wrong key gets a clear refusal, not a retry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while reqwest::get(format!("http://127.0.0.1:{}/readyz", process.ws))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(WsClient::connect(&url(&process, &first)).await.is_err());
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the start-up fetch's rate limit
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    *server.keys.lock().unwrap() = json!([jwk(&public, "rotated", Algorithm::EdDSA)]);
    let rotated = token(&private, Algorithm::EdDSA, "rotated", "carol");
    let connections: Vec<_> = (0..50)
        .map(|_| {
            let url = url(&process, &rotated);
            tokio::spawn(async move { WsClient::connect(&url).await.is_ok() })
        })
        .collect();
    let mut at_once = 0;
    for connection in connections {
        at_once += usize::from(connection.await.unwrap());
    }
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(
            connect_within(&process, &rotated, Duration::from_secs(5))
                .await
                .expect("accepted after the fetch"),
        );
    }
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        2,
        "one fetch for 50 connections ({at_once} accepted at once)"
    );
    assert_eq!(at_once, 50, "handshakes with the new kid wait for the shared fetch and are accepted");
}
