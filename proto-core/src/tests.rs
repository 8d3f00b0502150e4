//! Deterministic tests: test clients and the server core driven against each
//! other in memory, with a fake clock and an in-memory store, through the
//! [`Fixture`] of `testing.rs`.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rustls::pki_types::ServerName;

use crate::error::StreamErrorCondition as XE;
use crate::ns;
use crate::sasl::{Mechanism, ScramClient, ScramHash};
use crate::server::*;
use crate::store::StoreReply;
use crate::testing::{test_tls, Fixture};
use crate::xml::{Element, StreamEvent};
use crate::{Config, Event, Limits};

/// A server for `localhost` (seed `[7; 32]`) with the accounts
/// alice/secret and bob/hunter2.
fn fixture(config: Config) -> Fixture {
    let mut h = Fixture::with_config(config, &test_tls(), [7; 32]);
    h.store.add_account("alice", "secret");
    h.store.add_account("bob", "hunter2");
    h
}

/// [`fixture`] without TLS required.
fn fixture_plain() -> Fixture {
    fixture(Config {
        require_tls: false,
        ..Config::default()
    })
}

#[test]
fn starttls_scram_plus_bind_and_chat() {
    let mut h = fixture(Config::default());
    let a = h.connect_client(Listener::Starttls);
    let f = h.open(a);
    // TLS is required: only STARTTLS is offered before it.
    assert!(f
        .child(ns::TLS, "starttls")
        .unwrap()
        .child(ns::TLS, "required")
        .is_some());
    assert!(f.child(ns::SASL, "mechanisms").is_none());
    let limits = f.child(ns::STREAM_LIMITS, "limits").unwrap();
    assert_eq!(
        limits.child(ns::STREAM_LIMITS, "max-bytes").unwrap().text(),
        "262144"
    );
    h.send(a, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    assert!(h.stanza(a).is(ns::TLS, "proceed"));
    let f = h.open(a);
    let mechs: Vec<String> = f
        .child(ns::SASL, "mechanisms")
        .unwrap()
        .elements()
        .map(|m| m.text())
        .collect();
    assert_eq!(
        mechs,
        [
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1",
            "PLAIN"
        ]
    );
    assert!(f.child(ns::SASL_CB, "sasl-channel-binding").is_some());
    assert!(h
        .scram(a, Mechanism::ScramSha256Plus, "alice", "secret")
        .is(ns::SASL, "success"));
    assert_eq!(h.bind(a, Some("phone")), "alice@localhost/phone");
    h.send(a, "<presence/>");

    let b = h.login_tls("bob", "hunter2", "pc");
    h.drain(a);
    h.send(
        b,
        "<message to='alice@localhost' type='chat' id='m1'><body>hi alice</body></message>",
    );
    let m = h.stanza(a);
    assert_eq!(m.attr("from"), Some("bob@localhost/pc"));
    assert_eq!(m.child(ns::CLIENT, "body").unwrap().text(), "hi alice");
    h.send(
        a,
        "<message to='bob@localhost/pc' type='chat'><body>hi bob</body></message>",
    );
    let m = h.stanza(b);
    assert_eq!(m.attr("from"), Some("alice@localhost/phone"));
    h.no_more(a);
}

#[test]
fn every_mechanism_logs_in_and_wrong_passwords_fail() {
    /// One login attempt with `mech` on a fresh STARTTLS stream.
    fn attempt(h: &mut Fixture, mech: Mechanism, password: &str) -> (ConnId, Element) {
        let id = h.connect_client(Listener::Starttls);
        h.starttls(id);
        let result = if mech == Mechanism::Plain {
            let auth = B64.encode(format!("\0alice\0{password}"));
            h.send(
                id,
                format!("<auth xmlns='{}' mechanism='PLAIN'>{auth}</auth>", ns::SASL),
            );
            h.stanza(id)
        } else {
            h.scram(id, mech, "alice", password)
        };
        (id, result)
    }
    for mech in Mechanism::ALL {
        let mut h = fixture(Config::default());
        let (_, result) = attempt(&mut h, mech, "secret");
        assert!(result.is(ns::SASL, "success"), "{mech:?}: {result:?}");
        let (id, result) = attempt(&mut h, mech, "wrong");
        assert!(result.is(ns::SASL, "failure"), "{mech:?}");
        assert!(result.child(ns::SASL, "not-authorized").is_some());
        assert!(!h.is_closed(id));
    }
}

#[test]
fn unknown_users_and_failure_limit() {
    let mut h = fixture(Config::default());
    let id = h.connect_client(Listener::Starttls);
    h.starttls(id);
    let r = h.scram(id, Mechanism::ScramSha256, "nobody", "x");
    assert!(r.child(ns::SASL, "not-authorized").is_some());
    let r = h.scram(id, Mechanism::ScramSha1, "alice", "bad");
    assert!(r.child(ns::SASL, "not-authorized").is_some());
    let r = h.scram(id, Mechanism::ScramSha1, "alice", "bad");
    assert!(r.child(ns::SASL, "not-authorized").is_some());
    h.expect_stream_error(id, XE::PolicyViolation);
}

#[test]
fn sasl_edge_cases() {
    let mut h = fixture(Config::default());
    let id = h.connect_client(Listener::Starttls);
    h.starttls(id);
    h.send(
        id,
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'/>",
    );
    assert!(h.stanza(id).child(ns::SASL, "invalid-mechanism").is_some());
    h.send(
        id,
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!!notbase64</auth>",
    );
    assert!(h.stanza(id).child(ns::SASL, "incorrect-encoding").is_some());
    // Without initial response: an empty challenge, then the response.
    h.send(
        id,
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>",
    );
    let c = h.stanza(id);
    assert!(c.is(ns::SASL, "challenge") && c.text().is_empty());
    h.send(id, "<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    assert!(h.stanza(id).child(ns::SASL, "aborted").is_some());
    h.send(
        id,
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>",
    );
    h.stanza(id);
    h.send(
        id,
        format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode("\0alice\0secret")
        ),
    );
    assert!(h.stanza(id).is(ns::SASL, "success"));
}

#[test]
fn plain_needs_tls_and_scram_plus_needs_binding() {
    let mut h = fixture_plain();
    let id = h.connect_client(Listener::Starttls);
    let f = h.open(id);
    let mechs: Vec<String> = f
        .child(ns::SASL, "mechanisms")
        .unwrap()
        .elements()
        .map(|m| m.text())
        .collect();
    assert_eq!(mechs, ["SCRAM-SHA-256", "SCRAM-SHA-1"]);
    h.send(
        id,
        format!(
            "<auth xmlns='{}' mechanism='PLAIN'>{}</auth>",
            ns::SASL,
            B64.encode("\0alice\0secret")
        ),
    );
    assert!(h
        .stanza(id)
        .child(ns::SASL, "encryption-required")
        .is_some());
    assert!(h
        .scram(id, Mechanism::ScramSha256, "alice", "secret")
        .is(ns::SASL, "success"));

    // A -PLUS exchange whose binding data is not this TLS session's fails.
    let mut h = fixture(Config::default());
    let id = h.connect_client(Listener::Starttls);
    h.starttls(id);
    let mut client = ScramClient::new(
        ScramHash::Sha256,
        "alice",
        "secret",
        "n0nce",
        Some(vec![0; 32]),
    );
    h.scram_exchange(id, "SCRAM-SHA-256-PLUS", &mut client)
        .expect("a challenge");
    assert!(h.stanza(id).child(ns::SASL, "not-authorized").is_some());
}

#[test]
fn direct_tls_login() {
    let mut h = fixture(Config::default());
    let id = h.connect_client(Listener::DirectTls);
    let f = h.open(id);
    assert!(f.child(ns::TLS, "starttls").is_none());
    assert!(h.clients[&id].direct);
    assert_eq!(
        h.clients[&id].tls.as_ref().unwrap().alpn_protocol(),
        Some(&b"xmpp-client"[..])
    );
    assert!(h
        .scram(id, Mechanism::ScramSha1Plus, "bob", "hunter2")
        .is(ns::SASL, "success"));
    assert_eq!(h.bind(id, None).split('/').next(), Some("bob@localhost"));
}

#[test]
fn bytes_pipelined_after_starttls_go_to_tls() {
    let mut h = fixture(Config::default());
    let id = h.connect_client(Listener::Starttls);
    h.open(id);
    // The client sends <starttls/> and its ClientHello in one write.
    let mut tls = rustls::ClientConnection::new(
        h.tls_client_config(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut hello).unwrap();
    }
    // Some clients (go-xmpp) end <starttls/> with a newline: tolerated.
    let mut data = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\n".to_vec();
    data.extend_from_slice(&hello);
    h.server.handle_data(h.now, id, &data);
    let mut buf = Vec::new();
    while let Some(ev) = h.server.poll_event() {
        if let Event::Transmit(c) = ev {
            h.server.poll_transmit(c, &mut buf);
        }
    }
    let proceed = b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
    let pos = buf
        .windows(proceed.len())
        .position(|w| w == proceed)
        .expect("proceed sent");
    // Right after <proceed/> comes the ServerHello (TLS handshake record, 0x16).
    let rest = &buf[pos + proceed.len()..];
    assert_eq!(
        rest.first(),
        Some(&0x16),
        "server answered the pipelined ClientHello"
    );
    let mut rd = rest;
    while !rd.is_empty() {
        tls.read_tls(&mut rd).unwrap();
        tls.process_new_packets().unwrap();
    }
    assert!(!h.is_closed(id));
}

#[test]
fn resource_conflict_replaces_old_session() {
    let mut h = fixture(Config::default());
    let old = h.login_tls("alice", "secret", "phone");
    let new = h.login_tls("alice", "secret", "phone");
    h.drain(old);
    // The old one got <conflict/> (the events were drained; check state).
    assert!(h.is_closed(old));
    assert!(!h.is_closed(new));
    let b = h.login_tls("bob", "hunter2", "pc");
    h.send(
        b,
        "<message to='alice@localhost/phone' type='chat'><body>x</body></message>",
    );
    assert_eq!(h.stanza(new).child(ns::CLIENT, "body").unwrap().text(), "x");

    let mut h = fixture(Config::default());
    let old = h.login_tls("alice", "secret", "phone");
    h.drain(old);
    let _new = h.login_tls("alice", "secret", "phone");
    h.expect_stream_error(old, XE::Conflict);
}

#[test]
fn spoofed_from_is_a_stream_error_and_from_is_stamped() {
    let mut h = fixture(Config::default());
    let a = h.login_tls("alice", "secret", "r");
    let b = h.login_tls("bob", "hunter2", "r");
    h.drain(a);
    h.send(
        b,
        "<message to='alice@localhost' from='bob@localhost' type='chat'><body>ok</body></message>",
    );
    assert_eq!(h.stanza(a).attr("from"), Some("bob@localhost/r"));
    h.send(b, "<message to='alice@localhost' from='carol@localhost/x' type='chat'><body>spoof</body></message>");
    h.drain(b);
    assert!(h.is_closed(b));
    h.no_more(a);
}

#[test]
fn delivery_rules_for_bare_and_full_jids() {
    let mut h = fixture(Config::default());
    let a1 = h.login_tls("alice", "secret", "one");
    let a2 = h.connect_client(Listener::Starttls);
    h.starttls(a2);
    h.scram(a2, Mechanism::ScramSha256Plus, "alice", "secret");
    h.bind(a2, Some("two"));
    h.send(a2, "<presence><priority>-1</priority></presence>");
    let b = h.login_tls("bob", "hunter2", "pc");
    h.drain(a1);
    h.drain(a2);
    // Bare JID: non-negative priority resources only.
    h.send(
        b,
        "<message to='alice@localhost' type='chat'><body>bare</body></message>",
    );
    assert_eq!(
        h.stanza(a1).child(ns::CLIENT, "body").unwrap().text(),
        "bare"
    );
    h.no_more(a2);
    // Full JID of the negative-priority resource: delivered.
    h.send(
        b,
        "<message to='alice@localhost/two' type='chat'><body>full</body></message>",
    );
    assert_eq!(
        h.stanza(a2).child(ns::CLIENT, "body").unwrap().text(),
        "full"
    );
    // Unknown resource, chat: treated as bare.
    h.send(
        b,
        "<message to='alice@localhost/gone' type='chat'><body>fallback</body></message>",
    );
    assert_eq!(
        h.stanza(a1).child(ns::CLIENT, "body").unwrap().text(),
        "fallback"
    );
    // Offline user: service-unavailable back to the sender, with the payload.
    h.drain(b);
    h.send(
        b,
        "<message to='carol@localhost' type='chat' id='x1'><body>anyone?</body></message>",
    );
    let e = h.stanza(b);
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(e.attr("from"), Some("carol@localhost"));
    assert!(e
        .child(ns::CLIENT, "error")
        .unwrap()
        .child(ns::STANZAS, "service-unavailable")
        .is_some());
    // Remote domain: remote-server-not-found.
    h.send(
        b,
        "<message to='dave@example.org' id='x2'><body>far</body></message>",
    );
    let e = h.stanza(b);
    assert!(e
        .child(ns::CLIENT, "error")
        .unwrap()
        .child(ns::STANZAS, "remote-server-not-found")
        .is_some());
    // An error is never answered with an error.
    h.send(b, "<message to='carol@localhost' type='error' id='x3'/>");
    h.no_more(b);
}

#[test]
fn presence_between_own_resources_and_directed() {
    let mut h = fixture(Config::default());
    let a1 = h.login_tls("alice", "secret", "one");
    let a2 = h.login_tls("alice", "secret", "two");
    // a2's initial presence reached a1, and a2 learned about a1.
    let p = h.stanza(a1);
    assert!(p.is(ns::CLIENT, "presence") && p.attr("from") == Some("alice@localhost/two"));
    let p = h.stanza(a2);
    assert_eq!(p.attr("from"), Some("alice@localhost/one"));
    let b = h.login_tls("bob", "hunter2", "pc");
    h.send(b, "<presence to='alice@localhost/one'/>");
    assert_eq!(h.stanza(a1).attr("from"), Some("bob@localhost/pc"));
    // Bob disconnects: whoever got his directed presence learns he is gone.
    h.server.handle_eof(h.now, b);
    h.pump();
    let p = h.stanza(a1);
    assert_eq!(p.attr("type"), Some("unavailable"));
    assert_eq!(p.attr("from"), Some("bob@localhost/pc"));
}

#[test]
fn server_iq_services() {
    let mut h = fixture(Config::default());
    let a = h.login_tls("alice", "secret", "r");
    h.drain(a);
    h.send(a, "<iq type='get' id='1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let r = h.stanza(a);
    assert_eq!(r.attr("type"), Some("result"));
    let q = r.child(ns::DISCO_INFO, "query").unwrap();
    assert_eq!(
        q.child(ns::DISCO_INFO, "identity")
            .unwrap()
            .attr("category"),
        Some("server")
    );
    assert!(q.elements().any(|f| f.attr("var") == Some(ns::PING)));
    h.send(a, "<iq type='get' id='2' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>");
    assert!(h.stanza(a).child(ns::DISCO_ITEMS, "query").is_some());
    h.send(
        a,
        "<iq type='get' id='3' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let r = h.stanza(a);
    assert_eq!(
        (r.attr("type"), r.attr("id"), r.attr("from")),
        (Some("result"), Some("3"), Some("localhost"))
    );
    h.send(
        a,
        "<iq type='get' id='4'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    assert_eq!(h.stanza(a).attr("type"), Some("result"));
    h.send(
        a,
        "<iq type='get' id='5' to='localhost'><query xmlns='jabber:iq:version'/></iq>",
    );
    let r = h.stanza(a);
    assert_eq!(
        r.child(ns::VERSION, "query")
            .unwrap()
            .child(ns::VERSION, "name")
            .unwrap()
            .text(),
        "kontalkd"
    );
    h.send(
        a,
        "<iq type='get' id='6' to='localhost'><unknown xmlns='urn:x'/></iq>",
    );
    let r = h.stanza(a);
    assert!(r
        .child(ns::CLIENT, "error")
        .unwrap()
        .child(ns::STANZAS, "service-unavailable")
        .is_some());
    h.send(
        a,
        "<iq type='get' id='7' to='bob@localhost/nowhere'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let r = h.stanza(a);
    assert!(r
        .child(ns::CLIENT, "error")
        .unwrap()
        .child(ns::STANZAS, "service-unavailable")
        .is_some());
    h.send(a, "<iq type='get' id='8' to='localhost'/>");
    let r = h.stanza(a);
    assert!(r
        .child(ns::CLIENT, "error")
        .unwrap()
        .child(ns::STANZAS, "bad-request")
        .is_some());
    h.send(
        a,
        "<iq type='get' id='9' to='not a jid@@'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let r = h.stanza(a);
    assert!(r
        .child(ns::CLIENT, "error")
        .unwrap()
        .child(ns::STANZAS, "jid-malformed")
        .is_some());
    // iq between two sessions, both ways.
    let b = h.login_tls("bob", "hunter2", "pc");
    h.send(
        a,
        "<iq type='get' id='p1' to='bob@localhost/pc'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let req = h.stanza(b);
    assert_eq!(req.attr("from"), Some("alice@localhost/r"));
    h.send(b, "<iq type='result' id='p1' to='alice@localhost/r'/>");
    let res = h.stanza(a);
    assert_eq!(
        (res.attr("type"), res.attr("from")),
        (Some("result"), Some("bob@localhost/pc"))
    );
}

#[test]
fn a_code_that_could_not_be_sent_is_withdrawn_and_the_number_may_ask_again() {
    let mut h = fixture(Config::default());
    let id = h.connect_client(Listener::Starttls);
    h.starttls(id);
    let phone = |n: u32| {
        format!(
            "<iq type='set' id='p{n}'><query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>jabber:iq:register</value></field>\
             <field var='phone' type='text-single'><value>+15555215554</value></field></x></query></iq>"
        )
    };
    let error = |el: &crate::xml::Element| {
        let e = el.child(ns::CLIENT, "error")?;
        Some((
            e.attr("type")?.to_owned(),
            e.elements().next()?.name.clone(),
        ))
    };
    let user = "4bdd4f929f3a1062253e4e496bafba0bdfb5db75";
    h.code_failure = Some("the gateway answered 503".into());
    h.send(id, phone(1));
    let reply = h.stanza(id);
    assert_eq!(
        error(&reply),
        Some(("cancel".into(), "service-unavailable".into()))
    );
    assert_eq!(h.sent_codes.len(), 1);
    assert!(
        !h.store.codes.contains_key(user),
        "the code not sent is not kept"
    );
    // At once again: not throttled, since no code went out.
    h.code_failure = None;
    h.send(id, phone(2));
    let reply = h.stanza(id);
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    assert_eq!(h.sent_codes.len(), 2);
    assert_eq!(h.store.codes[user].0, h.sent_codes[1].code);
    // And now a third is throttled: that code went out.
    h.send(id, phone(3));
    assert_eq!(
        error(&h.stanza(id)),
        Some(("wait".into(), "service-unavailable".into()))
    );
    assert_eq!(h.sent_codes.len(), 2);
}

#[test]
fn in_band_registration() {
    let mut h = fixture(Config {
        allow_registration: true,
        ..Config::default()
    });
    let id = h.connect_client(Listener::Starttls);
    let f = h.starttls(id);
    assert!(f.child(ns::REGISTER_FEATURE, "register").is_some());
    h.send(
        id,
        "<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>",
    );
    let form = h.stanza(id);
    assert!(form
        .child(ns::REGISTER, "query")
        .unwrap()
        .child(ns::REGISTER, "username")
        .is_some());
    h.send(id, "<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>Carol</username><password>pw</password></query></iq>");
    assert_eq!(h.stanza(id).attr("type"), Some("result"));
    assert!(h.store.accounts.contains_key("carol"));
    h.send(id, "<iq type='set' id='r3'><query xmlns='jabber:iq:register'><username>carol</username><password>pw</password></query></iq>");
    assert!(h
        .stanza(id)
        .child(ns::CLIENT, "error")
        .unwrap()
        .child(ns::STANZAS, "conflict")
        .is_some());
    assert!(h
        .scram(id, Mechanism::ScramSha256, "carol", "pw")
        .is(ns::SASL, "success"));
    h.bind(id, None);
    // Change the password, then remove the account.
    h.send(id, "<iq type='set' id='r4'><query xmlns='jabber:iq:register'><username>carol</username><password>new</password></query></iq>");
    assert_eq!(h.stanza(id).attr("type"), Some("result"));
    assert!(h.store.accounts["carol"]
        .sha256
        .verify_password(ScramHash::Sha256, "new"));
    h.send(
        id,
        "<iq type='set' id='r5'><query xmlns='jabber:iq:register'><remove/></query></iq>",
    );
    assert_eq!(h.stanza(id).attr("type"), Some("result"));
    assert!(!h.store.accounts.contains_key("carol"));
    h.expect_stream_error(id, XE::NotAuthorized);

    // Off by default: registration is by phone number (Kontalk) only.
    for kontalk in [true, false] {
        let mut config = Config::default();
        config.kontalk.registration = kontalk;
        let mut h = fixture(config);
        let id = h.connect_client(Listener::Starttls);
        let f = h.starttls(id);
        assert_eq!(f.child(ns::REGISTER_FEATURE, "register").is_some(), kontalk);
        h.send(id, "<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>x</username><password>pw</password></query></iq>");
        assert!(h
            .stanza(id)
            .child(ns::CLIENT, "error")
            .unwrap()
            .child(ns::STANZAS, "service-unavailable")
            .is_some());
        assert!(!h.store.accounts.contains_key("x"));
    }
}

#[test]
fn nothing_is_acknowledged_before_the_store_answers() {
    let mut h = fixture(Config {
        allow_registration: true,
        ..Config::default()
    });
    let id = h.connect_client(Listener::Starttls);
    h.starttls(id);
    h.hold_store();
    h.send(id, "<iq type='set' id='r'><query xmlns='jabber:iq:register'><username>dan</username><password>pw</password></query></iq>");
    h.no_more(id);
    let held = h.release_store();
    assert_eq!(held.len(), 1);
    for (token, req) in held {
        let reply = h.store.answer(&req);
        h.server.handle_store_reply(h.now, token, reply);
    }
    h.pump();
    assert_eq!(h.stanza(id).attr("type"), Some("result"));
    // A failing store gives a temporary failure, not success.
    h.hold_store();
    let id = h.connect_client(Listener::Starttls);
    h.starttls(id);
    h.send(
        id,
        format!(
            "<auth xmlns='{}' mechanism='PLAIN'>{}</auth>",
            ns::SASL,
            B64.encode("\0alice\0secret")
        ),
    );
    let held = h.release_store();
    for (token, _) in held {
        h.server
            .handle_store_reply(h.now, token, StoreReply::Failed("disk full".into()));
    }
    h.pump();
    assert!(h
        .stanza(id)
        .child(ns::SASL, "temporary-auth-failure")
        .is_some());
}

#[test]
fn stream_header_errors() {
    let cases: &[(&str, XE)] = &[
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.org' version='1.0'>", XE::HostUnknown),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='2.0'>", XE::UnsupportedVersion),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>", XE::UnsupportedVersion),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='localhost' version='1.0'>", XE::InvalidNamespace),
        ("<stream xmlns='jabber:client' to='localhost' version='1.0'>", XE::InvalidNamespace),
        ("<foo:stream xmlns='jabber:client' to='localhost' version='1.0'>", XE::BadNamespacePrefix),
        ("<?xml version='1.0' encoding='UTF-16'?><stream:stream>", XE::UnsupportedEncoding),
        ("<!DOCTYPE stream [<!ENTITY x 'y'>]><stream:stream/>", XE::RestrictedXml),
        ("garbage<stream:stream>", XE::NotWellFormed),
    ];
    for (header, cond) in cases {
        let mut h = fixture(Config::default());
        let id = h.connect_client(Listener::Starttls);
        h.send(id, header);
        // The server always sends its own header before the error.
        assert!(matches!(h.next(id), StreamEvent::Header(_)), "{header}");
        h.expect_stream_error(id, *cond);
    }
}

#[test]
fn stanza_level_stream_errors() {
    let before_auth: &[(&str, XE)] = &[
        (
            "<message to='bob@localhost'><body>hi</body></message>",
            XE::NotAuthorized,
        ),
        (
            "<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>",
            XE::NotAuthorized,
        ),
        ("<!-- comment -->", XE::RestrictedXml),
        ("<?pi?>", XE::RestrictedXml),
        (
            "<message><body>&unknown;</body></message>",
            XE::RestrictedXml,
        ),
        ("<message></presence>", XE::NotWellFormed),
        ("<a:message/>", XE::BadNamespacePrefix),
        ("text at stream level<message/>", XE::BadFormat),
    ];
    for (data, cond) in before_auth {
        let mut h = fixture_plain();
        let id = h.connect_client(Listener::Starttls);
        h.open(id);
        h.send(id, data);
        h.expect_stream_error(id, *cond);
    }
    let after_bind: &[(&str, XE)] = &[
        ("<foo/>", XE::UnsupportedStanzaType),
        (
            "<enable xmlns='urn:xmpp:other'/>",
            XE::UnsupportedStanzaType,
        ),
        ("<message from='mallory@localhost'/>", XE::InvalidFrom),
    ];
    for (data, cond) in after_bind {
        let mut h = fixture(Config::default());
        let id = h.login_tls("alice", "secret", "r");
        h.drain(id);
        h.send(id, data);
        h.expect_stream_error(id, *cond);
    }
}

#[test]
fn limits_are_enforced_with_policy_violation() {
    let limits = Limits {
        max_stanza_size: 10_000,
        max_depth: 5,
        max_attributes: 4,
        ..Limits::default()
    };
    let deep = format!(
        "<message>{}{}</message>",
        "<a>".repeat(10),
        "</a>".repeat(10)
    );
    let big = format!("<message><body>{}</body></message>", "x".repeat(20_000));
    let attrs = "<message a='1' b='2' c='3' d='4' e='5'/>".to_owned();
    let huge_attr = format!("<message to='{}", "y".repeat(50_000));
    for data in [deep, big, attrs, huge_attr] {
        let mut h = fixture(Config {
            limits: limits.clone(),
            ..Config::default()
        });
        let id = h.login_tls("alice", "secret", "r");
        h.drain(id);
        h.send(id, &data);
        h.expect_stream_error(id, XE::PolicyViolation);
    }
}

#[test]
fn timeouts_keepalive_and_shutdown() {
    let mut h = fixture(Config::default());
    // An unauthenticated stream is closed after auth_timeout.
    let slow = h.connect_client(Listener::Starttls);
    h.send(slow, "<?xml version='1.0'?><stream:str");
    let a = h.login_tls("alice", "secret", "r");
    h.drain(a);
    h.advance(Duration::from_secs(61));
    h.expect_stream_error(slow, XE::ConnectionTimeout);
    // Whitespace keepalive after keepalive_interval without output.
    assert!(!h.is_closed(a));
    let before = h.received[&a].len();
    h.advance(Duration::from_secs(60));
    assert_eq!(&h.received[&a][before..], b" ");
    // Client whitespace keepalives are accepted.
    h.send(a, " \n ");
    // Idle timeout without any input.
    h.advance(Duration::from_secs(601));
    h.expect_stream_error(a, XE::ConnectionTimeout);
    // Shutdown: every stream gets system-shutdown.
    let b = h.login_tls("bob", "hunter2", "pc");
    h.drain(b);
    h.server.handle_shutdown(h.now);
    h.pump();
    h.expect_stream_error(b, XE::SystemShutdown);
    assert_eq!(h.server.connection_count(), 0);
}

#[test]
fn clean_close_handshake() {
    let mut h = fixture(Config::default());
    let a = h.login_tls("alice", "secret", "r");
    let a2 = h.login_tls("alice", "secret", "s");
    h.drain(a);
    h.drain(a2);
    h.send(a2, "</stream:stream>");
    assert!(matches!(h.next(a2), StreamEvent::End));
    assert!(h.is_closed(a2));
    // The other resource saw the unavailable presence.
    assert_eq!(h.stanza(a).attr("type"), Some("unavailable"));
    assert_eq!(h.server.session_count(), 1);
}

#[test]
fn same_script_same_bytes() {
    // Determinism: the same inputs with the same seed give the same output.
    fn run() -> Vec<u8> {
        let mut h = fixture_plain();
        let id = h.connect_client(Listener::Starttls);
        h.open(id);
        h.scram(id, Mechanism::ScramSha256, "alice", "secret");
        h.bind(id, None);
        h.received[&id].clone()
    }
    assert_eq!(run(), run());
}

#[test]
fn presences_at_login_come_in_an_order_set_by_the_seed() {
    // The roster is a hashed map: the order in which a user gets its
    // contacts' presences must come from the core's seed, not from the
    // process (std's RandomState gives every map other keys).
    fn run() -> Vec<u8> {
        let mut h = fixture_plain();
        let contacts: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
        let both = crate::roster::Subscription {
            to: true,
            from: true,
            ..Default::default()
        };
        let item = |jid: String| crate::roster::RosterItem {
            jid,
            name: None,
            groups: Vec::new(),
            subscription: both,
            in_roster: true,
            request: None,
        };
        h.store.data.insert(
            "alice".into(),
            crate::store::UserData {
                roster_version: 1,
                roster: contacts
                    .iter()
                    .map(|c| item(format!("{c}@localhost")))
                    .collect(),
                blocklist: Vec::new(),
                archive_prefs: None,
                key: None,
                app_push: Vec::new(),
            },
        );
        for c in &contacts {
            h.store.add_account(c, "pw");
            h.store.data.insert(
                c.clone(),
                crate::store::UserData {
                    roster_version: 1,
                    roster: vec![item("alice@localhost".into())],
                    blocklist: Vec::new(),
                    archive_prefs: None,
                    key: None,
                    app_push: Vec::new(),
                },
            );
            let id = h.session(c, "pw", "r");
            h.send(id, "<presence/>");
        }
        let alice = h.session("alice", "secret", "r");
        h.drain(alice);
        h.send(alice, "<presence/>");
        let got = h.stanzas(alice);
        let from: Vec<&str> = got
            .iter()
            .filter_map(|p| p.attr("from"))
            .filter(|f| *f != "alice@localhost/r")
            .collect();
        assert_eq!(from.len(), contacts.len(), "{got:?}");
        h.received[&alice].clone()
    }
    assert_eq!(run(), run());
}

#[test]
fn unsupported_channel_binding_types_do_not_count_as_failures() {
    let mut h = fixture(Config::default());
    let id = h.connect_client(Listener::Starttls);
    h.starttls(id);
    for _ in 0..5 {
        let first = B64.encode("p=tls-unique,,n=alice,r=abc");
        h.send(
            id,
            format!(
                "<auth xmlns='{}' mechanism='SCRAM-SHA-256-PLUS'>{first}</auth>",
                ns::SASL
            ),
        );
        assert!(h.stanza(id).child(ns::SASL, "not-authorized").is_some());
    }
    assert!(!h.is_closed(id));
    assert!(h
        .scram(id, Mechanism::ScramSha256, "alice", "secret")
        .is(ns::SASL, "success"));
}

// ------------------------------------------------------------ session manager

fn iq_error(el: &Element) -> Option<String> {
    let err = el.child(ns::CLIENT, "error")?;
    err.elements()
        .find(|e| e.ns == ns::STANZAS)
        .map(|e| e.name.clone())
}

#[test]
fn roster_set_push_get_versioning_and_remove() {
    let mut h = fixture_plain();
    let a1 = h.session("alice", "secret", "one");
    let a2 = h.session("alice", "secret", "two");
    for id in [a1, a2] {
        h.send(
            id,
            "<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>",
        );
        let r = h.stanza(id);
        assert_eq!(r.child(ns::ROSTER, "query").unwrap().attr("ver"), Some("0"));
    }
    h.send(a1, "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob'><group>Friends</group></item></query></iq>");
    for id in [a1, a2] {
        let all = h.stanzas(id);
        let push = all
            .iter()
            .find(|e| e.attr("type") == Some("set"))
            .expect("a roster push");
        let q = push.child(ns::ROSTER, "query").unwrap();
        assert_eq!(q.attr("ver"), Some("1"));
        let item = q.child(ns::ROSTER, "item").unwrap();
        assert_eq!(
            (
                item.attr("jid"),
                item.attr("name"),
                item.attr("subscription")
            ),
            (Some("bob@localhost"), Some("Bob"), Some("none"))
        );
        assert_eq!(item.child(ns::ROSTER, "group").unwrap().text(), "Friends");
        if id == a1 {
            assert!(all
                .iter()
                .any(|e| e.attr("type") == Some("result") && e.attr("id") == Some("r1")));
        }
    }
    assert_eq!(h.roster_of("alice").len(), 1, "durable");
    // Same version: an empty result; an old version: the whole roster.
    h.send(
        a1,
        "<iq type='get' id='r2'><query xmlns='jabber:iq:roster' ver='1'/></iq>",
    );
    assert!(h.stanza(a1).child(ns::ROSTER, "query").is_none());
    h.send(
        a1,
        "<iq type='get' id='r3'><query xmlns='jabber:iq:roster' ver='0'/></iq>",
    );
    assert_eq!(
        h.stanza(a1)
            .child(ns::ROSTER, "query")
            .unwrap()
            .elements()
            .count(),
        1
    );
    // Bad sets.
    for bad in [
        "<query xmlns='jabber:iq:roster'><item jid='x@localhost'/><item jid='y@localhost'/></query>",
        "<query xmlns='jabber:iq:roster'><item jid='x@localhost'><group>g</group><group>g</group></item></query>",
        "<query xmlns='jabber:iq:roster'><item jid='alice@localhost'/></query>",
        "<query xmlns='jabber:iq:roster'><item jid='@@'/></query>",
    ] {
        h.send(a1, format!("<iq type='set' id='bad'>{bad}</iq>"));
        let r = h.stanza(a1);
        assert_eq!(r.attr("type"), Some("error"), "{bad}");
    }
    h.send(a1, "<iq type='set' id='r4'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>");
    let push = h
        .stanzas(a2)
        .into_iter()
        .find(|e| e.attr("type") == Some("set"))
        .unwrap();
    assert_eq!(
        push.child(ns::ROSTER, "query")
            .unwrap()
            .child(ns::ROSTER, "item")
            .unwrap()
            .attr("subscription"),
        Some("remove")
    );
    assert!(h.roster_of("alice").is_empty());
}

#[test]
fn subscription_handshake_and_presence_flow() {
    let mut h = fixture_plain();
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "r");
    for id in [a, b] {
        h.send(
            id,
            "<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>",
        );
        h.send(id, "<presence/>");
    }
    h.stanzas(a);
    h.stanzas(b);
    h.send(a, "<presence to='bob@localhost' type='subscribe'/>");
    let req = h
        .stanzas(b)
        .into_iter()
        .find(|e| e.name == "presence")
        .expect("request delivered");
    assert_eq!(
        (req.attr("from"), req.attr("type")),
        (Some("alice@localhost"), Some("subscribe"))
    );
    let push = h.stanzas(a).into_iter().find(|e| e.name == "iq").unwrap();
    assert_eq!(
        push.child(ns::ROSTER, "query")
            .unwrap()
            .child(ns::ROSTER, "item")
            .unwrap()
            .attr("ask"),
        Some("subscribe")
    );
    h.send(b, "<presence to='alice@localhost' type='subscribed'/>");
    let got = h.stanzas(a);
    assert!(got
        .iter()
        .any(|e| e.name == "presence" && e.attr("type") == Some("subscribed")));
    // Bob's presence flows to Alice now that she is subscribed, after the approval.
    let approval = got
        .iter()
        .position(|e| e.attr("type") == Some("subscribed"))
        .unwrap();
    let available = got
        .iter()
        .position(|e| {
            e.name == "presence"
                && e.attr("type").is_none()
                && e.attr("from") == Some("bob@localhost/r")
        })
        .expect("bob's presence");
    assert!(approval < available);
    h.send(
        b,
        "<presence><show>dnd</show><status>busy</status></presence>",
    );
    let p = h
        .stanzas(a)
        .into_iter()
        .find(|e| e.name == "presence")
        .unwrap();
    assert_eq!(p.child(ns::CLIENT, "status").unwrap().text(), "busy");
    // Alice's presence does not flow to Bob (he is not subscribed).
    h.stanzas(b);
    h.send(a, "<presence><status>hi</status></presence>");
    assert!(h.stanzas(b).iter().all(|e| e.name != "presence"));
    let state = |h: &Fixture, user: &str| {
        h.roster_of(user)
            .into_iter()
            .next()
            .unwrap()
            .subscription
            .as_str()
    };
    assert_eq!(state(&h, "alice"), "to");
    assert_eq!(state(&h, "bob"), "from");
    // Bob revokes: Alice gets unsubscribed and unavailable.
    h.send(b, "<presence to='alice@localhost' type='unsubscribed'/>");
    let got = h.stanzas(a);
    assert!(got.iter().any(|e| e.attr("type") == Some("unsubscribed")));
    assert!(got.iter().any(
        |e| e.attr("type") == Some("unavailable") && e.attr("from") == Some("bob@localhost/r")
    ));
    assert_eq!(state(&h, "alice"), "none");
}

#[test]
fn pending_request_reaches_an_offline_user_at_login_and_preapproval_answers() {
    let mut h = fixture_plain();
    let a = h.session("alice", "secret", "r");
    h.send(a, "<presence to='bob@localhost' type='subscribe'/>");
    let b = h.session("bob", "hunter2", "r");
    h.send(b, "<presence/>");
    let got = h.stanzas(b);
    assert!(got
        .iter()
        .any(|e| e.attr("type") == Some("subscribe") && e.attr("from") == Some("alice@localhost")));
    // Pre-approval: Bob approves Carol before she asks; the server answers for him.
    h.store.add_account("carol", "pw");
    h.send(b, "<presence to='carol@localhost' type='subscribed'/>");
    let c = h.session("carol", "pw", "r");
    // Holding the roster: gets the answers to her requests (RFC 6121 3.1.6).
    h.send(
        c,
        "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
    );
    h.send(c, "<presence to='bob@localhost' type='subscribe'/>");
    assert!(h
        .stanzas(b)
        .iter()
        .all(|e| e.attr("type") != Some("subscribe")));
    assert!(h
        .stanzas(c)
        .iter()
        .all(|e| e.name != "presence" || e.attr("type") != Some("error")));
    let carol = h.roster_of("carol");
    assert_eq!(carol[0].subscription.as_str(), "to");
    // A request to a missing account is answered `unsubscribed`.
    h.send(c, "<presence/>");
    h.stanzas(c);
    h.send(c, "<presence to='nobody@localhost' type='subscribe'/>");
    assert!(h
        .stanzas(c)
        .iter()
        .any(|e| e.attr("type") == Some("unsubscribed")
            && e.attr("from") == Some("nobody@localhost")));
}

#[test]
fn offline_messages_are_stored_and_delivered_once_with_delay() {
    let mut h = fixture_plain();
    let a = h.session("alice", "secret", "r");
    h.send(
        a,
        "<message to='bob@localhost' type='chat' id='m1'><body>one</body></message>",
    );
    h.advance(Duration::from_secs(5));
    h.send(
        a,
        "<message to='bob@localhost/gone' type='chat' id='m2'><body>two</body></message>",
    );
    // Chat states alone and headlines are not stored; no error either.
    h.send(a, "<message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>");
    h.send(
        a,
        "<message to='bob@localhost' type='headline'><body>news</body></message>",
    );
    assert_eq!(h.store.offline.len(), 2);
    assert!(h.stanzas(a).is_empty(), "no error for stored messages");
    let b = h.session("bob", "hunter2", "r");
    assert!(
        h.stanzas(b).iter().all(|e| e.name != "message"),
        "nothing before initial presence"
    );
    h.send(b, "<presence/>");
    let msgs: Vec<Element> = h
        .stanzas(b)
        .into_iter()
        .filter(|e| e.name == "message")
        .collect();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].child(ns::CLIENT, "body").unwrap().text(), "one");
    assert_eq!(msgs[1].child(ns::CLIENT, "body").unwrap().text(), "two");
    let delay = msgs[0].child(ns::DELAY, "delay").unwrap();
    assert_eq!(delay.attr("stamp"), Some("2027-01-15T08:00:00Z"));
    assert_eq!(
        msgs[1].child(ns::DELAY, "delay").unwrap().attr("stamp"),
        Some("2027-01-15T08:00:05Z")
    );
    assert_eq!(msgs[0].attr("from"), Some("alice@localhost/r"));
    assert!(h.store.offline.is_empty(), "deleted after delivery");
    let b2 = h.session("bob", "hunter2", "again");
    h.send(b2, "<presence/>");
    assert!(
        h.stanzas(b2).iter().all(|e| e.name != "message"),
        "no duplicates"
    );
}

#[test]
fn offline_quota_unknown_users_and_expiry() {
    let mut h = fixture(Config {
        require_tls: false,
        offline_quota: 2,
        ..Config::default()
    });
    let a = h.session("alice", "secret", "r");
    for i in 0..3 {
        h.send(
            a,
            format!("<message to='bob@localhost' type='chat' id='q{i}'><body>{i}</body></message>"),
        );
    }
    let errors: Vec<Element> = h
        .stanzas(a)
        .into_iter()
        .filter(|e| e.attr("type") == Some("error"))
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].attr("id"), Some("q2"));
    assert_eq!(iq_error(&errors[0]).as_deref(), Some("service-unavailable"));
    h.send(
        a,
        "<message to='nobody@localhost' type='chat' id='u'><body>?</body></message>",
    );
    let e = h.stanza(a);
    assert_eq!(
        (e.attr("id"), iq_error(&e).as_deref()),
        (Some("u"), Some("service-unavailable"))
    );
    // Hourly maintenance expires messages older than offline_expiry.
    h.advance(Duration::from_secs(8 * 24 * 3600));
    h.advance(Duration::from_secs(3600));
    assert!(h.store.offline.is_empty());
}

#[test]
fn blocking_command_and_enforcement() {
    let mut h = fixture_plain();
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "r");
    let b2 = h.session("bob", "hunter2", "r2");
    for id in [a, b, b2] {
        h.send(id, "<presence/>");
    }
    h.send(
        b2,
        "<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
    );
    h.stanzas(b);
    h.stanzas(b2);
    h.send(b, "<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>");
    assert_eq!(h.stanza(b).attr("type"), Some("result"));
    let push = h
        .stanzas(b2)
        .into_iter()
        .find(|e| e.name == "iq")
        .expect("blocking push");
    assert!(push.child(ns::BLOCKING, "block").is_some());
    h.stanzas(a);
    h.send(
        a,
        "<message to='bob@localhost' type='chat' id='x'><body>hi</body></message>",
    );
    assert!(h.stanzas(b).iter().all(|e| e.name != "message"));
    assert_eq!(
        iq_error(&h.stanza(a)).as_deref(),
        Some("service-unavailable")
    );
    // Bob writing to Alice gets not-acceptable with <blocked/>.
    h.send(
        b,
        "<message to='alice@localhost' type='chat' id='y'><body>hi</body></message>",
    );
    let e = h.stanza(b);
    assert_eq!(iq_error(&e).as_deref(), Some("not-acceptable"));
    assert!(e
        .child(ns::CLIENT, "error")
        .unwrap()
        .child(ns::BLOCKING_ERRORS, "blocked")
        .is_some());
    h.send(
        b,
        "<iq type='get' id='bl2'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
    );
    let list = h.stanza(b);
    assert_eq!(
        list.child(ns::BLOCKING, "blocklist")
            .unwrap()
            .child(ns::BLOCKING, "item")
            .unwrap()
            .attr("jid"),
        Some("alice@localhost")
    );
    h.send(
        b,
        "<iq type='set' id='ub'><unblock xmlns='urn:xmpp:blocking'/></iq>",
    );
    h.stanzas(b);
    h.send(
        a,
        "<message to='bob@localhost' type='chat' id='z'><body>again</body></message>",
    );
    assert!(h.stanzas(b).iter().any(|e| e.name == "message"));
    assert_eq!(h.store.data["bob"].blocklist.len(), 0);
}

#[test]
fn vcard_last_activity_time_and_server_pings() {
    let mut h = fixture_plain();
    let a = h.session("alice", "secret", "r");
    h.send(a, "<iq type='get' id='v0'><vCard xmlns='vcard-temp'/></iq>");
    assert!(
        h.stanza(a).child(ns::VCARD, "vCard").is_some(),
        "empty own vCard"
    );
    h.send(
        a,
        "<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice A.</FN></vCard></iq>",
    );
    assert_eq!(h.stanza(a).attr("type"), Some("result"));
    let b = h.session("bob", "hunter2", "r");
    h.send(
        b,
        "<iq type='get' id='v2' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>",
    );
    let r = h.stanza(b);
    assert_eq!(r.attr("from"), Some("alice@localhost"));
    assert_eq!(
        r.child(ns::VCARD, "vCard")
            .unwrap()
            .child(ns::VCARD, "FN")
            .unwrap()
            .text(),
        "Alice A."
    );
    h.send(
        b,
        "<iq type='get' id='t' to='localhost'><time xmlns='urn:xmpp:time'/></iq>",
    );
    let r = h.stanza(b);
    assert_eq!(
        r.child(ns::TIME, "time")
            .unwrap()
            .child(ns::TIME, "utc")
            .unwrap()
            .text(),
        "2027-01-15T08:00:00Z"
    );
    // Last activity of a contact needs a subscription.
    h.send(
        b,
        "<iq type='get' id='l' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>",
    );
    assert_eq!(iq_error(&h.stanza(b)).as_deref(), Some("forbidden"));
    h.send(
        b,
        "<iq type='get' id='l2' to='localhost'><query xmlns='jabber:iq:last'/></iq>",
    );
    assert!(h
        .stanza(b)
        .child(ns::LAST, "query")
        .unwrap()
        .attr("seconds")
        .is_some());
    // Server pings after ping_interval of silence, and closes after ping_timeout.
    h.stanzas(a);
    h.stanzas(b);
    h.advance(Duration::from_secs(241));
    assert!(h
        .stanzas(b)
        .iter()
        .any(|e| e.child(ns::PING, "ping").is_some()));
    let ping = h
        .stanzas(a)
        .into_iter()
        .find(|e| e.name == "iq")
        .expect("a ping");
    assert!(ping.child(ns::PING, "ping").is_some());
    h.send(
        a,
        format!(
            "<iq type='result' id='{}' to='localhost'/>",
            ping.attr("id").unwrap()
        ),
    );
    h.advance(Duration::from_secs(91));
    assert!(!h.is_closed(a), "answered the ping");
    h.expect_stream_error(b, XE::ConnectionTimeout);
    // Alice's logout records her last activity.
    h.server.handle_eof(h.now, a);
    h.pump();
    assert!(h.store.last.contains_key("alice"));
}

// --------------------------------------------------------------- proptests

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Resource {
        available: bool,
        priority: i8,
    }

    fn resource() -> impl Strategy<Value = Resource> {
        (any::<bool>(), -2i8..=2).prop_map(|(available, priority)| Resource {
            available,
            priority,
        })
    }

    #[derive(Debug, Clone, Copy)]
    enum Target {
        Bare,
        Full(usize),
        MissingResource,
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            Just(Target::Bare),
            (0usize..3).prop_map(Target::Full),
            Just(Target::MissingResource)
        ]
    }

    fn mtype() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("chat"),
            Just("normal"),
            Just("headline"),
            Just("groupchat"),
            Just("error")
        ]
    }

    /// RFC 6121 8.5 as a model: (receiving resources, stored, error to sender).
    fn model(res: &[Resource], t: Target, ty: &str) -> (Vec<usize>, bool, bool) {
        let bare = |res: &[Resource]| -> (Vec<usize>, bool, bool) {
            if ty == "error" {
                return (vec![], false, false);
            }
            if ty == "groupchat" {
                return (vec![], false, true);
            }
            let mut targets: Vec<usize> = (0..res.len())
                .filter(|&i| res[i].available && res[i].priority >= 0)
                .collect();
            // Chat and normal: only the resources of the highest priority.
            if ty != "headline" {
                let top = targets.iter().map(|&i| res[i].priority).max();
                targets.retain(|&i| Some(res[i].priority) == top);
            }
            if !targets.is_empty() {
                (targets, false, false)
            } else if ty == "headline" {
                (vec![], false, false)
            } else {
                (vec![], true, false)
            }
        };
        match t {
            Target::Full(i) if i < res.len() => (vec![i], false, false),
            Target::Full(_) | Target::MissingResource => match ty {
                "chat" | "normal" => bare(res),
                "groupchat" => (vec![], false, true),
                _ => (vec![], false, false),
            },
            Target::Bare => bare(res),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn delivery_rules_match_the_model(
            res in proptest::collection::vec(resource(), 0..=3),
            msgs in proptest::collection::vec((target(), mtype()), 1..6),
        ) {
            let mut h = fixture_plain();
            let a = h.session("alice", "secret", "a");
            let mut bob = Vec::new();
            for (i, r) in res.iter().enumerate() {
                let id = h.session("bob", "hunter2", &format!("r{i}"));
                if r.available {
                    h.send(id, format!("<presence><priority>{}</priority></presence>", r.priority));
                }
                bob.push(id);
            }
            for id in bob.iter().chain([&a]) {
                h.stanzas(*id);
            }
            for (n, (t, ty)) in msgs.iter().enumerate() {
                let to = match t {
                    Target::Bare => "bob@localhost".to_owned(),
                    Target::Full(i) => format!("bob@localhost/r{i}"),
                    Target::MissingResource => "bob@localhost/none".to_owned(),
                };
                let stored_before = h.store.offline.len();
                h.send(a, format!("<message to='{to}' type='{ty}' id='m{n}'><body>b{n}</body></message>"));
                let (expect_to, expect_stored, expect_error) = model(&res, *t, ty);
                for (i, id) in bob.iter().enumerate() {
                    let got = h.stanzas(*id).into_iter().filter(|e| e.name == "message").count();
                    prop_assert_eq!(got, usize::from(expect_to.contains(&i)), "resource {} for {:?} {}", i, t, ty);
                }
                prop_assert_eq!(h.store.offline.len() > stored_before, expect_stored);
                let errors = h.stanzas(a).into_iter().filter(|e| e.attr("type") == Some("error")).count();
                prop_assert_eq!(errors, usize::from(expect_error));
            }
        }

        /// Every chat message ends delivered, stored or answered with an
        /// error, exactly once, whatever the recipient's situation.
        #[test]
        fn every_message_ends_exactly_once(
            targets in proptest::collection::vec(0usize..6, 1..12),
            bob_online in any::<bool>(),
        ) {
            let mut h = fixture_plain();
            h.store.add_account("carol", "pw");
            let a = h.session("alice", "secret", "a");
            let b = h.session("bob", "hunter2", "b");
            if bob_online {
                h.send(b, "<presence/>");
            }
            h.stanzas(a);
            h.stanzas(b);
            let names = ["bob@localhost", "bob@localhost/b", "carol@localhost", "dave@localhost", "x@remote.example", "localhost"];
            for (n, t) in targets.iter().enumerate() {
                let before = h.store.offline.len();
                h.send(a, format!("<message to='{}' type='chat' id='m{n}'><body>{n}</body></message>", names[*t]));
                let delivered = h.stanzas(b).into_iter().filter(|e| e.name == "message").count();
                let stored = h.store.offline.len() - before;
                let errors = h.stanzas(a).into_iter().filter(|e| e.attr("type") == Some("error") && e.attr("id") == Some(&format!("m{n}"))).count();
                prop_assert_eq!(delivered + stored + errors, 1, "to {}", names[*t]);
            }
        }

        /// The core's persisted subscription states follow the pure model
        /// of both ends (roster.rs) for any sequence of requests.
        #[test]
        fn subscriptions_through_the_core_follow_the_model(
            ops in proptest::collection::vec((any::<bool>(), 0usize..4), 1..10),
        ) {
            use crate::roster::{Subscription, SubscriptionType::*};
            let types = [Subscribe, Subscribed, Unsubscribe, Unsubscribed];
            let mut h = fixture_plain();
            let a = h.session("alice", "secret", "a");
            let b = h.session("bob", "hunter2", "b");
            let (mut ma, mut mb) = (Subscription::default(), Subscription::default());
            for (from_alice, t) in ops {
                let t = types[t];
                let (conn, to) = if from_alice { (a, "bob@localhost") } else { (b, "alice@localhost") };
                h.send(conn, format!("<presence to='{to}' type='{}'/>", t.as_str()));
                // The model: sender's outbound, receiver's inbound, auto-replies.
                let (me, peer) = if from_alice { (ma, mb) } else { (mb, ma) };
                let o = me.outbound(t);
                let (mut me2, mut peer2) = (o.state, peer);
                if o.route {
                    let i = peer.inbound(t);
                    peer2 = i.state;
                    if i.auto_subscribed {
                        me2 = me2.inbound(Subscribed).state;
                    }
                }
                if from_alice { (ma, mb) = (me2, peer2) } else { (mb, ma) = (me2, peer2) }
                let get = |h: &Fixture, user: &str| {
                    h.roster_of(user).into_iter().next().map(|i| i.subscription).unwrap_or_default()
                };
                prop_assert_eq!(get(&h, "alice"), ma);
                prop_assert_eq!(get(&h, "bob"), mb);
            }
        }
    }
}

