//! The message archive (XEP-0313): what is archived for whom, stanza ids,
//! queries and paging, preferences, and durability before the sender's ack.

use super::tests::fixture;
use crate::ns;
use crate::store::{StoreReply, StoreRequest};
use crate::testing::Fixture;
use crate::xml::Element;
use crate::{Config, ConnId};

fn chat(h: &mut Fixture, from: ConnId, to: &str, body: &str) {
    h.send(
        from,
        format!("<message to='{to}' type='chat' id='m-{body}'><body>{body}</body></message>"),
    );
}

/// Alice and bob online (bob available), both drained.
fn pair(h: &mut Fixture) -> (ConnId, ConnId) {
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "phone");
    h.send(b, "<presence/>");
    h.drain(a);
    h.drain(b);
    (a, b)
}

/// The bodies in `user`'s archive, in order.
fn archived(h: &Fixture, user: &str) -> Vec<String> {
    h.store
        .archive
        .iter()
        .filter(|(u, _)| u == user)
        .map(|(_, e)| body_of(&e.stanza))
        .collect()
}

fn body_of(stanza: &str) -> String {
    let a = stanza.find("<body>").map(|i| i + 6).unwrap_or(0);
    let b = stanza.find("</body>").unwrap_or(a);
    stanza[a..b].to_owned()
}

/// Sends a MAM query with `inner` (form and set) and returns the result
/// messages' (archive id, body) and the iq answer.
fn query(h: &mut Fixture, id: ConnId, inner: &str) -> (Vec<(String, String)>, Element) {
    h.send(
        id,
        format!(
            "<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2' queryid='f1'>{inner}</query></iq>"
        ),
    );
    let all = h.stanzas(id);
    let mut results = Vec::new();
    let mut answer = None;
    for el in all {
        if el.name == "iq" && el.attr("id") == Some("q") {
            answer = Some(el);
            continue;
        }
        let Some(r) = el.child(ns::MAM, "result") else {
            continue;
        };
        assert_eq!(r.attr("queryid"), Some("f1"));
        assert!(answer.is_none(), "results come before the iq result");
        let fwd = r.child(ns::FORWARD, "forwarded").expect("forwarded");
        assert!(fwd
            .child(ns::DELAY, "delay")
            .and_then(|d| d.attr("stamp"))
            .is_some());
        let m = fwd.child(ns::CLIENT, "message").expect("the message");
        let body = m
            .child(ns::CLIENT, "body")
            .map(|b| b.text())
            .unwrap_or_default();
        results.push((r.attr("id").unwrap().to_owned(), body));
    }
    let received =
        String::from_utf8_lossy(h.received.get(&id).map(Vec::as_slice).unwrap_or_default())
            .into_owned();
    (
        results,
        answer.unwrap_or_else(|| {
            panic!(
                "an iq answer: {}",
                &received[received.len().saturating_sub(600)..]
            )
        }),
    )
}

fn fin(answer: &Element) -> (bool, Option<String>, Option<String>, Option<u64>) {
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    let fin = answer.child(ns::MAM, "fin").expect("fin");
    let set = fin.child(ns::RSM, "set").expect("set");
    let text = |n: &str| set.child(ns::RSM, n).map(|e| e.text());
    (
        fin.attr("complete") == Some("true"),
        text("first"),
        text("last"),
        text("count").and_then(|c| c.parse().ok()),
    )
}

fn form(fields: &[(&str, &str)]) -> String {
    let mut x = String::from("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>");
    for (var, value) in fields {
        x.push_str(&format!(
            "<field var='{var}'><value>{value}</value></field>"
        ));
    }
    x.push_str("</x>");
    x
}

fn set(inner: &str) -> String {
    format!("<set xmlns='http://jabber.org/protocol/rsm'>{inner}</set>")
}

fn error_condition(el: &Element) -> Option<String> {
    let e = el.child(ns::CLIENT, "error")?;
    e.elements()
        .find(|c| c.ns == ns::STANZAS)
        .map(|c| c.name.clone())
}

