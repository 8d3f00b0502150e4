//! Presence, blocking and last activity as RFC 6121 and the XEPs word them, checked on the
//! exact stanzas with a raw client (slixmpp would hide the differences).

use super::hostile::Raw;
use super::support::{Runtime, ServerOptions, TestServer};
use super::{ALICE, BOB};

per_runtime!(
    a_message_to_a_blocked_contact_bounces_as_xep_0191_says,
    last_activity_carries_the_status_of_the_last_unavailable_presence,
    probes_are_answered_and_one_to_a_deleted_account_with_unsubscribed,
    a_stored_subscription_request_comes_as_it_was_sent,
    own_presence_comes_back_and_contacts_get_it_at_their_bare_jid,
    a_blocked_contact_sees_nothing_and_shows_nothing,
    rosters_and_subscriptions_follow_rfc_6121_sections_2_and_3,
    offline_messages_wait_for_a_priority_that_is_not_negative,
);

const CAROL: (&str, &str) = ("carol@localhost", "carol-pw");

fn server(rt: Runtime) -> TestServer {
    TestServer::start(ServerOptions {
        require_encryption: false,
        ..ServerOptions::with_users(rt, &[ALICE, BOB, CAROL])
    })
}

/// Sends `request` (an iq with `id`) and returns the answer, whole.
fn ask(server: &TestServer, c: &mut Raw, id: &str, request: &str) -> String {
    let mark = c.mark();
    c.send(request.as_bytes());
    let key = format!("id='{id}'");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = c.text()[mark..].to_owned();
        if let Some(at) = text.find(&key) {
            let tail = &text[text[..at].rfind("<iq").expect("an iq")..];
            let open = tail.find('>');
            if let Some(e) = open.filter(|&e| tail[..e].ends_with('/')) {
                return tail[..=e].to_owned();
            }
            if let Some(e) = tail.find("</iq>") {
                return tail[..e + 5].to_owned();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer {id}: {text}\n{}",
            server.log_report()
        );
        c.read_some(std::time::Duration::from_millis(100));
    }
}

