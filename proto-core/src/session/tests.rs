//! The session manager's memory follows the store: changes show once
//! durable, a refused change leaves no trace, the roster version is the
//! store's, and bare-JID messages go where RFC 6121 section 8.5 says.

use crate::ns;
use crate::store::{StoreReply, StoreRequest};
use crate::testing::{answer, test_tls, Fixture};
use crate::xml::Element;
use crate::{Config, ConnId};

/// A plaintext server with alice/secret and bob/hunter2.
pub(super) fn fixture() -> Fixture {
    let mut h = Fixture::with_config(
        Config {
            require_tls: false,
            ..Config::default()
        },
        &test_tls(),
        [9; 32],
    );
    h.store.add_account("alice", "secret");
    h.store.add_account("bob", "hunter2");
    h
}

/// Answers every held store request with `reply(request)` and pumps.
fn answer_held(h: &mut Fixture, mut reply: impl FnMut(&mut Fixture, &StoreRequest) -> StoreReply) {
    for (token, req) in h.release_store() {
        let r = reply(h, &req);
        h.server.handle_store_reply(h.now, token, r);
    }
    h.pump();
}

fn roster_get(h: &mut Fixture, id: ConnId) -> Element {
    h.send(
        id,
        "<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>",
    );
    let all = h.stanzas(id);
    all.into_iter()
        .find(|e| e.attr("id") == Some("g"))
        .expect("a roster result")
}

fn roster_jids(result: &Element) -> Vec<String> {
    result
        .child(ns::ROSTER, "query")
        .map(|q| {
            q.elements()
                .filter_map(|i| i.attr("jid").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_roster_change_shows_only_once_durable_and_a_refused_one_never() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    roster_get(&mut h, a);
    h.hold_store();
    h.send(a, "<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>");
    // Asked while the change is in flight: the answer waits for the store.
    h.send(
        a,
        "<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>",
    );
    assert!(h.stanzas(a).is_empty(), "nothing answered before the store");
    answer_held(&mut h, |_, _| StoreReply::Failed("disk full".into()));
    let all = h.stanzas(a);
    let set = all.iter().find(|e| e.attr("id") == Some("s")).unwrap();
    assert_eq!(set.attr("type"), Some("error"));
    let get = all.iter().find(|e| e.attr("id") == Some("g")).unwrap();
    assert!(roster_jids(get).is_empty(), "the refused item is not shown");
    assert!(
        !all.iter().any(|e| e.attr("type") == Some("set")),
        "no push for a refused change: {all:?}"
    );
    // The same change, durable this time, shows in the answer after it.
    h.hold_store();
    h.send(a, "<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>");
    h.send(
        a,
        "<iq type='get' id='g'><query xmlns='jabber:iq:roster'/></iq>",
    );
    answer_held(&mut h, |h, req| h.store.answer(req));
    let all = h.stanzas(a);
    let get = all.iter().find(|e| e.attr("id") == Some("g")).unwrap();
    assert_eq!(roster_jids(get), ["bob@localhost"]);
    assert_eq!(h.roster_of("alice").len(), 1);
}

#[test]
fn a_refused_block_blocks_nothing() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "r");
    h.send(a, "<presence/>");
    h.stanzas(a);
    h.hold_store();
    h.send(a, "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>");
    // Sent while the block is in flight: it waits for the store's answer.
    h.send(
        b,
        "<message to='alice@localhost/r' type='chat'><body>still here</body></message>",
    );
    assert!(h.stanzas(b).is_empty(), "bob is not told he is blocked");
    answer_held(&mut h, |_, _| StoreReply::Failed("disk full".into()));
    let all = h.stanzas(a);
    assert_eq!(all[0].attr("type"), Some("error"), "{all:?}");
    let body = all[1].child(ns::CLIENT, "body").map(|b| b.text());
    assert_eq!(body.as_deref(), Some("still here"), "{all:?}");
    assert!(h.stanzas(b).is_empty(), "no error to bob");
}

#[test]
fn the_roster_version_is_the_stores_through_every_kind_of_change() {
    let mut h = fixture();
    h.store.add_account("carol", "pw");
    let a = h.session("alice", "secret", "r");
    let steps = [
        "<iq type='set' id='x'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query></iq>",
        // To someone who is no contact: nothing stored.
        "<presence to='dave@localhost' type='unsubscribe'/>",
        "<presence to='erin@localhost' type='unsubscribed'/>",
        // Pre-approval: stored.
        "<presence to='frank@localhost' type='subscribed'/>",
        "<presence to='carol@localhost' type='subscribe'/>",
        "<iq type='set' id='x'><query xmlns='jabber:iq:roster'><item jid='nobody@localhost' subscription='remove'/></query></iq>",
        "<iq type='set' id='x'><query xmlns='jabber:iq:roster'><item jid='carol@localhost' subscription='remove'/></query></iq>",
        "<presence to='frank@localhost' type='unsubscribed'/>",
    ];
    for step in steps {
        h.send(a, step);
        h.stanzas(a);
        let ver = roster_get(&mut h, a)
            .child(ns::ROSTER, "query")
            .and_then(|q| q.attr("ver").map(str::to_owned))
            .expect("a version");
        let stored = h.store.data.get("alice").map_or(0, |d| d.roster_version);
        assert_eq!(ver, stored.to_string(), "after {step}");
    }
    // Loaded again from the store (no session keeps it in memory), the
    // version is the same one.
    let stored = h.store.data["alice"].roster_version;
    h.send(a, "</stream:stream>");
    h.pump();
    let a = h.session("alice", "secret", "r2");
    let ver = roster_get(&mut h, a)
        .child(ns::ROSTER, "query")
        .and_then(|q| q.attr("ver").map(str::to_owned));
    assert_eq!(ver, Some(stored.to_string()));
}

#[test]
fn a_bare_jid_chat_goes_to_the_highest_priority_and_a_headline_to_all() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let hi = h.session("bob", "hunter2", "desk");
    let lo = h.session("bob", "hunter2", "phone");
    let tie = h.session("bob", "hunter2", "laptop");
    for (id, p) in [(hi, 5), (lo, 0), (tie, 5)] {
        h.send(id, format!("<presence><priority>{p}</priority></presence>"));
    }
    for id in [a, hi, lo, tie] {
        h.stanzas(id);
    }
    let got = |h: &mut Fixture, id| {
        h.stanzas(id)
            .into_iter()
            .filter(|e| e.name == "message")
            .count()
    };
    for ty in ["chat", "normal"] {
        h.send(
            a,
            format!("<message to='bob@localhost' type='{ty}'><body>hi</body></message>"),
        );
        assert_eq!(
            [got(&mut h, hi), got(&mut h, lo), got(&mut h, tie)],
            [1, 0, 1],
            "{ty}"
        );
    }
    h.send(
        a,
        "<message to='bob@localhost' type='headline'><body>news</body></message>",
    );
    assert_eq!(
        [got(&mut h, hi), got(&mut h, lo), got(&mut h, tie)],
        [1, 1, 1]
    );
}