#[test]
fn a_message_is_archived_for_both_sides_and_the_recipient_gets_its_stanza_id() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    chat(&mut h, a, "bob@localhost", "hello");
    let got = h.stanza(b);
    let sid = got.child(ns::SID, "stanza-id").expect("a stanza id");
    assert_eq!(sid.attr("by"), Some("bob@localhost"));
    assert_eq!(archived(&h, "alice"), ["hello"]);
    assert_eq!(archived(&h, "bob"), ["hello"]);
    let (results, answer) = query(&mut h, b, "");
    assert_eq!(
        results,
        [(sid.attr("id").unwrap().to_owned(), "hello".to_owned())]
    );
    let (complete, first, last, count) = fin(&answer);
    assert!(complete);
    assert_eq!(first.as_deref(), sid.attr("id"));
    assert_eq!(last, first);
    assert_eq!(count, Some(1));
    // The sender's copy is found by the other party.
    let (results, _) = query(&mut h, a, &form(&[("with", "bob@localhost")]));
    assert_eq!(results.len(), 1);
    let (results, _) = query(&mut h, a, &form(&[("with", "carol@localhost")]));
    assert!(results.is_empty());
    // Only an account's own sessions read its archive.
    h.send(
        a,
        "<iq type='set' id='x' to='bob@localhost'><query xmlns='urn:xmpp:mam:2'/></iq>",
    );
    let e = h.stanza(a);
    assert_eq!(error_condition(&e).as_deref(), Some("forbidden"), "{e:?}");
}

#[test]
fn what_is_not_archived() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    h.send(a, "<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
    h.send(
        a,
        "<message to='bob@localhost' type='headline'><body>news</body></message>",
    );
    h.send(a, "<message to='bob@localhost' type='chat'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>");
    // To oneself: one copy.
    h.send(
        a,
        "<message to='alice@localhost' type='chat'><body>note</body></message>",
    );
    h.drain(b);
    assert!(archived(&h, "bob").is_empty());
    assert_eq!(archived(&h, "alice"), ["note"]);
}

#[test]
fn a_forged_stanza_id_is_removed() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    h.send(a, "<message to='bob@localhost' type='chat'><body>x</body><stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='forged'/><stanza-id xmlns='urn:xmpp:sid:0' by='other@example.org' id='theirs'/></message>");
    let got = h.stanza(b);
    let ids: Vec<(Option<&str>, Option<&str>)> = got
        .elements()
        .filter(|e| e.is(ns::SID, "stanza-id"))
        .map(|e| (e.attr("by"), e.attr("id")))
        .collect();
    assert_eq!(ids.len(), 2, "{got:?}");
    assert!(ids.contains(&(Some("other@example.org"), Some("theirs"))));
    assert!(!ids.iter().any(|(_, id)| *id == Some("forged")));
}

