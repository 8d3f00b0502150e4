//! Stream management (XEP-0198): acks both ways, what is deleted when,
//! resumption, and what happens to what was never acknowledged.

use std::time::Duration;

use super::tests::fixture;
use crate::error::StreamErrorCondition as XE;
use crate::ns;
use crate::sasl::Mechanism;
use crate::store::StoreRequest;
use crate::testing::Fixture;
use crate::xml::Element;
use crate::ConnId;

/// Bob's phone with stream management enabled (resumable when `resume`);
/// returns the connection and the resumption id.
fn phone(h: &mut Fixture, resume: bool) -> (ConnId, Option<String>) {
    let b = h.session("bob", "hunter2", "phone");
    let attr = if resume { " resume='true'" } else { "" };
    h.send(b, format!("<enable xmlns='urn:xmpp:sm:3'{attr}/>"));
    let enabled = h.stanza(b);
    assert!(enabled.is(ns::SM, "enabled"), "{enabled:?}");
    (b, enabled.attr("id").map(str::to_owned))
}

fn chat(h: &mut Fixture, from: ConnId, to: &str, body: &str) {
    h.send(
        from,
        format!("<message to='{to}' type='chat'><body>{body}</body></message>"),
    );
}

fn bodies(els: &[Element]) -> Vec<String> {
    els.iter()
        .filter(|e| e.name == "message")
        .filter_map(|m| m.child(ns::CLIENT, "body"))
        .map(|b| b.text())
        .collect()
}

fn stored_bodies(h: &Fixture) -> Vec<String> {
    h.store
        .offline
        .iter()
        .map(|(_, m)| {
            let s = &m.stanza;
            let a = s.find("<body>").unwrap() + 6;
            s[a..s.find("</body>").unwrap()].to_owned()
        })
        .collect()
}

#[test]
fn acks_count_handled_stanzas_and_the_server_asks_now_and_then() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let (b, _) = phone(&mut h, false);
    h.send(b, "<r xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(h.stanza(b).attr("h"), Some("0"));
    h.send(b, "<presence/>");
    chat(&mut h, b, "alice@localhost/r", "one");
    h.stanzas(b);
    h.send(b, "<r xmlns='urn:xmpp:sm:3'/>");
    assert_eq!(h.stanza(b).attr("h"), Some("2"));
    // Eight stanzas to bob: the server asks for an ack.
    for i in 0..8 {
        chat(&mut h, a, "bob@localhost/phone", &i.to_string());
    }
    let got = h.stanzas(b);
    assert!(got.iter().any(|e| e.is(ns::SM, "r")), "{got:?}");
    // An h beyond what was sent ends the stream.
    h.send(b, "<a xmlns='urn:xmpp:sm:3' h='99'/>");
    h.expect_stream_error(b, XE::UndefinedCondition);
}

#[test]
fn an_ack_waits_until_what_the_stanzas_stored_is_durable() {
    let mut h = fixture();
    let (b, _) = phone(&mut h, false);
    h.hold_store();
    // Alice is offline: the message is stored.
    chat(&mut h, b, "alice@localhost", "for later");
    h.send(b, "<r xmlns='urn:xmpp:sm:3'/>");
    assert!(h.stanzas(b).is_empty(), "no ack before the store answered");
    for (token, req) in h.release_store() {
        let reply = h.store.answer(&req);
        h.server.handle_store_reply(h.now, token, reply);
    }
    h.pump();
    let got = h.stanzas(b);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].attr("h"), Some("1"));
    assert_eq!(stored_bodies(&h), ["for later"]);
}

/// Found by the delivery model (delivery_model_tests.rs): the message
/// waits for bob's data to load and asks to be stored only once it has,
/// after the barrier of the `<r/>` was sent; the ack must wait for that
/// request too.
#[test]
fn an_ack_waits_for_the_storage_of_a_message_that_waited_for_its_recipients_data() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    h.send(a, "<enable xmlns='urn:xmpp:sm:3'/>");
    assert!(h.stanza(a).is(ns::SM, "enabled"));
    h.hold_store();
    // Bob is offline and not in memory: the message waits for his data.
    chat(&mut h, a, "bob@localhost", "for later");
    h.send(a, "<r xmlns='urn:xmpp:sm:3'/>");
    assert!(h.stanzas(a).is_empty(), "no ack before the store answered");
    // The store answers in order, one request at a time (holding those
    // the answers lead to); the ack must not come before the message is
    // stored.
    let mut acked = false;
    loop {
        let held = h.release_store();
        h.hold_store();
        if held.is_empty() {
            break;
        }
        for (token, req) in held {
            let reply = h.store.answer(&req);
            h.server.handle_store_reply(h.now, token, reply);
            h.pump();
            for el in h.stanzas(a) {
                if el.is(ns::SM, "a") {
                    assert_eq!(el.attr("h"), Some("1"));
                    assert_eq!(stored_bodies(&h), ["for later"], "acked before stored");
                    acked = true;
                }
            }
        }
    }
    assert!(acked, "the ack came once the store answered");
}