/// Stores `n` chat messages for bob, from alice, with bodies of `size` bytes.
fn store_for_bob(h: &mut Fixture, n: usize, size: usize) {
    for i in 0..n {
        let body = format!("{i}:{}", "x".repeat(size));
        let req = StoreRequest::StoreOffline {
            username: "bob".into(),
            stanza: format!("<message xmlns='jabber:client' from='alice@localhost/r' to='bob@localhost' type='chat'><body>{body}</body></message>"),
            stamp: 1_800_000_000,
            quota: 1000,
            archive: None,
            key: None,
            inbox: None,
        };
        h.store.answer(&req);
    }
}

fn bodies(h: &mut Fixture, id: ConnId) -> Vec<String> {
    h.stanzas(id)
        .iter()
        .filter(|e| e.name == "message")
        .filter_map(|m| m.child(ns::CLIENT, "body"))
        .map(|b| b.text().split(':').next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn stored_messages_stay_stored_until_taken_when_the_phone_drops_right_after_login() {
    let mut h = fixture();
    store_for_bob(&mut h, 5, 100);
    let b = h.session("bob", "hunter2", "phone");
    h.hold_store();
    h.send(b, "<presence/>");
    // The store answers, the messages are written to bob's stream, and the
    // connection drops before the runtime takes a byte of it.
    for (token, req) in h.release_store() {
        let reply = h.store.answer(&req);
        h.server.handle_store_reply(h.now, token, reply);
    }
    h.server.handle_eof(h.now, b);
    h.pump();
    assert_eq!(
        h.store.offline.len(),
        5,
        "nothing delivered, nothing deleted"
    );
    // The next login gets them all, once; then they are gone from storage.
    let b = h.session("bob", "hunter2", "phone");
    h.send(b, "<presence/>");
    assert_eq!(bodies(&mut h, b), ["0", "1", "2", "3", "4"]);
    assert!(h.store.offline.is_empty(), "deleted once taken");
}

#[test]
fn many_large_stored_messages_arrive_in_chunks_over_tls() {
    // Default limits: the output budget is far below 20 messages of 240 KB.
    let mut h = Fixture::with_config(Config::default(), &test_tls(), [9; 32]);
    h.store.add_account("bob", "hunter2");
    store_for_bob(&mut h, 20, 240_000);
    let b = h.login_tls("bob", "hunter2", "phone");
    assert!(!h.is_closed(b), "the stream survived");
    let got = bodies(&mut h, b);
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "all of them, in order, once");
    assert!(h.store.offline.is_empty());
}

#[test]
fn what_a_session_was_handed_and_never_took_goes_to_offline_storage() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "phone");
    h.send(b, "<presence/>");
    h.stanzas(a);
    h.stanzas(b);
    // Alice's message reaches bob's stream; bob's connection drops before
    // the runtime takes it.
    h.server.handle_data(
        h.now,
        a,
        b"<message to='bob@localhost/phone' type='chat'><body>in flight</body></message>",
    );
    h.server.handle_data(
        h.now,
        a,
        b"<iq to='bob@localhost/phone' type='get' id='q'><query xmlns='jabber:iq:version'/></iq>",
    );
    h.server.handle_eof(h.now, b);
    h.pump();
    assert_eq!(h.store.offline.len(), 1, "the message went to storage");
    assert!(h.store.offline[0].1.stanza.contains("in flight"));
    let err = h
        .stanzas(a)
        .into_iter()
        .find(|e| e.attr("id") == Some("q"))
        .expect("the iq is answered");
    assert_eq!(err.attr("type"), Some("error"));
    // Bob comes back and gets it, once.
    let b = h.session("bob", "hunter2", "phone");
    h.send(b, "<presence/>");
    let got: Vec<String> = h
        .stanzas(b)
        .iter()
        .filter_map(|m| m.child(ns::CLIENT, "body").map(|b| b.text()))
        .collect();
    assert_eq!(got, ["in flight"]);
}