#[test]
fn paging_forward_backward_and_by_id() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    for i in 0..5 {
        chat(&mut h, a, "bob@localhost", &format!("m{i}"));
    }
    h.drain(b);
    let (page, answer) = query(&mut h, b, &set("<max>2</max>"));
    let bodies: Vec<&str> = page.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["m0", "m1"]);
    let (complete, _, last, count) = fin(&answer);
    assert!(!complete);
    assert_eq!(count, Some(5));
    let last = last.unwrap();
    let (page, answer) = query(
        &mut h,
        b,
        &set(&format!("<max>2</max><after>{last}</after>")),
    );
    let bodies: Vec<&str> = page.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["m2", "m3"]);
    assert!(!fin(&answer).0);
    let (page, answer) = query(
        &mut h,
        b,
        &set(&format!("<max>5</max><after>{}</after>", page[1].0)),
    );
    assert_eq!(page.len(), 1);
    assert!(fin(&answer).0, "the last page is complete");
    // The last page, then the one before it.
    let (page, answer) = query(&mut h, b, &set("<max>2</max><before/>"));
    let bodies: Vec<&str> = page.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["m3", "m4"]);
    let (complete, first, ..) = fin(&answer);
    assert!(!complete);
    let (page, answer) = query(
        &mut h,
        b,
        &set(&format!("<max>5</max><before>{}</before>", first.unwrap())),
    );
    let bodies: Vec<&str> = page.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["m0", "m1", "m2"]);
    assert!(fin(&answer).0, "paging back reached the start");
    // The extended fields, flip-page and ids.
    let ids: Vec<String> = query(&mut h, b, "")
        .0
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let (page, _) = query(
        &mut h,
        b,
        &form(&[("after-id", &ids[1]), ("before-id", &ids[4])]),
    );
    let bodies: Vec<&str> = page.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["m2", "m3"]);
    let (page, _) = query(&mut h, b, &format!("{}<flip-page/>", set("<max>2</max>")));
    let bodies: Vec<&str> = page.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["m1", "m0"]);
    let (page, _) = query(&mut h, b, &form(&[("ids", &ids[3])]));
    assert_eq!(page, [(ids[3].clone(), "m3".to_owned())]);
    // Count only.
    let (page, answer) = query(&mut h, b, &set("<max>0</max>"));
    assert!(page.is_empty());
    assert_eq!(fin(&answer).3, Some(5));
    // An id that is not in the archive.
    let (_, answer) = query(&mut h, b, &set("<after>nope</after>"));
    assert_eq!(error_condition(&answer).as_deref(), Some("item-not-found"));
    // A bad date.
    let (_, answer) = query(&mut h, b, &form(&[("start", "yesterday")]));
    assert_eq!(error_condition(&answer).as_deref(), Some("bad-request"));
}

#[test]
fn time_ranges_select() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    chat(&mut h, a, "bob@localhost", "early");
    h.advance(std::time::Duration::from_secs(200));
    chat(&mut h, a, "bob@localhost", "late");
    h.drain(b);
    // The fixture's clock starts at 1_800_000_000 (2027-01-15T08:00:00Z).
    let (page, _) = query(&mut h, b, &form(&[("start", "2027-01-15T08:02:00Z")]));
    assert_eq!(
        page.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
        ["late"]
    );
    let (page, _) = query(&mut h, b, &form(&[("end", "2027-01-15T10:01:00+02:00")]));
    assert_eq!(
        page.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
        ["early"]
    );
}

#[test]
fn an_offline_message_is_archived_with_it_or_not_at_all() {
    let mut h = fixture();
    h.server.reconfigure(Config {
        require_tls: false,
        offline_quota: 1,
        ..Config::default()
    });
    let a = h.session("alice", "secret", "r");
    chat(&mut h, a, "bob@localhost", "first");
    chat(&mut h, a, "bob@localhost", "second");
    let errors: Vec<Element> = h
        .stanzas(a)
        .into_iter()
        .filter(|e| e.attr("type") == Some("error"))
        .collect();
    assert_eq!(errors.len(), 1, "the second is refused for the quota");
    assert_eq!(
        archived(&h, "bob"),
        ["first"],
        "the refused one is not archived"
    );
    assert_eq!(
        archived(&h, "alice"),
        ["first", "second"],
        "the sender's copy is what it sent"
    );
    let stored = &h.store.offline[0].1.stanza;
    assert!(
        stored.contains("urn:xmpp:sid:0"),
        "stored with its stanza id: {stored}"
    );
    // Delivered at login with the same stanza id as in the archive.
    let b = h.session("bob", "hunter2", "phone");
    h.send(b, "<presence/>");
    let m = h
        .stanzas(b)
        .into_iter()
        .find(|e| e.name == "message")
        .expect("the stored message");
    let id = m
        .child(ns::SID, "stanza-id")
        .and_then(|s| s.attr("id"))
        .unwrap()
        .to_owned();
    assert_eq!(
        h.store
            .archive
            .iter()
            .filter(|(u, e)| u == "bob" && e.id == id)
            .count(),
        1
    );
}