#[test]
fn reconfigure_applies_policies_and_limits_to_what_comes_next_and_names_what_needs_a_restart() {
    let mut config = Config::default();
    config.kontalk.registration = false;
    let mut h = fixture(config);
    let old = h.connect_client(Listener::Starttls);
    let f = h.starttls(old);
    assert!(f.child(ns::REGISTER_FEATURE, "register").is_none());

    let mut new = Config {
        domain: "example.org".into(),
        allow_registration: true,
        offline_quota: 5,
        ..Config::default()
    };
    new.kontalk.registration = false;
    new.limits.max_connections = 2;
    new.limits.max_stanza_size = 20_000;
    new.limits.idle_timeout = Duration::from_secs(30);
    let done = h.server.reconfigure(new);
    assert_eq!(
        done.applied,
        [
            "allow_registration",
            "offline_quota",
            "limits.max_stanza_size",
            "limits.max_connections"
        ]
    );
    assert_eq!(done.restart, ["domain", "limits.idle_timeout"]);
    let running = h.server.config();
    assert_eq!(running.domain, "localhost");
    assert_eq!(running.limits.idle_timeout, Duration::from_secs(600));
    assert_eq!(running.offline_quota, 5);

    // A new stream is offered registration and told the new stanza size.
    let new_conn = h.connect_client(Listener::Starttls);
    let f = h.starttls(new_conn);
    assert!(f.child(ns::REGISTER_FEATURE, "register").is_some());
    let limits = f.child(ns::STREAM_LIMITS, "limits").unwrap();
    assert_eq!(
        limits.child(ns::STREAM_LIMITS, "max-bytes").unwrap().text(),
        "20000"
    );
    // The connection limit counts the two open ones: a third is refused.
    let third = h.connect_client(Listener::Starttls);
    assert!(matches!(h.next(third), StreamEvent::Header(_)));
    h.expect_stream_error(third, XE::ResourceConstraint);
    assert!(!h.is_closed(old) && !h.is_closed(new_conn));

    // A longer idle timeout applies; the same configuration again changes nothing.
    let mut longer = h.server.config().clone();
    longer.limits.idle_timeout = Duration::from_secs(900);
    let done = h.server.reconfigure(longer.clone());
    assert_eq!(done.applied, ["limits.idle_timeout"]);
    assert!(done.restart.is_empty());
    assert_eq!(h.server.reconfigure(longer), crate::Reconfigured::default());
}