#[test]
fn offline_messages_are_deleted_once_acknowledged_and_redelivered_if_not() {
    let mut h = fixture();
    for body in ["m1", "m2"] {
        h.store.answer(&StoreRequest::StoreOffline {
            username: "bob".into(),
            stanza: format!("<message xmlns='jabber:client' from='alice@localhost/r' to='bob@localhost' type='chat'><body>{body}</body></message>"),
            stamp: 1_800_000_000,
            quota: 100,
            archive: None,
            key: None,
            inbox: None,
        });
    }
    let (b, _) = phone(&mut h, false);
    h.send(b, "<presence/>");
    let got = h.stanzas(b);
    assert_eq!(bodies(&got), ["m1", "m2"]);
    assert_eq!(h.store.offline.len(), 2, "taken, not acknowledged: kept");
    // The first is acknowledged (the presence echo may come first: count it).
    let before_m1 = got
        .iter()
        .take_while(|e| e.name != "message")
        .filter(|e| ["message", "presence", "iq"].contains(&e.name.as_str()))
        .count();
    h.send(
        b,
        format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", before_m1 + 1),
    );
    assert_eq!(stored_bodies(&h), ["m2"], "m1 deleted once acknowledged");
    // The connection drops (no resumption): m2 stays stored and comes again.
    h.server.handle_eof(h.now, b);
    h.pump();
    assert_eq!(stored_bodies(&h), ["m2"]);
    let b = h.session("bob", "hunter2", "phone");
    h.send(b, "<presence/>");
    assert_eq!(bodies(&h.stanzas(b)), ["m2"]);
}

#[test]
fn unacknowledged_messages_of_a_session_that_ends_go_to_offline_storage() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let (b, _) = phone(&mut h, false);
    h.send(b, "<presence/>");
    h.stanzas(b);
    chat(&mut h, a, "bob@localhost/phone", "unseen");
    assert_eq!(bodies(&h.stanzas(b)), ["unseen"], "taken by the runtime");
    h.server.handle_eof(h.now, b);
    h.pump();
    assert_eq!(stored_bodies(&h), ["unseen"], "never acknowledged: stored");
}

#[test]
fn a_dropped_connection_is_resumed_with_nothing_lost_or_doubled() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let (b, id) = phone(&mut h, true);
    let id = id.expect("resumable");
    h.send(b, "<presence/>");
    // Its own presence back (RFC 6121 4.2.2), counted by the server.
    let echoed = h.stanzas(b).len();
    assert_eq!(echoed, 1);
    h.send(b, "<a xmlns='urn:xmpp:sm:3' h='0'/>");
    let before = h.stanzas(b).len();
    assert_eq!(before, 0);
    chat(&mut h, a, "bob@localhost/phone", "m1");
    chat(&mut h, a, "bob@localhost/phone", "m2");
    let got = h.stanzas(b);
    assert_eq!(bodies(&got), ["m1", "m2"]);
    // Stored until bob acknowledges them (a restart would not lose them).
    assert_eq!(stored_bodies(&h), ["m1", "m2"]);
    // What bob had counted so far: its own presence echo and m1.
    let counted_m1 = echoed
        + got
            .iter()
            .position(|e| e.name == "message")
            .map(|p| p + 1)
            .unwrap();
    h.send(b, format!("<a xmlns='urn:xmpp:sm:3' h='{counted_m1}'/>"));
    assert_eq!(stored_bodies(&h), ["m2"], "m1 acknowledged: deleted");
    // The connection drops; alice writes while bob is away.
    h.server.handle_eof(h.now, b);
    h.pump();
    assert!(h.is_closed(b));
    chat(&mut h, a, "bob@localhost/phone", "m3");
    assert_eq!(
        stored_bodies(&h),
        ["m2", "m3"],
        "kept for the resumption, and stored until acknowledged"
    );
    assert!(
        !bodies(&h.stanzas(a)).iter().any(|_| true),
        "alice gets no error"
    );
    // A new connection resumes.
    let b2 = h.connect_client(crate::Listener::Starttls);
    h.open(b2);
    assert!(h
        .scram(b2, Mechanism::ScramSha1, "bob", "hunter2")
        .is(ns::SASL, "success"));
    let f = h.open(b2);
    assert!(f.child(ns::SM, "sm").is_some(), "{f:?}");
    h.send(
        b2,
        format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='{counted_m1}'/>"),
    );
    let got = h.stanzas(b2);
    assert!(got[0].is(ns::SM, "resumed"), "{got:?}");
    assert_eq!(got[0].attr("h"), Some("1"), "bob's presence was handled");
    assert_eq!(
        bodies(&got),
        ["m2", "m3"],
        "the unacknowledged, once, in order"
    );
    // The resumed session is bob/phone again.
    chat(&mut h, a, "bob@localhost/phone", "m4");
    assert_eq!(bodies(&h.stanzas(b2)), ["m4"]);
    // An unknown id fails.
    let b3 = h.connect_client(crate::Listener::Starttls);
    h.open(b3);
    h.scram(b3, Mechanism::ScramSha1, "bob", "hunter2");
    h.open(b3);
    h.send(b3, "<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>");
    let failed = h.stanza(b3);
    assert!(failed.is(ns::SM, "failed"));
    assert!(failed.child(ns::STANZAS, "item-not-found").is_some());
}