#[test]
fn a_reader_that_stalls_loses_nothing_and_gets_a_clean_stream_error_over_tls() {
    let limits = crate::Limits {
        output_budget: 16 * 1024,
        stanzas_per_second: 0,
        ..crate::Limits::default()
    };
    let mut h = Fixture::with_config(
        Config {
            limits,
            ..Config::default()
        },
        &test_tls(),
        [9; 32],
    );
    h.store.add_account("alice", "secret");
    h.store.add_account("bob", "hunter2");
    let a = h.login_tls("alice", "secret", "r");
    let b = h.login_tls("bob", "hunter2", "phone");
    h.stanzas(a);
    h.stanzas(b);
    // Bob's runtime takes nothing while alice sends (the core is driven
    // directly, without the fixture's pump, for bob's output).
    let body = "y".repeat(1000);
    let mut sent = 0;
    while !h.closed.contains(&b) && sent < 200 {
        let msg = format!(
            "<message to='bob@localhost/phone' type='chat'><body>{sent}:{body}</body></message>"
        );
        let tls = h.clients.get_mut(&a).unwrap().tls.as_mut().unwrap();
        std::io::Write::write_all(&mut tls.writer(), msg.as_bytes()).unwrap();
        let mut wire = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut wire).unwrap();
        }
        h.server.handle_data(h.now, a, &wire);
        // Only store requests are answered; bob's output stays queued.
        while let Some(ev) = h.server.poll_event() {
            match ev {
                crate::Event::Store(token, req) => {
                    let reply = h.store.answer(&req);
                    h.server.handle_store_reply(h.now, token, reply);
                }
                crate::Event::Close(id) => h.closed.push(id),
                crate::Event::Transmit(id) if id != b => {
                    let mut sink = Vec::new();
                    h.server.poll_transmit(id, &mut sink);
                }
                _ => {}
            }
        }
        sent += 1;
    }
    assert!(h.closed.contains(&b), "the stalled reader was cut off");
    // What bob's runtime finally writes decrypts and ends with the stream error.
    let mut last = Vec::new();
    h.server.poll_transmit(b, &mut last);
    let tls = h.clients.get_mut(&b).unwrap().tls.as_mut().unwrap();
    let mut rd = &last[..];
    while !rd.is_empty() {
        tls.read_tls(&mut rd).unwrap();
        tls.process_new_packets().expect("no bad record mac");
    }
    let mut plain = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tls.reader(), &mut plain);
    let plain = String::from_utf8_lossy(&plain);
    assert!(plain.contains("policy-violation"), "{plain}");
    assert!(!plain.contains("<body>"), "withdrawn stanzas are not sent");
    // Every message went to offline storage instead, once.
    let stored: Vec<usize> = h
        .store
        .offline
        .iter()
        .map(|(_, m)| {
            let s = &m.stanza;
            let at = s.find("<body>").unwrap() + 6;
            s[at..].split(':').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(stored, (0..sent).collect::<Vec<_>>());
}

/// One plaintext SCRAM-SHA-1 attempt on a new connection: whether it succeeded.
fn try_login(h: &mut Fixture, user: &str, password: &str) -> Element {
    use crate::sasl::{ScramClient, ScramHash};
    let id = h.connect_client(crate::Listener::Starttls);
    h.open(id);
    let mut client = ScramClient::new(ScramHash::Sha1, user, password, "nonce", None);
    if let Err(answer) = h.scram_exchange(id, "SCRAM-SHA-1", &mut client) {
        return answer;
    }
    // A failure may be held back (throttling): let the time pass.
    h.advance(std::time::Duration::from_secs(6));
    h.stanza(id)
}

#[test]
fn one_guessing_user_behind_a_shared_address_locks_out_only_that_account_there() {
    let limits = crate::Limits {
        max_auth_failures_per_ip: 4,
        ..crate::Limits::default()
    };
    let mut h = Fixture::with_config(
        Config {
            require_tls: false,
            limits,
            ..Config::default()
        },
        &test_tls(),
        [9; 32],
    );
    h.store.add_account("alice", "secret");
    h.store.add_account("bob", "hunter2");
    // Someone behind the shared address guesses alice's password.
    for _ in 0..4 {
        try_login(&mut h, "alice", "guess");
    }
    // Alice at that address is refused even with her password ...
    let refused = try_login(&mut h, "alice", "secret");
    assert!(
        refused.child(ns::SASL, "temporary-auth-failure").is_some(),
        "{refused:?}"
    );
    // ... bob behind the same address is not ...
    let ok = try_login(&mut h, "bob", "hunter2");
    assert!(ok.is(ns::SASL, "success"), "{ok:?}");
    // ... and alice from elsewhere is not either.
    h.peer = [10, 0, 0, 2].into();
    let ok = try_login(&mut h, "alice", "secret");
    assert!(ok.is(ns::SASL, "success"), "{ok:?}");
    // Guessing many accounts from one address locks the address out only
    // at a much higher count.
    h.peer = [10, 0, 0, 3].into();
    let max = 4 * crate::guard::ADDRESS_FACTOR;
    for i in 0..max {
        try_login(&mut h, &format!("nobody{i}"), "guess");
    }
    let refused = try_login(&mut h, "bob", "hunter2");
    assert!(
        refused.child(ns::SASL, "temporary-auth-failure").is_some(),
        "{refused:?}"
    );
}

#[test]
fn carbons_show_every_enabled_device_both_sides_of_a_conversation() {
    let mut h = fixture();
    let phone = h.session("alice", "secret", "phone");
    let desk = h.session("alice", "secret", "desk");
    let b = h.session("bob", "hunter2", "r");
    h.send(phone, "<presence><priority>0</priority></presence>");
    h.send(desk, "<presence><priority>1</priority></presence>");
    h.send(b, "<presence/>");
    for id in [phone, desk] {
        h.send(
            id,
            "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
        );
        let r = h
            .stanzas(id)
            .into_iter()
            .find(|e| e.attr("id") == Some("c"))
            .unwrap();
        assert_eq!(r.attr("type"), Some("result"));
    }
    h.stanzas(b);
    let carbon = |el: &Element, side: &str| -> Option<String> {
        let inner = el
            .child(ns::CARBONS, side)?
            .child(ns::FORWARD, "forwarded")?
            .child(ns::CLIENT, "message")?;
        inner.child(ns::CLIENT, "body").map(|b| b.text())
    };
    // Bob to alice's bare JID: the desk (priority 1) gets it, the phone a copy.
    h.send(
        b,
        "<message to='alice@localhost' type='chat'><body>hi</body></message>",
    );
    let at_desk = h.stanzas(desk);
    assert_eq!(at_desk.len(), 1);
    assert_eq!(
        at_desk[0].child(ns::CLIENT, "body").map(|b| b.text()),
        Some("hi".into())
    );
    let at_phone = h.stanzas(phone);
    assert_eq!(at_phone.len(), 1, "{at_phone:?}");
    assert_eq!(at_phone[0].attr("from"), Some("alice@localhost"));
    assert_eq!(carbon(&at_phone[0], "received"), Some("hi".into()));
    // The phone answers: bob gets it, the desk a sent copy with the phone as sender.
    h.send(
        phone,
        "<message to='bob@localhost' type='chat'><body>hello</body></message>",
    );
    assert_eq!(h.stanzas(b).len(), 1);
    let at_desk = h.stanzas(desk);
    assert_eq!(carbon(&at_desk[0], "sent"), Some("hello".into()));
    let inner = at_desk[0]
        .child(ns::CARBONS, "sent")
        .and_then(|s| s.child(ns::FORWARD, "forwarded"))
        .and_then(|f| f.child(ns::CLIENT, "message"))
        .unwrap();
    assert_eq!(inner.attr("from"), Some("alice@localhost/phone"));
    assert!(h.stanzas(phone).is_empty(), "no copy to the sender");
    // Private, no-copy and headline messages have no copies.
    for marked in [
        "<message to='alice@localhost/desk' type='chat'><body>p</body><private xmlns='urn:xmpp:carbons:2'/></message>",
        "<message to='alice@localhost/desk' type='chat'><body>n</body><no-copy xmlns='urn:xmpp:hints'/></message>",
        "<message to='alice@localhost/desk' type='headline'><body>h</body></message>",
    ] {
        h.send(b, marked);
        assert_eq!(h.stanzas(desk).len(), 1, "{marked}");
        assert!(h.stanzas(phone).is_empty(), "{marked}");
    }
    // Disabled: no more copies.
    h.send(
        phone,
        "<iq type='set' id='d'><disable xmlns='urn:xmpp:carbons:2'/></iq>",
    );
    h.stanzas(phone);
    h.send(
        b,
        "<message to='alice@localhost/desk' type='chat'><body>later</body></message>",
    );
    assert_eq!(h.stanzas(desk).len(), 1);
    assert!(h.stanzas(phone).is_empty());
}

#[test]
fn an_inactive_client_gets_messages_at_once_and_only_the_latest_presence_later() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "r");
    h.send(a, "<presence/>");
    h.send(b, "<presence/>");
    h.stanzas(a);
    h.stanzas(b);
    h.send(a, "<inactive xmlns='urn:xmpp:csi:0'/>");
    for show in ["away", "xa", "dnd"] {
        h.send(
            b,
            format!("<presence to='alice@localhost/r'><show>{show}</show></presence>"),
        );
    }
    assert!(h.stanzas(a).is_empty(), "presence waits while inactive");
    h.send(
        b,
        "<message to='alice@localhost/r' type='chat'><body>now</body></message>",
    );
    let got = h.stanzas(a);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "message", "messages go out at once");
    h.send(a, "<active xmlns='urn:xmpp:csi:0'/>");
    let got = h.stanzas(a);
    assert_eq!(got.len(), 1, "the latest presence only: {got:?}");
    assert_eq!(
        got[0].child(ns::CLIENT, "show").map(|s| s.text()),
        Some("dnd".into())
    );
    // Active again: presence flows at once.
    h.send(
        b,
        "<presence to='alice@localhost/r'><show>chat</show></presence>",
    );
    assert_eq!(h.stanzas(a).len(), 1);
}