// ------------------------------------------------------------------ limits

#[test]
fn connection_limits_total_and_per_address() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let mut h = fixture(Config {
        limits,
        ..Config::default()
    });
    let a = h.connect_client(Listener::Starttls);
    let b = h.connect_client(Listener::Starttls);
    let c = h.connect_client(Listener::Starttls);
    assert!(!h.is_closed(a) && !h.is_closed(b));
    assert!(matches!(h.next(c), StreamEvent::Header(_)));
    h.expect_stream_error(c, XE::ResourceConstraint);
    // A slot frees up when a connection closes.
    h.server.handle_eof(h.now, a);
    h.pump();
    let d = h.connect_client(Listener::Starttls);
    assert!(!h.is_closed(d));

    let limits = Limits {
        max_connections_per_ip: 2,
        ..Limits::default()
    };
    let mut h = fixture(Config {
        limits,
        ..Config::default()
    });
    h.connect_client(Listener::Starttls);
    h.connect_client(Listener::Starttls);
    let third = h.connect_client(Listener::Starttls);
    assert!(matches!(h.next(third), StreamEvent::Header(_)));
    h.expect_stream_error(third, XE::PolicyViolation);
}

#[test]
fn login_failures_per_address_are_throttled_then_refused() {
    let limits = Limits {
        max_auth_failures: 10,
        max_auth_failures_per_ip: 4,
        ..Limits::default()
    };
    let mut h = fixture(Config {
        require_tls: false,
        limits,
        ..Config::default()
    });
    let id = h.connect_client(Listener::Starttls);
    h.open(id);
    for _ in 0..2 {
        let r = h.scram(id, Mechanism::ScramSha1, "alice", "wrong");
        assert!(r.child(ns::SASL, "not-authorized").is_some());
    }
    // The third failure is answered only after a delay.
    let mut client = ScramClient::new(ScramHash::Sha1, "alice", "wrong", "n3", None);
    h.scram_exchange(id, "SCRAM-SHA-1", &mut client)
        .expect("a challenge");
    h.no_more(id);
    h.advance(Duration::from_secs(1));
    assert!(h.stanza(id).child(ns::SASL, "not-authorized").is_some());
    // The fourth reaches the limit: the stream ends.
    h.scram(id, Mechanism::ScramSha1, "alice", "wrong");
    h.advance(Duration::from_secs(5));
    assert!(h.is_closed(id));
    // A new connection from the same address is refused at once, even with the right password.
    let id = h.connect_client(Listener::Starttls);
    h.open(id);
    let r = h.scram(id, Mechanism::ScramSha1, "alice", "secret");
    assert!(r.child(ns::SASL, "temporary-auth-failure").is_some());
    h.expect_stream_error(id, XE::PolicyViolation);
    // After the window, logins work again.
    h.advance(Duration::from_secs(601));
    let id = h.connect_client(Listener::Starttls);
    h.open(id);
    assert!(h
        .scram(id, Mechanism::ScramSha1, "alice", "secret")
        .is(ns::SASL, "success"));
}