#[test]
fn preferences_are_stored_and_followed() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    h.send(
        b,
        "<iq type='get' id='p'><prefs xmlns='urn:xmpp:mam:2'/></iq>",
    );
    let p = h.stanza(b);
    assert_eq!(
        p.child(ns::MAM, "prefs").and_then(|p| p.attr("default")),
        Some("always")
    );
    h.send(b, "<iq type='set' id='p2'><prefs xmlns='urn:xmpp:mam:2' default='never'><always><jid>carol@localhost</jid></always><never/></prefs></iq>");
    let p = h.stanza(b);
    assert_eq!(p.attr("type"), Some("result"), "{p:?}");
    let prefs = p.child(ns::MAM, "prefs").unwrap();
    assert_eq!(prefs.attr("default"), Some("never"));
    chat(&mut h, a, "bob@localhost", "unkept");
    h.drain(b);
    assert!(archived(&h, "bob").is_empty());
    assert_eq!(
        archived(&h, "alice"),
        ["unkept"],
        "alice's own preferences keep it"
    );
    // Durable: the account loaded again has them.
    let stored = h
        .store
        .data
        .get("bob")
        .and_then(|d| d.archive_prefs.clone())
        .unwrap();
    assert_eq!(stored.always, ["carol@localhost"]);
    h.send(
        b,
        "<iq type='set' id='p3'><prefs xmlns='urn:xmpp:mam:2' default='sometimes'/></iq>",
    );
    assert_eq!(
        error_condition(&h.stanza(b)).as_deref(),
        Some("bad-request")
    );
}

#[test]
fn a_sent_carbon_carries_the_senders_stanza_id() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    let a2 = h.session("alice", "secret", "laptop");
    h.send(
        a2,
        "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
    );
    h.drain(a2);
    chat(&mut h, a, "bob@localhost", "copied");
    h.drain(b);
    let copy = h
        .stanzas(a2)
        .into_iter()
        .find(|e| e.name == "message")
        .expect("a sent carbon");
    let fwd = copy
        .child(ns::CARBONS, "sent")
        .and_then(|s| s.child(ns::FORWARD, "forwarded"))
        .and_then(|f| f.child(ns::CLIENT, "message"))
        .unwrap();
    let sid = fwd.child(ns::SID, "stanza-id").expect("stanza id");
    assert_eq!(sid.attr("by"), Some("alice@localhost"));
    let (page, _) = query(&mut h, a2, "");
    assert_eq!(page[0].0, sid.attr("id").unwrap());
}

#[test]
fn the_senders_ack_waits_for_both_archive_copies() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    h.send(a, "<enable xmlns='urn:xmpp:sm:3'/>");
    h.drain(a);
    h.hold_store();
    chat(&mut h, a, "bob@localhost", "durable");
    h.send(a, "<r xmlns='urn:xmpp:sm:3'/>");
    assert!(
        h.stanzas(a).is_empty(),
        "no ack while the archive writes are in flight"
    );
    let held = h.release_store();
    let archives = held
        .iter()
        .filter(|(_, r)| matches!(r, StoreRequest::Archive { .. }))
        .count();
    assert_eq!(archives, 2);
    for (token, req) in held {
        let reply = h.reply(&req);
        h.server.handle_store_reply(h.now, token, reply);
    }
    h.pump();
    let acks = h.stanzas(a);
    assert!(
        acks.iter()
            .any(|e| e.is(ns::SM, "a") && e.attr("h") == Some("1")),
        "{acks:?}"
    );
    h.drain(b);
}

#[test]
fn a_failed_archive_write_does_not_stop_the_message() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    h.hold_store();
    chat(&mut h, a, "bob@localhost", "on");
    for (token, _) in h.release_store() {
        h.server
            .handle_store_reply(h.now, token, StoreReply::Failed("disk full".into()));
    }
    h.pump();
    let got = h.stanzas(b);
    assert!(
        got.iter().any(|e| e.name == "message"),
        "delivered all the same"
    );
    assert!(h.stanzas(a).is_empty(), "and the sender hears no error");
}