#[test]
fn private_xml_is_kept_per_namespace_and_only_for_its_account() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "r");
    h.send(a, "<iq type='set' id='s'><query xmlns='jabber:iq:private'><prefs xmlns='x:prefs'><color>blue</color></prefs><storage xmlns='storage:bookmarks'/></query></iq>");
    assert_eq!(h.stanza(a).attr("type"), Some("result"));
    h.send(
        a,
        "<iq type='get' id='g'><query xmlns='jabber:iq:private'><prefs xmlns='x:prefs'/></query></iq>",
    );
    let r = h.stanza(a);
    let prefs = r
        .child(ns::PRIVATE, "query")
        .and_then(|q| q.child("x:prefs", "prefs"))
        .expect("the stored element");
    assert_eq!(prefs.child("x:prefs", "color").unwrap().text(), "blue");
    // Nothing stored: the empty element asked for.
    h.send(
        a,
        "<iq type='get' id='g2'><query xmlns='jabber:iq:private'><other xmlns='x:other'/></query></iq>",
    );
    let r = h.stanza(a);
    let other = r
        .child(ns::PRIVATE, "query")
        .and_then(|q| q.child("x:other", "other"))
        .expect("an empty element");
    assert!(other.elements().next().is_none());
    // Reserved namespaces, and somebody else's storage.
    h.send(a, "<iq type='set' id='bad'><query xmlns='jabber:iq:private'><x xmlns='jabber:client'/></query></iq>");
    assert_eq!(h.stanza(a).attr("type"), Some("error"));
    h.send(
        b,
        "<iq type='get' id='spy' to='alice@localhost'><query xmlns='jabber:iq:private'><prefs xmlns='x:prefs'/></query></iq>",
    );
    let r = h.stanza(b);
    assert_eq!(r.attr("type"), Some("error"));
    assert!(r
        .child(ns::CLIENT, "error")
        .unwrap()
        .child(ns::STANZAS, "forbidden")
        .is_some());
    assert_eq!(h.store.private.len(), 2);
}

#[test]
fn what_a_deleted_account_had_not_taken_is_refused_not_stored() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "r");
    h.send(a, "<presence/>");
    h.stanzas(a);
    h.stanzas(b);
    h.server.handle_data(
        h.now,
        b,
        b"<message to='alice@localhost/r' type='chat' id='m'><body>too late</body></message>",
    );
    let ended = h
        .server
        .end_account(h.now, &jid::BareJid::new("alice@localhost").unwrap());
    assert_eq!(ended, 1);
    h.pump();
    assert!(h.store.offline.is_empty(), "nothing stored for the account");
    let err = h
        .stanzas(b)
        .into_iter()
        .find(|e| e.attr("id") == Some("m"))
        .expect("the sender is told");
    assert_eq!(err.attr("type"), Some("error"));
}

/// Alice and bob, subscribed to each other both ways.
fn friends() -> Fixture {
    let mut h = fixture();
    let both = crate::roster::Subscription {
        to: true,
        from: true,
        ..Default::default()
    };
    for (user, other) in [("alice", "bob"), ("bob", "alice")] {
        h.store.data.insert(
            user.into(),
            crate::store::UserData {
                roster_version: 1,
                roster: vec![crate::roster::RosterItem {
                    jid: format!("{other}@localhost"),
                    name: None,
                    groups: Vec::new(),
                    subscription: both,
                    in_roster: true,
                    request: None,
                }],
                ..Default::default()
            },
        );
    }
    h
}

/// The status text of bob's answer to an XEP-0012 query of alice.
fn last_status(h: &mut Fixture, b: ConnId) -> String {
    h.drain(b);
    h.send(
        b,
        "<iq type='get' id='last' to='alice@localhost'><query xmlns='jabber:iq:last'/></iq>",
    );
    let r = h
        .stanzas(b)
        .into_iter()
        .find(|e| e.attr("id") == Some("last"))
        .expect("an answer");
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    r.child(ns::LAST, "query")
        .map(|q| q.text())
        .unwrap_or_default()
}

#[test]
fn last_activity_carries_the_status_of_the_last_unavailable_presence() {
    let mut h = friends();
    let b = h.session("bob", "hunter2", "r");
    let a = h.session("alice", "secret", "r");
    h.send(a, "<presence><status>at work</status></presence>");
    h.send(
        a,
        "<presence type='unavailable'><status>gone fishing</status></presence>",
    );
    h.send(a, "</stream:stream>");
    h.pump();
    assert_eq!(last_status(&mut h, b), "gone fishing");
    // A connection that just goes away leaves no status (nor the last available one).
    let a = h.session("alice", "secret", "r");
    h.send(a, "<presence><status>at work</status></presence>");
    h.server.handle_eof(h.now, a);
    h.pump();
    assert_eq!(last_status(&mut h, b), "");
}