#[test]
fn stanza_rate_slows_reading_and_only_an_unread_flood_is_refused() {
    let limits = Limits {
        stanzas_per_second: 5,
        ..Limits::default()
    };
    let mut h = fixture(Config {
        require_tls: false,
        limits,
        ..Config::default()
    });
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "r");
    h.send(b, "<presence/>");
    h.advance(Duration::from_secs(2));
    h.stanzas(b);
    // A burst of twice the rate passes, the next ones wait for tokens.
    for i in 0..15 {
        h.send(
            a,
            format!("<message to='bob@localhost' type='chat'><body>{i}</body></message>"),
        );
    }
    assert_eq!(h.stanzas(b).len(), 10);
    assert!(!h.server.wants_read(a), "not read while stanzas wait");
    assert!(h.resumed.is_empty());
    h.advance(Duration::from_secs(1));
    assert!(h.server.wants_read(a), "read again once they are handled");
    assert_eq!(h.resumed, [a], "and the runtime is told");
    let later: Vec<String> = h
        .stanzas(b)
        .iter()
        .map(|m| m.child(ns::CLIENT, "body").unwrap().text())
        .collect();
    assert_eq!(
        later,
        ["10", "11", "12", "13", "14"],
        "in order, after waiting"
    );
    // More stanzas in one read than a burst and the slack: a caller that
    // does not stop reading; the stream ends.
    let flood = "<message to='bob@localhost'/>".repeat(10 + crate::guard::BACKLOG_SLACK + 1);
    h.send(a, flood);
    assert!(h.is_closed(a));
    assert!(!h.is_closed(b), "the others are not disturbed");
}