#[test]
fn a_session_not_resumed_in_time_ends_and_stores_what_it_kept() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    h.send(a, "<presence/>");
    let (b, _) = phone(&mut h, true);
    h.send(b, "<presence/>");
    h.stanzas(b);
    h.stanzas(a);
    chat(&mut h, a, "bob@localhost/phone", "before");
    h.server.handle_eof(h.now, b);
    h.pump();
    chat(&mut h, a, "bob@localhost/phone", "during");
    assert_eq!(
        stored_bodies(&h),
        ["before", "during"],
        "stored while in flight"
    );
    h.advance(Duration::from_secs(301));
    assert_eq!(stored_bodies(&h), ["before", "during"], "once each");
    // A direct presence subscription is not set up here; bob's resource is gone.
    h.send(
        a,
        "<iq type='get' id='p' to='bob@localhost/phone'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    let r = h
        .stanzas(a)
        .into_iter()
        .find(|e| e.attr("id") == Some("p"))
        .unwrap();
    assert_eq!(r.attr("type"), Some("error"));
}

#[test]
fn a_message_in_flight_survives_a_restart_and_comes_once() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let (b, _) = phone(&mut h, true);
    h.send(b, "<presence/>");
    h.stanzas(b);
    chat(&mut h, a, "bob@localhost", "in flight");
    assert_eq!(bodies(&h.stanzas(b)), ["in flight"]);
    // The server dies before bob acknowledges: a new one on the same store.
    let store = h.store.clone();
    let mut h = fixture();
    h.store = store;
    let (b, _) = phone(&mut h, false);
    h.send(b, "<presence/>");
    let got = h.stanzas(b);
    assert_eq!(bodies(&got), ["in flight"], "once, from storage");
    let m = got.iter().find(|e| e.name == "message").unwrap();
    assert!(
        m.child(ns::DELAY, "delay").is_some(),
        "with its delay stamp"
    );
    let n = got.len();
    h.send(b, format!("<a xmlns='urn:xmpp:sm:3' h='{n}'/>"));
    h.pump();
    assert!(h.store.offline.is_empty(), "deleted once acknowledged");
    // A second initial presence does not bring it back.
    h.send(b, "<presence type='unavailable'/><presence/>");
    assert!(bodies(&h.stanzas(b)).is_empty());
}

#[test]
fn a_message_in_flight_is_not_loaded_again_into_the_session_holding_it() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let (b, _) = phone(&mut h, false);
    chat(&mut h, a, "bob@localhost/phone", "held");
    assert_eq!(bodies(&h.stanzas(b)), ["held"]);
    // Initial presence loads offline storage, where the unacknowledged message is.
    h.send(b, "<presence/>");
    assert!(bodies(&h.stanzas(b)).is_empty(), "not twice to one session");
    assert_eq!(stored_bodies(&h), ["held"]);
}

#[test]
fn resumed_h_waits_until_what_the_stanzas_stored_is_durable() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "desk");
    h.send(a, "<enable xmlns='urn:xmpp:sm:3' resume='true'/>");
    let id = h.stanza(a).attr("id").expect("resumable").to_owned();
    h.drain(a);
    // Bob is offline: the message is stored; the store holds its answer.
    h.hold_store();
    chat(&mut h, a, "bob@localhost", "durable first");
    h.server.handle_eof(h.now, a);
    h.pump();
    let held = h.release_store();
    assert!(held.iter().any(|(_, r)| matches!(
        r,
        StoreRequest::StoreOffline { .. } | StoreRequest::LoadUser { .. }
    )));
    let a2 = h.connect_client(crate::Listener::Starttls);
    h.open(a2);
    assert!(h
        .scram(a2, Mechanism::ScramSha1, "alice", "secret")
        .is(ns::SASL, "success"));
    h.open(a2);
    h.hold_store();
    h.send(
        a2,
        format!("<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"),
    );
    assert!(
        h.stanzas(a2).is_empty(),
        "no <resumed h='1'/> while the message is not durable"
    );
    for (token, req) in held {
        let reply = h.reply(&req);
        h.server.handle_store_reply(h.now, token, reply);
    }
    loop {
        let more = h.release_store();
        h.hold_store();
        if more.is_empty() {
            break;
        }
        for (token, req) in more {
            let reply = h.reply(&req);
            h.server.handle_store_reply(h.now, token, reply);
        }
    }
    h.release_store();
    h.pump();
    let got = h.stanzas(a2);
    assert!(
        got.iter()
            .any(|e| e.is(ns::SM, "resumed") && e.attr("h") == Some("1")),
        "{got:?}"
    );
    assert_eq!(stored_bodies(&h), ["durable first"]);
}