#[test]
fn a_message_to_a_blocked_contact_bounces_as_xep_0191_says() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    h.send(a, "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>");
    h.drain(a);
    h.send(
        a,
        "<message to='bob@localhost' id='m1' type='chat'><body>hi</body></message>",
    );
    let e = h.stanza(a);
    assert_eq!(e.attr("type"), Some("error"));
    let err = e.child(ns::CLIENT, "error").expect("an error");
    assert_eq!(err.attr("type"), Some("cancel"));
    assert!(err.child(ns::STANZAS, "not-acceptable").is_some(), "{e:?}");
    assert!(err.child(ns::BLOCKING_ERRORS, "blocked").is_some(), "{e:?}");
}

#[test]
fn probes_are_answered_as_rfc_6121_4_3_2_says() {
    let mut h = friends();
    h.store.add_account("carol", "pw");
    // Alice believes she has carol's presence, and that of an account that is gone.
    let to_only = crate::roster::Subscription {
        to: true,
        ..Default::default()
    };
    for jid in ["carol@localhost", "gone@localhost"] {
        h.store
            .data
            .get_mut("alice")
            .unwrap()
            .roster
            .push(crate::roster::RosterItem {
                jid: jid.into(),
                name: None,
                groups: Vec::new(),
                subscription: to_only,
                in_roster: true,
                request: None,
            });
    }
    let b = h.session("bob", "hunter2", "r");
    h.send(b, "<presence><status>here</status></presence>");
    let a = h.session("alice", "secret", "r");
    // Answers that change her roster go to a resource that holds it (RFC 6121 3.2.3).
    h.send(
        a,
        "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq><presence/>",
    );
    h.drain(a);
    // A contact that shares its presence with alice: its presence, from its resource.
    h.send(a, "<presence to='bob@localhost' type='probe'/>");
    let got = h.stanzas(a);
    let p = got
        .iter()
        .find(|e| e.name == "presence")
        .expect("bob's presence");
    assert_eq!(p.attr("from"), Some("bob@localhost/r"));
    assert_eq!(p.attr("type"), None);
    assert_eq!(
        p.child(ns::CLIENT, "status").map(|s| s.text()).as_deref(),
        Some("here")
    );
    // One that does not, and an account that does not exist: unsubscribed, which
    // also ends the subscription alice believed in.
    for to in ["carol@localhost", "gone@localhost"] {
        h.send(a, format!("<presence to='{to}' type='probe'/>"));
        let got = h.stanzas(a);
        let p = got
            .iter()
            .find(|e| e.name == "presence")
            .unwrap_or_else(|| panic!("an answer to the probe of {to}: {got:?}"));
        assert_eq!(p.attr("type"), Some("unsubscribed"), "{p:?}");
        assert_eq!(p.attr("from"), Some(to));
        let item = h
            .roster_of("alice")
            .into_iter()
            .find(|i| i.jid == to)
            .unwrap();
        assert!(!item.subscription.to, "{to}: {item:?}");
    }
}

#[test]
fn a_subscription_request_waiting_for_an_offline_user_comes_whole() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    h.send(a, "<presence to='bob@localhost' type='subscribe'><status>it is me</status><nick xmlns='http://jabber.org/protocol/nick'>Alice</nick></presence>");
    h.drain(a);
    for _ in 0..2 {
        // Every login until it is answered.
        let b = h.session("bob", "hunter2", "r");
        h.send(b, "<presence/>");
        let got = h.stanzas(b);
        let req = got
            .iter()
            .find(|e| e.name == "presence" && e.attr("type") == Some("subscribe"))
            .unwrap_or_else(|| panic!("the request: {got:?}"));
        assert_eq!(req.attr("from"), Some("alice@localhost"));
        assert_eq!(
            req.child(ns::CLIENT, "status").map(|s| s.text()).as_deref(),
            Some("it is me")
        );
        assert_eq!(
            req.child("http://jabber.org/protocol/nick", "nick")
                .map(|n| n.text())
                .as_deref(),
            Some("Alice")
        );
        h.send(b, "</stream:stream>");
        h.pump();
    }
    // Answered: it does not come again, and is not kept.
    let b = h.session("bob", "hunter2", "r");
    h.send(
        b,
        "<presence to='alice@localhost' type='subscribed'/><presence/>",
    );
    let got = h.stanzas(b);
    assert!(
        !got.iter().any(|e| e.attr("type") == Some("subscribe")),
        "{got:?}"
    );
    assert!(h.roster_of("bob").iter().all(|i| i.request.is_none()));
}

/// The presence stanzas among `got`, as (from, to, type).
fn presences(got: &[Element]) -> Vec<(String, String, String)> {
    got.iter()
        .filter(|e| e.name == "presence")
        .map(|e| {
            let a = |n| e.attr(n).unwrap_or_default().to_owned();
            (a("from"), a("to"), a("type"))
        })
        .collect()
}

fn triple(from: &str, to: &str, ty: &str) -> (String, String, String) {
    (from.into(), to.into(), ty.into())
}