#[test]
fn a_burst_of_messages_is_slowed_down_and_all_delivered() {
    let limits = Limits {
        stanzas_per_second: 100,
        ..Limits::default()
    };
    let mut h = fixture(Config {
        require_tls: false,
        limits,
        ..Config::default()
    });
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "r");
    h.send(b, "<presence/>");
    h.advance(Duration::from_secs(2));
    h.stanzas(b);
    // 2,200 messages written at once, read 16 KiB at a time as the
    // runtimes do, and only while the core wants to read.
    let wire: String = (0..2200)
        .map(|i| format!("<message to='bob@localhost' type='chat'><body>{i}</body></message>"))
        .collect();
    let mut rest = wire.as_bytes();
    let mut bodies = Vec::new();
    let mut waited = 0;
    while !rest.is_empty() || bodies.len() < 2200 {
        if !rest.is_empty() && h.server.wants_read(a) {
            let n = rest.len().min(16 * 1024);
            h.send(a, &rest[..n]);
            rest = &rest[n..];
        } else {
            h.advance(Duration::from_millis(100));
            waited += 1;
            assert!(waited < 600, "stalled at {}", bodies.len());
        }
        bodies.extend(
            h.stanzas(b)
                .iter()
                .map(|m| m.child(ns::CLIENT, "body").unwrap().text()),
        );
        assert!(
            !h.is_closed(a),
            "the burst ended the stream at {}",
            bodies.len()
        );
    }
    let expected: Vec<String> = (0..2200).map(|i| i.to_string()).collect();
    assert_eq!(bodies, expected, "every message, once, in order");
}