/// Gives the server time to answer what `c` sent before: a ping round trip.
fn sync(server: &TestServer, c: &mut Raw) {
    ask(
        server,
        c,
        "sync",
        "<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
}

/// `user` subscribes to `contact`'s presence, and the contact approves.
fn subscribe(server: &TestServer, user: (&mut Raw, &str), contact: (&mut Raw, &str)) {
    let ((u, user), (c, contact)) = (user, contact);
    let mark = c.mark();
    u.send(format!("<presence to='{contact}' type='subscribe'/>").as_bytes());
    c.wait_for("type='subscribe'", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    let mark = u.mark();
    c.send(format!("<presence to='{user}' type='subscribed'/>").as_bytes());
    u.wait_for("type='subscribed'", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
}

/// A raw client logged in with initial presence, that asked for its roster
/// (so it gets the answers to subscription requests, RFC 6121 3.1.6).
fn login(server: &TestServer, (jid, password): (&str, &str), resource: &str) -> Raw {
    let mut c = Raw::login(server.c2s_addr(), node(jid), password, resource);
    let mark = c.mark();
    c.send(b"<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>");
    c.wait_for("id='roster'", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    c
}

fn node(jid: &str) -> &str {
    jid.split('@').next().unwrap()
}

fn a_message_to_a_blocked_contact_bounces_as_xep_0191_says(rt: Runtime) {
    let server = server(rt);
    let mut a = login(&server, ALICE, "desk");
    let mark = a.mark();
    a.send(format!("<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='{}'/></block></iq>", BOB.0).as_bytes());
    a.wait_for("id='blk'", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    let mark = a.mark();
    a.send(
        format!(
            "<message to='{}' id='m1' type='chat'><body>hi</body></message>",
            BOB.0
        )
        .as_bytes(),
    );
    let got = a
        .wait_for("</message>", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    let error = &got[got.find("<error").expect("an error")..];
    assert!(
        got.contains("type='error'") && error.starts_with("<error type='cancel'>"),
        "XEP-0191 3.5: an error of type cancel: {got}"
    );
    assert!(
        error.contains("<not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>")
            && error.contains("<blocked xmlns='urn:xmpp:blocking:errors'/>"),
        "not-acceptable with <blocked/>: {got}"
    );
}

fn last_activity_carries_the_status_of_the_last_unavailable_presence(rt: Runtime) {
    let server = server(rt);
    let mut a = login(&server, ALICE, "desk");
    let mut b = login(&server, BOB, "phone");
    // Bob subscribes to alice, who approves: bob may ask for her last activity.
    subscribe(&server, (&mut b, BOB.0), (&mut a, ALICE.0));
    let mark = b.mark();
    a.send(
        b"<presence type='unavailable'><status>gone fishing</status></presence></stream:stream>",
    );
    b.wait_for("type='unavailable'", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    // The session's end is stored once the stream is closed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let answer = loop {
        let mark = b.mark();
        b.send(
            format!(
                "<iq type='get' id='last' to='{}'><query xmlns='jabber:iq:last'/></iq>",
                ALICE.0
            )
            .as_bytes(),
        );
        let got = b
            .wait_for("</iq>", mark)
            .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
        // While alice's session is still ending, she is online (seconds 0, no status).
        if got.contains("gone fishing") || std::time::Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        answer.contains("type='result'") && answer.contains(">gone fishing</query>"),
        "XEP-0012: the status of alice's last unavailable presence: {answer}"
    );
}

fn probes_are_answered_and_one_to_a_deleted_account_with_unsubscribed(rt: Runtime) {
    let server = server(rt);
    let mut a = login(&server, ALICE, "desk");
    let mut b = login(&server, BOB, "phone");
    subscribe(&server, (&mut a, ALICE.0), (&mut b, BOB.0));
    // A probe of bob, online: his presence, from his resource, to hers.
    let mark = a.mark();
    a.send(format!("<presence to='{}' type='probe'/>", BOB.0).as_bytes());
    let want = format!("<presence from='{}/phone' to='{}/desk'", BOB.0, ALICE.0);
    let got = a
        .wait_for(&want, mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    assert!(
        !got[got.find(&want).unwrap()..].starts_with(&format!("{want} type=")),
        "{got}"
    );
    // Bob's account is deleted; a probe of it is answered unsubscribed (RFC 6121 4.3.2).
    let del = server.admin(&["deluser", BOB.0]);
    assert!(del.success(), "{}", del.describe());
    let mark = a.mark();
    a.send(format!("<presence to='{}' type='probe'/>", BOB.0).as_bytes());
    let got = a
        .wait_for("type='unsubscribed'", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    assert!(got.contains(&format!("from='{}'", BOB.0)), "{got}");
    let log = server.log_text();
    assert!(
        !log.lines().any(|l| l.contains(" ERROR ")),
        "nothing is an error here:\n{log}"
    );
}

fn a_stored_subscription_request_comes_as_it_was_sent(rt: Runtime) {
    let server = server(rt);
    let mut a = login(&server, ALICE, "desk");
    let mark = a.mark();
    // Bob is offline: the request waits for him (RFC 6121 3.1.3).
    a.send(
        format!(
            "<presence to='{}' type='subscribe'><status>it is me</status>\
         <nick xmlns='http://jabber.org/protocol/nick'>Alice</nick></presence>\
         <iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>",
            BOB.0
        )
        .as_bytes(),
    );
    a.wait_for("id='sync'", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    let mut b = login(&server, BOB, "phone");
    let got = b
        .wait_for("type='subscribe'", 0)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    let at = got.find("type='subscribe'").expect("the request");
    let start = got[..at].rfind("<presence").expect("the request");
    let end = got[start..]
        .find("</presence>")
        .map(|e| start + e)
        .unwrap_or(got.len());
    let request = &got[start..end];
    assert!(
        request.contains(&format!("from='{}'", ALICE.0))
            && request.contains("<status>it is me</status>")
            && request.contains("<nick xmlns='http://jabber.org/protocol/nick'>Alice</nick>"),
        "the request with its status and nickname: {got}"
    );
}

/// The `(from, to, type)` of each presence start tag in `text` after `mark`.
fn presences(text: &str, mark: usize) -> Vec<(String, String, String)> {
    let attr = |tag: &str, name: &str| {
        let key = format!(" {name}='");
        tag.find(&key)
            .map(|i| &tag[i + key.len()..])
            .and_then(|v| v.find('\'').map(|e| v[..e].to_owned()))
            .unwrap_or_default()
    };
    text[mark..]
        .match_indices("<presence")
        .map(|(i, _)| {
            let rest = &text[mark + i..];
            let tag = &rest[..rest.find('>').map_or(rest.len(), |e| e + 1)];
            (attr(tag, "from"), attr(tag, "to"), attr(tag, "type"))
        })
        .collect()
}

/// Waits until `c` received a presence `(from, to, type)` after `mark`, and
/// returns every presence it received after `mark`.
fn wait_presence(
    server: &TestServer,
    c: &mut Raw,
    mark: usize,
    want: (&str, &str, &str),
) -> Vec<(String, String, String)> {
    let want = (want.0.to_owned(), want.1.to_owned(), want.2.to_owned());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = presences(&c.text(), mark);
        if got.contains(&want) {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no presence {want:?}, got {got:?}\n{}",
            server.log_report()
        );
        c.read_some(std::time::Duration::from_millis(100));
    }
}

fn own_presence_comes_back_and_contacts_get_it_at_their_bare_jid(rt: Runtime) {
    let server = server(rt);
    let (alice, bob) = (ALICE.0, BOB.0);
    // Each login's initial presence comes back to it (RFC 6121 4.2.2).
    let mut a = login(&server, ALICE, "desk");
    wait_presence(
        &server,
        &mut a,
        0,
        (&format!("{alice}/desk"), &format!("{alice}/desk"), ""),
    );
    let mut b = login(&server, BOB, "phone");
    wait_presence(
        &server,
        &mut b,
        0,
        (&format!("{bob}/phone"), &format!("{bob}/phone"), ""),
    );
    subscribe(&server, (&mut a, alice), (&mut b, bob));
    subscribe(&server, (&mut b, bob), (&mut a, alice));
    let (ma, mb) = (a.mark(), b.mark());
    let mut a2 = login(&server, ALICE, "laptop");
    let laptop = format!("{alice}/laptop");
    // To itself first, to the account's other resources at their full JIDs,
    // to a contact at the bare JID its roster item has.
    let got = wait_presence(&server, &mut a2, 0, (&laptop, &laptop, ""));
    assert_eq!(
        got[0],
        (laptop.clone(), laptop.clone(), String::new()),
        "{got:?}"
    );
    wait_presence(&server, &mut a, ma, (&laptop, &format!("{alice}/desk"), ""));
    wait_presence(&server, &mut b, mb, (&laptop, bob, ""));
    // Unavailable presence (4.5.2) is addressed the same way, its sender included.
    let (ma, mb, m2) = (a.mark(), b.mark(), a2.mark());
    a2.send(b"<presence type='unavailable'><status>off</status></presence>");
    let got = wait_presence(&server, &mut a2, m2, (&laptop, &laptop, "unavailable"));
    assert_eq!(got.len(), 1, "{got:?}");
    wait_presence(
        &server,
        &mut a,
        ma,
        (&laptop, &format!("{alice}/desk"), "unavailable"),
    );
    let got = wait_presence(&server, &mut b, mb, (&laptop, bob, "unavailable"));
    assert_eq!(got.len(), 1, "one copy for bob: {got:?}");
    // A later presence comes back too (4.4.2), and reaches bob at his bare JID.
    let (mb, m) = (b.mark(), a.mark());
    a.send(b"<presence><show>away</show></presence>");
    let desk = format!("{alice}/desk");
    wait_presence(&server, &mut a, m, (&desk, &desk, ""));
    wait_presence(&server, &mut b, mb, (&desk, bob, ""));
}

fn a_blocked_contact_sees_nothing_and_shows_nothing(rt: Runtime) {
    let server = server(rt);
    let (alice, bob) = (ALICE.0, BOB.0);
    let mut a = login(&server, ALICE, "desk");
    let mut b = login(&server, BOB, "phone");
    subscribe(&server, (&mut a, alice), (&mut b, bob));
    subscribe(&server, (&mut b, bob), (&mut a, alice));
    ask(
        &server,
        &mut b,
        "bl",
        "<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
    );
    // Bob blocks alice: the push reaches his resource that blocked too (XEP-0191 3.3),
    // and alice sees him go offline.
    let (mb, ma) = (b.mark(), a.mark());
    let result = ask(
        &server,
        &mut b,
        "blk",
        &format!("<iq type='set' id='blk'><block xmlns='urn:xmpp:blocking'><item jid='{alice}'/></block></iq>"),
    );
    assert!(result.contains("type='result'"), "{result}");
    b.wait_for("<block xmlns='urn:xmpp:blocking'>", mb)
        .unwrap_or_else(|e| panic!("the block push: {e}"));
    assert!(b.text()[mb..].contains(&format!("<item jid='{alice}'/>")));
    wait_presence(
        &server,
        &mut a,
        ma,
        (&format!("{bob}/phone"), alice, "unavailable"),
    );
    // Alice's presence no longer reaches bob, nor his her, at login or later.
    let (mb, ma) = (b.mark(), a.mark());
    a.send(b"<presence><show>away</show></presence>");
    b.send(b"<presence><show>dnd</show></presence>");
    let mut a2 = login(&server, ALICE, "laptop");
    sync(&server, &mut a);
    sync(&server, &mut a2);
    sync(&server, &mut b);
    let seen = |c: &Raw, mark: usize, of: &str| {
        presences(&c.text(), mark)
            .into_iter()
            .filter(|p| p.0.starts_with(of))
            .collect::<Vec<_>>()
    };
    assert_eq!(seen(&b, mb, alice), [], "bob sees nothing of alice");
    assert_eq!(seen(&a, ma, bob), [], "alice sees nothing of bob");
    assert_eq!(seen(&a2, 0, bob), [], "nor at her next login");
    // What bob sends her gets not-acceptable, subscription stanzas and directed presence too.
    let mark = b.mark();
    b.send(format!("<presence to='{alice}' type='unsubscribe' id='u1'/><presence to='{alice}/desk' id='d1'/>").as_bytes());
    let got = b
        .wait_for("id='d1'", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    for id in ["u1", "d1"] {
        let at = got
            .find(&format!("id='{id}'"))
            .unwrap_or_else(|| panic!("{id}: {got}"));
        let tail = &got[got[..at].rfind("<presence").unwrap()..];
        let stanza = &tail[..tail.find("</presence>").unwrap_or(tail.len())];
        assert!(
            stanza.contains("type='error'")
                && stanza.contains("<not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
            "{id}: {stanza}"
        );
    }
}

fn rosters_and_subscriptions_follow_rfc_6121_sections_2_and_3(rt: Runtime) {
    let server = server(rt);
    let (alice, bob, carol) = (ALICE.0, BOB.0, CAROL.0);
    let mut a = login(&server, ALICE, "desk");
    // RFC 6121 3.4.1: pre-approval is a stream feature.
    assert!(
        a.text()
            .contains("<sub xmlns='urn:xmpp:features:pre-approval'/>"),
        "{}",
        a.text()
    );
    // 2.1.5, 2.3.3: another account's roster is not hers to read or change.
    for (id, ty, item) in [
        ("g", "get", ""),
        ("s", "set", "<item jid='eve@localhost'/>"),
    ] {
        let got = ask(&server, &mut a, id, &format!("<iq type='{ty}' id='{id}' to='{bob}'><query xmlns='jabber:iq:roster'>{item}</query></iq>"));
        assert!(
            got.contains("type='error'")
                && got.contains("<forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
            "{got}"
        );
    }
    // 3.4.2: a pre-approval makes an item, approved, pushed.
    let mark = a.mark();
    a.send(format!("<presence to='{carol}' type='subscribed'/>").as_bytes());
    let got = a
        .wait_for("approved='true'", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    assert!(
        got.contains(&format!("jid='{carol}'")) && got.contains("subscription='none'"),
        "{got}"
    );
    // Carol asks and the server approves for alice.
    let mut c = login(&server, CAROL, "home");
    let mark = c.mark();
    c.send(format!("<presence to='{alice}' type='subscribe'/>").as_bytes());
    c.wait_for("type='subscribed'", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
    // A.3.1: bob's request comes once, not again when he repeats it.
    let mut b = login(&server, BOB, "phone");
    let mark = a.mark();
    b.send(format!("<presence to='{alice}' type='subscribe' id='one'/><presence to='{alice}' type='subscribe' id='two'/>").as_bytes());
    sync(&server, &mut b);
    sync(&server, &mut a);
    let got = &a.text()[mark..];
    assert_eq!(got.matches("type='subscribe'").count(), 1, "{got}");
    // 2.5.3: the request is not an item alice could remove.
    let got = ask(&server, &mut a, "rm", &format!("<iq type='set' id='rm'><query xmlns='jabber:iq:roster'><item jid='{bob}' subscription='remove'/></query></iq>"));
    assert!(
        got.contains("<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
        "{got}"
    );
    // 3.2.2: when alice cancels bob's subscription, her unavailable presence
    // comes before the cancellation.
    let mark = b.mark();
    a.send(format!("<presence to='{bob}' type='subscribed'/>").as_bytes());
    wait_presence(&server, &mut b, mark, (&format!("{alice}/desk"), bob, ""));
    let mark = b.mark();
    a.send(format!("<presence to='{bob}' type='unsubscribed'/>").as_bytes());
    let got = wait_presence(&server, &mut b, mark, (alice, bob, "unsubscribed"));
    let kinds: Vec<&str> = got.iter().map(|p| p.2.as_str()).collect();
    assert_eq!(kinds, ["unavailable", "unsubscribed"], "{got:?}");
}

fn offline_messages_wait_for_a_priority_that_is_not_negative(rt: Runtime) {
    let server = server(rt);
    let bob = BOB.0;
    let mut a = login(&server, ALICE, "desk");
    a.send(
        format!("<message to='{bob}' type='chat' id='m1'><body>for later</body></message>")
            .as_bytes(),
    );
    sync(&server, &mut a);
    // RFC 6121 8.5.2.1.1, XEP-0160: not to a resource of negative priority.
    let mut b = Raw::connect(server.c2s_addr());
    assert!(b.scram(node(bob), BOB.1).answer.contains("<success"));
    let mark = b.mark();
    b.send(super::hostile::HEADER.as_bytes());
    b.wait_for("</stream:features>", mark).expect("features");
    b.send(b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bot</resource></bind></iq><presence><priority>-1</priority></presence>");
    b.wait_for("</bind>", mark).expect("bind");
    sync(&server, &mut b);
    assert!(!b.text().contains("for later"), "{}", b.text());
    b.send(b"<presence><priority>0</priority></presence>");
    b.wait_for("for later", mark)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
}
