//! Push notifications end to end, against a fake Firebase Cloud Messaging on loopback that
//! this test serves (its OAuth2 token endpoint and its HTTP v1 send endpoint, recording every
//! request and answering as the test tells it: 503, 200, UNREGISTERED). A device registers its
//! token at `push@localhost` the Kontalk way; messages for its account while it is offline
//! bring one push (collapsed while it is out), tried again after a 503 and a 429, with the token and no
//! content of the messages; none while the account is online; a token FCM calls unregistered
//! is deleted, so the next message pushes nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::hostile::Raw;
use super::support::{toml_string, Runtime, ServerOptions, TempDir, TestServer};
use super::{ALICE, BOB};

per_runtime!(offline_messages_wake_the_device_through_fcm_once_and_an_unregistered_token_goes);

/// One request the fake FCM got.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    authorization: String,
    body: String,
}

/// The fake FCM: what it got, and the statuses of its next send answers (then 200).
#[derive(Default)]
struct Fake {
    got: Vec<Request>,
    script: Vec<u16>,
    unregistered: bool,
}

fn serve(listener: TcpListener, fake: Arc<Mutex<Fake>>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { return };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
        let (mut length, mut authorization) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or_default();
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("authorization") {
                authorization = v.trim().to_owned();
            }
        }
        let mut body = vec![0; length];
        let _ = reader.read_exact(&mut body);
        let body = String::from_utf8_lossy(&body).into_owned();
        let (status, answer) = {
            let mut f = fake.lock().unwrap();
            f.got.push(Request {
                path: path.clone(),
                authorization,
                body,
            });
            if path == "/token" {
                (
                    200,
                    r#"{"access_token":"fake-access","expires_in":3600,"token_type":"Bearer"}"#
                        .to_owned(),
                )
            } else if f.unregistered {
                (
                    404,
                    r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#
                        .to_owned(),
                )
            } else if f.script.is_empty() {
                (
                    200,
                    r#"{"name":"projects/kontalkd-test/messages/1"}"#.to_owned(),
                )
            } else {
                let s = f.script.remove(0);
                (
                    s,
                    r#"{"error":{"code":503,"status":"UNAVAILABLE"}}"#.to_owned(),
                )
            }
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nRetry-After: 0\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
    }
}

fn sends(fake: &Arc<Mutex<Fake>>) -> Vec<Request> {
    let f = fake.lock().unwrap();
    f.got
        .iter()
        .filter(|r| r.path.ends_with("/messages:send"))
        .cloned()
        .collect()
}

fn wait_sends(fake: &Arc<Mutex<Fake>>, n: usize, server: &TestServer) -> Vec<Request> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = sends(fake);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} pushes came\n{}",
            got.len(),
            server.log_report()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn chat(bob: &mut Raw, body: &str) {
    bob.send(
        format!(
            "<message to='{}' type='chat' id='{body}'><body>{body}</body></message>",
            ALICE.0
        )
        .as_bytes(),
    );
}

fn offline_messages_wake_the_device_through_fcm_once_and_an_unregistered_token_goes(rt: Runtime) {
    let dir = TempDir::new("kontalkd-push");
    let key = dir.path().join("key.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output();
    match made {
        Ok(out) if out.status.success() => {}
        other => {
            let _: Option<()> = super::support::missing(
                &format!("openssl cannot make a key ({other:?})"),
                "apt-get install openssl (or run .ci/run)",
            );
            return;
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = Arc::new(Mutex::new(Fake {
        script: vec![503, 429],
        ..Fake::default()
    }));
    let serving = fake.clone();
    thread::spawn(move || serve(listener, serving));
    let credentials = dir.path().join("service-account.json");
    let pem = std::fs::read_to_string(&key).unwrap();
    let json = format!(
        "{{\"type\":\"service_account\",\"project_id\":\"kontalkd-test\",\"private_key\":{:?},\
         \"client_email\":\"push@kontalkd-test.iam.gserviceaccount.com\",\
         \"token_uri\":\"http://127.0.0.1:{port}/token\"}}",
        pem
    );
    std::fs::write(&credentials, json).unwrap();
    let server = TestServer::start(ServerOptions {
        require_encryption: false,
        extra_toml: format!(
            "[kontalk]\npush_sender_id = \"123456789\"\npush_credentials = {}\n\
             push_send_url = \"http://127.0.0.1:{port}/v1/projects/{{project}}/messages:send\"\n",
            toml_string(&credentials.display().to_string())
        ),
        ..ServerOptions::with_users(rt, &[ALICE, BOB])
    });
    let addr = server.c2s_addr();
    let (alice_user, bob_user) = (
        ALICE.0.split('@').next().unwrap(),
        BOB.0.split('@').next().unwrap(),
    );

    // The device registers its token, then its connection goes.
    {
        let mut alice = Raw::login(addr, alice_user, ALICE.1, "phone");
        let mark = alice.mark();
        alice.send(
            b"<iq to='push@localhost' type='set' id='reg'><register \
              xmlns='http://kontalk.org/extensions/presence#push' provider='gcm'>alice-device</register></iq>",
        );
        let got = alice
            .wait_for("id='reg'", mark)
            .expect("the registration's answer");
        assert!(got.contains("type='result'"), "{got}");
    }
    let mut bob = Raw::login(addr, bob_user, BOB.1, "laptop");
    // Three messages while alice is away: one push, tried again after FCM's 503 and 429.
    for body in ["secret-one", "secret-two", "secret-three"] {
        chat(&mut bob, body);
    }
    let got = wait_sends(&fake, 3, &server);
    thread::sleep(Duration::from_secs(2));
    let got_now = sends(&fake);
    assert_eq!(
        got_now.len(),
        3,
        "one push (and its retries) for three messages: {got_now:?}"
    );
    for push in &got {
        assert_eq!(push.path, "/v1/projects/kontalkd-test/messages:send");
        assert_eq!(push.authorization, "Bearer fake-access");
        assert!(
            push.body.contains("\"token\":\"alice-device\""),
            "{}",
            push.body
        );
        assert!(
            push.body.contains("org.kontalk.CHECK_MESSAGES"),
            "{}",
            push.body
        );
        assert!(
            !push.body.contains("secret"),
            "no content in a push: {}",
            push.body
        );
    }
    // The access token came once, for a JWT signed with RS256 by the service account.
    let tokens: Vec<Request> = fake
        .lock()
        .unwrap()
        .got
        .iter()
        .filter(|r| r.path == "/token")
        .cloned()
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert!(
        tokens[0]
            .body
            .contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
            && tokens[0]
                .body
                .contains("&assertion=eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."),
        "{}",
        tokens[0].body
    );

    // Online: the message is delivered, nothing pushed.
    let mut alice = Raw::login(addr, alice_user, ALICE.1, "phone");
    let mark = alice.mark();
    chat(&mut bob, "while-online");
    alice
        .wait_for("while-online", mark)
        .expect("delivered to the online phone");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(sends(&fake).len(), 3, "no push while online");
    drop(alice);

    // FCM says the token is gone: it is deleted, and the next message pushes nothing.
    fake.lock().unwrap().unregistered = true;
    thread::sleep(Duration::from_millis(500));
    chat(&mut bob, "after-unregistered");
    wait_sends(&fake, 4, &server);
    thread::sleep(Duration::from_secs(1));
    chat(&mut bob, "no-token-left");
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sends(&fake).len(),
        4,
        "the unregistered token was deleted\n{}",
        server.log_report()
    );
    assert!(
        server.log_text().contains("no longer registered; deleted"),
        "{}",
        server.log_report()
    );
}