#[test]
fn a_message_delivered_again_is_not_archived_again() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "phone");
    h.send(b, "<enable xmlns='urn:xmpp:sm:3'/><presence/>");
    h.drain(b);
    chat(&mut h, a, "bob@localhost/phone", "again");
    h.drain(b);
    // Bob's stream ends without acking: the message goes to offline storage.
    h.send(b, "</stream:stream>");
    h.pump();
    assert_eq!(h.store.offline.len(), 1);
    assert_eq!(archived(&h, "bob"), ["again"], "one archive copy");
    let stored = &h.store.offline[0].1.stanza;
    let id = &h
        .store
        .archive
        .iter()
        .find(|(u, _)| u == "bob")
        .unwrap()
        .1
        .id;
    assert!(
        stored.contains(id.as_str()),
        "with the same stanza id: {stored}"
    );
}

#[test]
fn without_the_archive_nothing_is_kept_or_offered() {
    let mut h = fixture();
    h.server.reconfigure(Config {
        require_tls: false,
        archive: false,
        ..Config::default()
    });
    let (a, b) = pair(&mut h);
    chat(&mut h, a, "bob@localhost", "gone");
    let got = h.stanza(b);
    assert!(got.child(ns::SID, "stanza-id").is_none());
    assert!(h.store.archive.is_empty());
    let (_, answer) = query(&mut h, b, "");
    assert_eq!(
        error_condition(&answer).as_deref(),
        Some("service-unavailable")
    );
    h.send(b, "<iq type='get' id='d' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let info = h.stanza(b);
    assert!(!info.to_xml(ns::CLIENT).contains(ns::MAM));
}

#[test]
fn the_account_advertises_its_archive_and_the_form() {
    let mut h = fixture();
    let (_, b) = pair(&mut h);
    h.send(b, "<iq type='get' id='d' to='bob@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let info = h.stanza(b).to_xml(ns::CLIENT);
    for f in [ns::MAM, ns::MAM_EXTENDED, ns::SID] {
        assert!(
            info.contains(&format!("var=\"{f}\"")) || info.contains(&format!("var='{f}'")),
            "{f}: {info}"
        );
    }
    h.send(
        b,
        "<iq type='get' id='f'><query xmlns='urn:xmpp:mam:2'/></iq>",
    );
    let form = h.stanza(b);
    let vars: Vec<String> = form
        .child(ns::MAM, "query")
        .and_then(|q| q.child(ns::DATA, "x"))
        .map(|x| {
            x.elements()
                .filter_map(|f| f.attr("var").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for v in ["FORM_TYPE", "with", "start", "end", "before-id", "after-id"] {
        assert!(vars.iter().any(|x| x == v), "{v} in {vars:?}");
    }
}

#[test]
fn maintenance_expires_old_messages() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    chat(&mut h, a, "bob@localhost", "old");
    h.drain(b);
    // Long enough for the sessions to time out too: log in again.
    h.advance(std::time::Duration::from_secs(31 * 24 * 3600));
    assert!(archived(&h, "bob").is_empty(), "past the retention time");
    let (a, b) = pair(&mut h);
    chat(&mut h, a, "bob@localhost", "new");
    h.drain(b);
    h.advance(std::time::Duration::from_secs(3601));
    assert_eq!(archived(&h, "bob"), ["new"], "within it");
}

#[test]
fn a_message_stored_until_acknowledged_still_copies_to_the_other_devices() {
    let mut h = fixture();
    let (a, b) = pair(&mut h);
    h.send(b, "<enable xmlns='urn:xmpp:sm:3'/>");
    let b2 = h.session("bob", "hunter2", "laptop");
    h.send(b2, "<presence><priority>-1</priority></presence>");
    h.send(
        b2,
        "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
    );
    h.drain(b);
    h.drain(b2);
    for to in ["bob@localhost", "bob@localhost/phone"] {
        chat(&mut h, a, to, "copied");
        let got = h.stanzas(b);
        assert!(got.iter().any(|e| e.name == "message"), "{to}: {got:?}");
        let copies = h.stanzas(b2);
        assert!(
            copies
                .iter()
                .any(|e| e.child(ns::CARBONS, "received").is_some()),
            "{to}: the laptop's copy: {copies:?}"
        );
    }
}