#[test]
fn own_presence_comes_back_and_contacts_get_it_at_their_bare_jid() {
    let mut h = friends();
    h.store.add_account("carol", "pw");
    let b = h.session("bob", "hunter2", "pc");
    h.send(b, "<presence/>");
    h.drain(b);
    let c = h.session("carol", "pw", "x");
    h.send(c, "<presence/>");
    h.drain(c);
    // Initial presence (RFC 6121 4.2.2): back to its resource first, then
    // what the probes found; to bob at his bare JID, as the roster has him.
    let a1 = h.session("alice", "secret", "one");
    h.send(a1, "<presence><status>here</status></presence>");
    let got = h.stanzas(a1);
    assert_eq!(
        presences(&got),
        [
            triple("alice@localhost/one", "alice@localhost/one", ""),
            triple("bob@localhost/pc", "alice@localhost/one", ""),
        ]
    );
    assert_eq!(
        got[0]
            .child(ns::CLIENT, "status")
            .map(|s| s.text())
            .as_deref(),
        Some("here"),
        "the echo is the presence as sent"
    );
    assert_eq!(
        presences(&h.stanzas(b)),
        [triple("alice@localhost/one", "bob@localhost", "")]
    );
    // A second resource: each of the account's resources at its full JID.
    let a2 = h.session("alice", "secret", "two");
    h.send(a2, "<presence/>");
    let got = presences(&h.stanzas(a2));
    assert_eq!(
        got[0],
        triple("alice@localhost/two", "alice@localhost/two", "")
    );
    assert!(got.contains(&triple("alice@localhost/one", "alice@localhost/two", "")));
    assert_eq!(
        presences(&h.stanzas(a1)),
        [triple("alice@localhost/two", "alice@localhost/one", "")]
    );
    h.drain(b);
    // Subsequent presence (4.4.2) and directed presence, as addressed.
    h.send(a2, "<presence to='carol@localhost/x'/>");
    h.drain(a2);
    h.drain(c);
    h.send(a2, "<presence><show>away</show></presence>");
    assert_eq!(
        presences(&h.stanzas(a2)),
        [triple("alice@localhost/two", "alice@localhost/two", "")]
    );
    assert_eq!(
        presences(&h.stanzas(a1)),
        [triple("alice@localhost/two", "alice@localhost/one", "")]
    );
    assert_eq!(
        presences(&h.stanzas(b)),
        [triple("alice@localhost/two", "bob@localhost", "")]
    );
    // Unavailable (4.5.2): addressed as available presence is, the sender
    // included, and the directed presence's receiver too.
    h.send(a2, "<presence type='unavailable'/>");
    assert_eq!(
        presences(&h.stanzas(a2)),
        [triple(
            "alice@localhost/two",
            "alice@localhost/two",
            "unavailable"
        )]
    );
    assert_eq!(
        presences(&h.stanzas(a1)),
        [triple(
            "alice@localhost/two",
            "alice@localhost/one",
            "unavailable"
        )]
    );
    assert_eq!(
        presences(&h.stanzas(b)),
        [triple(
            "alice@localhost/two",
            "bob@localhost",
            "unavailable"
        )]
    );
    assert_eq!(
        presences(&h.stanzas(c)),
        [triple(
            "alice@localhost/two",
            "carol@localhost/x",
            "unavailable"
        )]
    );
    // A session that ends unannounced: the others learn it, as addressed.
    h.server.handle_eof(h.now, a1);
    h.pump();
    assert_eq!(
        presences(&h.stanzas(b)),
        [triple(
            "alice@localhost/one",
            "bob@localhost",
            "unavailable"
        )]
    );
    assert_eq!(presences(&h.stanzas(a2)), [], "a2 is unavailable");
}

const ROSTER_GET: &str = "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>";

#[test]
fn another_accounts_roster_is_forbidden() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    h.send(
        a,
        "<iq type='get' id='g' to='bob@localhost'><query xmlns='jabber:iq:roster'/></iq>",
    );
    h.send(a, "<iq type='set' id='s' to='bob@localhost'><query xmlns='jabber:iq:roster'><item jid='eve@localhost'/></query></iq>");
    let got = h.stanzas(a);
    // RFC 6121 2.1.5, 2.3.3.
    for id in ["g", "s"] {
        let (e, condition) = answer(&got, id);
        assert_eq!(e.attr("type"), Some("error"));
        assert_eq!(condition.as_deref(), Some("forbidden"), "{e:?}");
    }
    assert!(h.roster_of("bob").is_empty());
}

#[test]
fn a_blocked_contact_sees_nothing_and_shows_nothing() {
    let mut h = friends();
    h.store.add_account("carol", "pw");
    let b = h.session("bob", "hunter2", "r");
    h.send(
        b,
        "<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
    );
    h.send(b, "<presence/>");
    // Carol asks bob while he is there, then he blocks her and alice.
    let c = h.session("carol", "pw", "r");
    h.send(c, "<presence to='bob@localhost' type='subscribe'/>");
    h.drain(b);
    h.send(b, "<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/><item jid='carol@localhost'/></block></iq>");
    let got = h.stanzas(b);
    assert_eq!(answer(&got, "blk").0.attr("type"), Some("result"));
    // XEP-0191 3.3: the push goes to the resource that blocked too.
    assert!(
        got.iter()
            .any(|e| e.attr("type") == Some("set") && e.child(ns::BLOCKING, "block").is_some()),
        "{got:?}"
    );
    // Blocking again tells nobody anything again.
    h.send(b, "<iq type='set' id='blk2'><block xmlns='urn:xmpp:blocking'><item jid='alice@localhost'/></block></iq>");
    h.drain(b);
    // Alice's presence reaches neither bob nor does his reach her, at login or later.
    let a = h.session("alice", "secret", "r");
    h.send(a, "<presence/>");
    h.send(a, "<presence><show>away</show></presence>");
    let got = presences(&h.stanzas(a));
    assert!(got.iter().all(|p| !p.0.starts_with("bob@")), "{got:?}");
    assert_eq!(presences(&h.stanzas(b)), []);
    // Bob's next login does not bring carol's waiting request back.
    h.send(b, "</stream:stream>");
    h.pump();
    let b = h.session("bob", "hunter2", "r");
    h.send(b, "<presence/>");
    let got = presences(&h.stanzas(b));
    assert!(got.iter().all(|p| !p.0.starts_with("carol@")), "{got:?}");
    // Nothing goes to a blocked contact: subscription stanzas and directed
    // presence get not-acceptable, and no unavailable follows later.
    h.drain(a);
    h.send(
        b,
        "<presence to='alice@localhost' type='subscribe' id='sub'/>",
    );
    h.send(b, "<presence to='alice@localhost/r' id='dir'/>");
    let got = h.stanzas(b);
    for id in ["sub", "dir"] {
        assert_eq!(
            answer(&got, id).1.as_deref(),
            Some("not-acceptable"),
            "{got:?}"
        );
    }
    h.send(b, "<presence type='unavailable'/>");
    assert_eq!(presences(&h.stanzas(a)), []);
}