#[test]
fn address_states_are_forgotten_after_their_window() {
    let mut h = fixture_plain();
    let id = h.connect_client(Listener::Starttls);
    h.open(id);
    h.scram(id, Mechanism::ScramSha1, "alice", "wrong");
    h.server.handle_eof(h.now, id);
    h.pump();
    assert_eq!(h.server.guard.tracked(), 1, "the failure is remembered");
    h.advance(Duration::from_secs(3601));
    assert!(
        h.server.guard.tracked() == 0,
        "and forgotten after the window"
    );
}

/// The timer queue holds each connection once, under its earliest deadline
/// (the clock's origin needs a real `Instant`, so this lives with the tests).
mod timers {
    use std::time::{Duration, Instant};

    use crate::server::ConnId;
    use crate::timer::{ConnTimers, TimerKind, Timers};

    #[test]
    fn a_connection_is_queued_under_its_earliest_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut timers = Timers::default();
        let mut a = ConnTimers::default();
        a.set(TimerKind::Idle, Some(t0 + s(600)));
        a.set(TimerKind::Keepalive, Some(t0 + s(60)));
        timers.schedule(ConnId(1), &mut a);
        assert_eq!(timers.next(), Some(t0 + s(60)));
        assert_eq!(timers.pop_due(t0 + s(59)), None);
        assert_eq!(timers.pop_due(t0 + s(60)), Some(ConnId(1)));
        a.unqueued();
        assert!(!a.take_due(TimerKind::Idle, t0 + s(60)));
        assert!(a.take_due(TimerKind::Keepalive, t0 + s(60)));
        assert!(!a.take_due(TimerKind::Keepalive, t0 + s(60)), "cleared");
        timers.schedule(ConnId(1), &mut a);
        assert_eq!(timers.next(), Some(t0 + s(600)));
        timers.remove(ConnId(1), &a);
        assert_eq!(timers.next(), None);
    }
}

