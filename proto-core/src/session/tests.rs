//! The session manager's memory follows the store: changes show once
//! durable, a refused change leaves no trace, the roster version is the
//! store's, and bare-JID messages go where RFC 6121 section 8.5 says.

use crate::ns;
use crate::store::{StoreReply, StoreRequest};
use crate::testing::{test_tls, Fixture};
use crate::xml::Element;
use crate::{Config, ConnId};

/// A plaintext server with alice/secret and bob/hunter2.
fn fixture() -> Fixture {
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