#[test]
fn a_pre_approval_is_advertised_and_shown_in_the_roster() {
    let mut h = fixture();
    h.store.add_account("carol", "pw");
    let id = h.connect_client(crate::Listener::Starttls);
    h.open(id);
    h.scram(id, crate::sasl::Mechanism::ScramSha1, "bob", "hunter2");
    let f = h.open(id);
    assert!(f.child(ns::PRE_APPROVAL, "sub").is_some(), "{f:?}");
    let b = h.session("bob", "hunter2", "r");
    h.send(b, ROSTER_GET);
    h.drain(b);
    h.send(b, "<presence to='carol@localhost' type='subscribed'/>");
    // RFC 6121 3.4.2: the contact becomes an item, approved, and is pushed.
    let got = h.stanzas(b);
    let push = got
        .iter()
        .find_map(|e| {
            e.child(ns::ROSTER, "query")?
                .child(ns::ROSTER, "item")
                .cloned()
        })
        .unwrap_or_else(|| panic!("a roster push: {got:?}"));
    assert_eq!(push.attr("jid"), Some("carol@localhost"));
    assert_eq!(push.attr("subscription"), Some("none"));
    assert_eq!(push.attr("approved"), Some("true"));
    // Carol asks: approved by the server, and the item is bob's "from" now.
    let c = h.session("carol", "pw", "r");
    h.send(c, ROSTER_GET);
    h.send(c, "<presence to='bob@localhost' type='subscribe'/>");
    let got = h.stanzas(c);
    assert!(
        got.iter().any(|e| e.attr("type") == Some("subscribed")),
        "{got:?}"
    );
    let got = h.stanzas(b);
    let push = got
        .iter()
        .find_map(|e| {
            e.child(ns::ROSTER, "query")?
                .child(ns::ROSTER, "item")
                .cloned()
        })
        .unwrap_or_else(|| panic!("a roster push: {got:?}"));
    assert_eq!(push.attr("subscription"), Some("from"));
    assert_eq!(push.attr("approved"), None);
}

#[test]
fn subscription_stanzas_follow_rfc_6121_section_3() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    h.send(a, ROSTER_GET);
    let b = h.session("bob", "hunter2", "r");
    h.send(b, "<presence/>");
    // A second session of bob's that did not ask for the roster.
    let b2 = h.session("bob", "hunter2", "bystander");
    h.send(b2, "<presence/>");
    h.send(b, ROSTER_GET);
    h.drain(b);
    h.drain(b2);
    // A.3.1: a request is delivered once; its repeat while it waits is not.
    h.send(a, "<presence to='bob@localhost' type='subscribe'/>");
    h.send(a, "<presence to='bob@localhost' type='subscribe'/>");
    let requests = |got: Vec<Element>| {
        got.iter()
            .filter(|e| e.attr("type") == Some("subscribe"))
            .count()
    };
    assert_eq!(requests(h.stanzas(b)), 1);
    assert_eq!(requests(h.stanzas(b2)), 1, "to every available resource");
    // 2.5.3: a request that waits is not an item to remove.
    h.send(b, "<iq type='set' id='rm'><query xmlns='jabber:iq:roster'><item jid='alice@localhost' subscription='remove'/></query></iq>");
    assert_eq!(
        answer(&h.stanzas(b), "rm").1.as_deref(),
        Some("item-not-found")
    );
    // 3.1.6: the approval reaches alice's resources that hold the roster.
    h.send(a, "<presence/>");
    h.drain(a);
    h.send(b, "<presence to='alice@localhost' type='subscribed'/>");
    let got = h.stanzas(a);
    let types: Vec<&str> = got
        .iter()
        .filter(|e| e.name == "presence")
        .filter_map(|e| e.attr("type").or(Some("available")))
        .collect();
    assert_eq!(types, ["subscribed", "available", "available"], "{got:?}");
    // 3.2.2: when bob cancels, his unavailable presence comes before the
    // cancellation; only resources holding the roster get the cancellation.
    h.drain(b2);
    h.send(b, "<presence to='alice@localhost' type='unsubscribed'/>");
    let got = h.stanzas(a);
    let types: Vec<&str> = got
        .iter()
        .filter(|e| e.name == "presence")
        .filter_map(|e| e.attr("type"))
        .collect();
    assert_eq!(
        types,
        ["unavailable", "unavailable", "unsubscribed"],
        "{got:?}"
    );
    // Alice unsubscribed from bob: b2, which never asked for the roster, hears nothing of it.
    h.send(a, "<presence to='bob@localhost' type='subscribe'/>");
    h.send(b, "<presence to='alice@localhost' type='subscribed'/>");
    h.drain(b);
    h.drain(b2);
    h.send(a, "<presence to='bob@localhost' type='unsubscribe'/>");
    assert!(h
        .stanzas(b)
        .iter()
        .any(|e| e.attr("type") == Some("unsubscribe")));
    assert!(h
        .stanzas(b2)
        .iter()
        .all(|e| e.attr("type") != Some("unsubscribe")));
}

#[test]
fn offline_messages_wait_for_a_resource_that_may_get_them() {
    let mut h = fixture();
    let a = h.session("alice", "secret", "r");
    h.send(
        a,
        "<message to='bob@localhost' type='chat'><body>later</body></message>",
    );
    // A resource of negative priority gets no message to the bare JID
    // (RFC 6121 8.5.2.1.1), offline messages included (XEP-0160).
    let b = h.session("bob", "hunter2", "bot");
    h.send(b, "<presence><priority>-1</priority></presence>");
    let got = h.stanzas(b);
    assert!(got.iter().all(|e| e.name != "message"), "{got:?}");
    assert_eq!(h.store.offline.len(), 1);
    h.send(b, "<presence><priority>1</priority></presence>");
    let got = h.stanzas(b);
    assert_eq!(
        got.iter()
            .filter(|e| e.name == "message")
            .filter_map(|m| m.child(ns::CLIENT, "body"))
            .map(|b| b.text())
            .collect::<Vec<_>>(),
        ["later"]
    );
}

#[test]
fn a_blocked_resource_gets_no_presence_and_the_others_do() {
    let mut h = friends();
    let a = h.session("alice", "secret", "r");
    h.send(a, "<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost/work'/></block></iq>");
    let work = h.session("bob", "hunter2", "work");
    h.send(work, "<presence/>");
    let home = h.session("bob", "hunter2", "home");
    h.send(home, "<presence/>");
    h.drain(work);
    h.drain(home);
    h.send(a, "<presence/>");
    let from_alice = |got: Vec<Element>| {
        presences(&got)
            .into_iter()
            .filter(|p| p.0.starts_with("alice@"))
            .count()
    };
    assert_eq!(from_alice(h.stanzas(work)), 0);
    assert_eq!(from_alice(h.stanzas(home)), 1);
}