// ------------------------------------------------------------- admin, metrics

fn jid(s: &str) -> jid::Jid {
    jid::Jid::new(s).unwrap()
}

#[test]
fn sessions_are_listed_with_address_listener_tls_and_bind_time() {
    let mut h = fixture(Config::default());
    h.server.handle_wall_clock(h.now, 1_800_000_000);
    let a = h.login_tls("alice", "secret", "phone");
    h.advance(Duration::from_secs(3));
    let b = h.login_tls("bob", "hunter2", "pc");
    h.send(
        b,
        "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
    );
    // Authenticated but not bound: no session yet.
    let c = h.connect_client(Listener::Starttls);
    h.open(c);
    let list = h.server.sessions();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0].conn, a);
    assert_eq!(list[0].jid, "alice@localhost/phone");
    assert_eq!(list[0].address, core::net::IpAddr::from([127, 0, 0, 1]));
    assert_eq!(list[0].listener, Listener::Starttls);
    assert!(list[0].tls && list[0].available && !list[0].roster);
    assert_eq!(list[0].since, Some(1_800_000_000));
    assert_eq!(list[1].jid, "bob@localhost/pc");
    assert_eq!(list[1].since, Some(1_800_000_003));
    assert!(list[1].roster);
}

#[test]
fn kick_ends_one_resource_or_every_resource_of_a_bare_jid() {
    let mut h = fixture(Config::default());
    let a1 = h.login_tls("alice", "secret", "one");
    let a2 = h.login_tls("alice", "secret", "two");
    let b = h.login_tls("bob", "hunter2", "pc");
    h.drain(a1);
    h.drain(a2);
    h.drain(b);
    let now = h.now;
    assert_eq!(h.server.kick(now, &jid("alice@localhost/two")), 1);
    h.pump();
    h.expect_stream_error(a2, XE::PolicyViolation);
    assert!(String::from_utf8_lossy(&h.received[&a2]).contains("kicked by the administrator"));
    assert!(!h.is_closed(a1));
    assert_eq!(h.server.kick(now, &jid("alice@localhost/nope")), 0);
    assert_eq!(h.server.kick(now, &jid("carol@localhost")), 0);
    h.drain(a1);
    assert_eq!(h.server.kick(now, &jid("alice@localhost")), 1);
    h.pump();
    h.expect_stream_error(a1, XE::PolicyViolation);
    assert!(!h.is_closed(b));
    assert_eq!(h.server.session_count(), 1);
}