#[test]
fn the_server_list_takes_the_kontalk_clients_duplicated_xmlns_and_nothing_else_doubled() {
    let mut h = fixture();
    h.server
        .set_kontalk_key(crate::testing::test_server_key().clone());
    let a = h.session("alice", "secret", "r");
    // Smack writes the command's namespace twice (KONTALK.md section 5), byte for byte.
    h.send(a, "<iq to='network@localhost' type='set' id='sl'><command xmlns='http://jabber.org/protocol/commands' xmlns='http://jabber.org/protocol/commands' node='serverlist' action='execute'/></iq>");
    let got = h.stanzas(a);
    let (reply, error) = answer(&got, "sl");
    assert_eq!(error, None, "{reply:?}");
    assert_eq!(
        reply.attr("from"),
        Some("network@localhost"),
        "from the address asked"
    );
    let item = reply
        .child(crate::kontalk::services::COMMANDS, "command")
        .and_then(|c| c.child(crate::kontalk::services::SERVERLIST, "serverlist"))
        .and_then(|l| l.child(crate::kontalk::services::SERVERLIST, "item"))
        .unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(item.attr("node"), Some("localhost"));
    assert_eq!(
        item.attr("fingerprint").map(str::to_owned),
        Some(crate::testing::test_server_key().fingerprint())
    );
    // Any other attribute written twice still ends the stream.
    h.send(a, "<iq to='network@localhost' type='set' id='x' id='x'/>");
    h.pump();
    assert!(h.is_closed(a), "a duplicated attribute is not well-formed");
}

#[test]
fn kontalk_services_answer_from_their_address_and_keep_their_bounds() {
    let mut h = fixture();
    h.store.add_account(&"a".repeat(40), "pw");
    let a = h.session("alice", "secret", "r");
    let b = h.session("bob", "hunter2", "r");
    h.send(b, "<presence/>");
    h.drain(b);
    // Contact match: those registered, from probe@; more than 500 is refused.
    let items: String = [&"a".repeat(40), &"b".repeat(40), "alice", "x@other.org"]
        .iter()
        .map(|n| format!("<item jid='{n}@localhost'/>"))
        .collect();
    h.send(a, format!("<iq to='probe@localhost' type='get' id='m'><query xmlns='http://kontalk.org/extensions/roster'>{items}</query></iq>"));
    let got = h.stanzas(a);
    let (reply, error) = answer(&got, "m");
    assert_eq!((reply.attr("from"), error), (Some("probe@localhost"), None));
    let found: Vec<&str> = reply
        .child(crate::kontalk::services::ROSTER_MATCH, "query")
        .map(|q| q.elements().filter_map(|i| i.attr("jid")).collect())
        .unwrap_or_default();
    assert_eq!(found, [format!("{}@localhost", "a".repeat(40))]);
    let many: String = (0..501)
        .map(|i| format!("<item jid='{i:040}@localhost'/>"))
        .collect();
    h.send(a, format!("<iq to='probe@localhost' type='get' id='many'><query xmlns='http://kontalk.org/extensions/roster'>{many}</query></iq>"));
    assert_eq!(
        answer(&h.stanzas(a), "many").1.as_deref(),
        Some("policy-violation")
    );
    // A key the account does not have: item-not-found, from the account's address.
    h.send(
        a,
        "<iq to='bob@localhost' type='get' id='k'><pubkey xmlns='urn:xmpp:pubkey:2'/></iq>",
    );
    let got = h.stanzas(a);
    let (reply, error) = answer(&got, "k");
    assert_eq!(
        (reply.attr("from"), error.as_deref()),
        (Some("bob@localhost"), Some("item-not-found"))
    );
    // A group message: a copy to each address, bcc ones left out of the header.
    h.send(a, "<message to='multicast@localhost' type='chat' id='g'><body>all</body><group xmlns='http://kontalk.org/extensions/message#group' id='G1'/><addresses xmlns='http://jabber.org/protocol/address'><address type='to' jid='bob@localhost'/><address type='bcc' jid='bob@localhost/r'/></addresses></message>");
    let got: Vec<Element> = h
        .stanzas(b)
        .into_iter()
        .filter(|e| e.name == "message")
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    for m in &got {
        assert_eq!(m.attr("from"), Some("alice@localhost/r"));
        assert!(m
            .child("http://kontalk.org/extensions/message#group", "group")
            .is_some());
        let header = m
            .child(crate::kontalk::services::ADDRESS, "addresses")
            .expect("the header");
        let kept: Vec<(&str, &str)> = header
            .elements()
            .filter_map(|e| Some((e.attr("type")?, e.attr("delivered")?)))
            .collect();
        assert_eq!(kept, [("to", "true")]);
    }
    // Past the bound of recipients: refused, nothing sent.
    let many: String = (0..101)
        .map(|i| format!("<address type='to' jid='u{i}@localhost'/>"))
        .collect();
    h.send(a, format!("<message to='multicast@localhost' id='big'><body>x</body><addresses xmlns='http://jabber.org/protocol/address'>{many}</addresses></message>"));
    assert_eq!(
        answer(&h.stanzas(a), "big").1.as_deref(),
        Some("policy-violation")
    );
}

#[test]
fn the_contact_match_covers_the_users_of_the_whole_network() {
    // A server of a network whose directory (from its store) places one
    // Kontalk user on another server.
    let mut h = Fixture::with_config(
        Config {
            require_tls: false,
            net: Some(crate::testing::test_network(
                "zeta.localhost",
                "prime.localhost",
                [0; 32],
            )),
            ..Config::default()
        },
        &test_tls(),
        [9; 32],
    );
    h.store.add_account("alice", "secret");
    h.store.add_account(&"a".repeat(40), "pw");
    h.store
        .directory
        .insert(("prime.localhost".into(), "c".repeat(40)));
    h.pump();
    assert_eq!(h.server.net_home(&"c".repeat(40)), Some("prime.localhost"));
    let a = h.session("alice", "secret", "r");
    let items: String = ["a", "b", "c"]
        .iter()
        .map(|n| format!("<item jid='{}@localhost'/>", n.repeat(40)))
        .collect();
    h.send(a, format!("<iq to='probe@localhost' type='get' id='m'><query xmlns='http://kontalk.org/extensions/roster'>{items}</query></iq>"));
    let got = h.stanzas(a);
    let (reply, error) = answer(&got, "m");
    assert_eq!(error, None);
    let found: Vec<&str> = reply
        .child(crate::kontalk::services::ROSTER_MATCH, "query")
        .map(|q| q.elements().filter_map(|i| i.attr("jid")).collect())
        .unwrap_or_default();
    assert_eq!(
        found,
        [
            format!("{}@localhost", "a".repeat(40)),
            format!("{}@localhost", "c".repeat(40))
        ],
        "the one here and the one on prime, in the order asked"
    );
}