#[test]
fn ending_a_deleted_account_closes_its_streams_and_later_messages_bounce() {
    let mut h = fixture(Config::default());
    let a = h.login_tls("alice", "secret", "phone");
    // Authenticated, not bound yet: ended too.
    let a2 = h.connect_client(Listener::Starttls);
    h.starttls(a2);
    assert!(h
        .scram(a2, Mechanism::ScramSha256Plus, "alice", "secret")
        .is(ns::SASL, "success"));
    let b = h.login_tls("bob", "hunter2", "pc");
    h.drain(a);
    h.drain(b);
    let now = h.now;
    let bare = jid::BareJid::new("alice@localhost").unwrap();
    assert_eq!(h.server.end_account(now, &bare), 2);
    h.pump();
    h.expect_stream_error(a, XE::NotAuthorized);
    assert!(String::from_utf8_lossy(&h.received[&a]).contains("Account deleted"));
    assert!(h.is_closed(a2));
    // The host deletes it in the store once the core is drained.
    assert_eq!(
        h.store.answer(&crate::store::StoreRequest::DeleteAccount {
            username: "alice".into()
        }),
        StoreReply::Done(true)
    );
    h.send(
        b,
        "<message to='alice@localhost' type='chat' id='x'><body>hi</body></message>",
    );
    let err = h.stanza(b);
    assert_eq!(err.attr("type"), Some("error"));
    assert!(err
        .child(ns::CLIENT, "error")
        .unwrap()
        .child(ns::STANZAS, "service-unavailable")
        .is_some());
    assert!(
        h.store.offline.is_empty(),
        "nothing stored for a deleted account"
    );
    assert_eq!(h.server.end_account(now, &bare), 0);
}

#[test]
fn clearing_lockouts_lets_an_address_log_in_again() {
    let limits = Limits {
        max_auth_failures: 10,
        max_auth_failures_per_ip: 2,
        ..Limits::default()
    };
    let mut h = fixture(Config {
        require_tls: false,
        limits,
        ..Config::default()
    });
    assert!(h.server.clear_lockouts(None).is_empty());
    let id = h.connect_client(Listener::Starttls);
    h.open(id);
    h.scram(id, Mechanism::ScramSha1, "alice", "wrong");
    h.scram(id, Mechanism::ScramSha1, "alice", "wrong");
    h.advance(Duration::from_secs(5));
    assert!(h.is_closed(id));
    let id = h.connect_client(Listener::Starttls);
    h.open(id);
    let r = h.scram(id, Mechanism::ScramSha1, "alice", "secret");
    assert!(r.child(ns::SASL, "temporary-auth-failure").is_some());
    let other = core::net::IpAddr::from([192, 0, 2, 1]);
    assert!(h.server.clear_lockouts(Some(other)).is_empty());
    let cleared = h.server.clear_lockouts(Some([127, 0, 0, 1].into()));
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].failures, 2);
    assert!(cleared[0].locked_out);
    assert!(h.server.clear_lockouts(None).is_empty(), "nothing left");
    let id = h.connect_client(Listener::Starttls);
    h.open(id);
    assert!(h
        .scram(id, Mechanism::ScramSha1, "alice", "secret")
        .is(ns::SASL, "success"));
    assert_eq!(h.server.counters().login_failures, 2);
    assert_eq!(h.server.counters().logins_refused, 1);
    assert_eq!(h.server.counters().logins, 1);
}

#[test]
fn counters_move_with_logins_stanzas_bytes_and_offline_storage() {
    let mut h = fixture_plain();
    assert_eq!(*h.server.counters(), crate::metrics::Counters::default());
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "r");
    h.send(b, "<presence/>");
    h.drain(a);
    h.drain(b);
    let before = *h.server.counters();
    assert_eq!(before.logins, 2);
    assert_eq!(before.connections_accepted, 2);
    assert_eq!(before.stanzas_in.iq, 2, "the two binds");
    assert_eq!(before.stanzas_in.presence, 1);
    assert!(before.bytes_in > 0 && before.bytes_out > 0);
    for i in 0..3 {
        h.send(
            a,
            format!("<message to='bob@localhost' type='chat'><body>{i}</body></message>"),
        );
    }
    h.send(
        a,
        "<message to='bob@localhost/r' type='chat'><body>full</body></message>",
    );
    // To an offline account: stored.
    h.send(
        a,
        "<message to='carol@localhost' type='chat'><body>x</body></message>",
    );
    h.store.add_account("dave", "pw");
    h.send(
        a,
        "<message to='dave@localhost' type='chat'><body>later</body></message>",
    );
    assert_eq!(h.stanzas(b).len(), 4);
    let after = *h.server.counters();
    assert_eq!(after.stanzas_in.message - before.stanzas_in.message, 6);
    // Four to bob, one error back to alice for carol.
    assert_eq!(after.stanzas_out.message - before.stanzas_out.message, 5);
    assert_eq!(after.offline_stored, 1);
    assert!(after.bytes_in > before.bytes_in && after.bytes_out > before.bytes_out);
    assert_eq!(h.server.pending_store_requests(), 0);
    assert_eq!(h.server.pending_output_bytes(), 0);
}

#[test]
fn a_number_registered_on_another_server_of_the_network_is_a_conflict_without_force() {
    let mut h = fixture(Config {
        net: Some(crate::testing::test_network(
            "zeta.localhost",
            "prime.localhost",
            [0; 32],
        )),
        ..Config::default()
    });
    let user = "4bdd4f929f3a1062253e4e496bafba0bdfb5db75";
    h.store
        .directory
        .insert(("prime.localhost".into(), user.into()));
    h.pump();
    assert_eq!(h.server.net_home(user), Some("prime.localhost"));
    let id = h.connect_client(Listener::Starttls);
    h.starttls(id);
    let phone = |n: u32, force: bool| {
        let force = if force {
            "<field var='force' type='boolean'><value>true</value></field>"
        } else {
            ""
        };
        format!(
            "<iq type='set' id='p{n}'><query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>jabber:iq:register</value></field>\
             <field var='phone' type='text-single'><value>+15555215554</value></field>{force}</x></query></iq>"
        )
    };
    h.send(id, phone(1, false));
    let reply = h.stanza(id);
    let error = reply.child(ns::CLIENT, "error").expect("an error");
    assert_eq!(
        (
            error.attr("type"),
            error.elements().next().map(|e| e.name.as_str())
        ),
        (Some("modify"), Some("conflict"))
    );
    assert!(h.sent_codes.is_empty(), "no code for it");
    // With force, as the client offers: the code goes out.
    h.send(id, phone(2, true));
    let reply = h.stanza(id);
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    assert_eq!(h.sent_codes.len(), 1);
}
