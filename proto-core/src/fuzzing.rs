//! Entry points for the fuzz targets in `fuzz/`, also replayed over the
//! seed corpora by the normal test run (see the tests at the bottom).
//!
//! Every function takes arbitrary bytes and must never panic; each checks
//! the invariants of its part of the core (the server only ever writes
//! well-formed XML, parse/serialize round trips are stable, ...).

use std::time::Duration;

use arbitrary::Unstructured;

use crate::sasl::scram::{ScramHash, ScramKeys, ScramServer, ServerBinding};
use crate::testing::HEADER;
pub use crate::testing::{test_tls, Fixture};
use crate::xml::{Element, StreamEvent, StreamParser, NS_CLIENT};
use crate::{ConnId, Limits, TlsConfigs};

/// Raw bytes into a fresh client stream, before authentication. The first
/// byte picks how the input is cut into reads.
pub fn c2s_preauth(tls: &TlsConfigs, data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut f = Fixture::new(tls);
    let id = f.connect();
    feed_in_pieces(&mut f, id, rest, cut);
    f.advance(Duration::from_secs(700));
    f.check_output(id);
}

/// Raw bytes into an authenticated, bound session.
pub fn c2s_postauth(tls: &TlsConfigs, data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut f = Fixture::new(tls);
    let Some(other) = f.login("user1", "peer") else {
        panic!("login failed")
    };
    f.send(other, b"<presence/>");
    let Some(id) = f.login("user0", "fuzz") else {
        panic!("login failed")
    };
    feed_in_pieces(&mut f, id, rest, cut);
    f.advance(Duration::from_secs(300));
    f.check_output(id);
    f.check_output(other);
}

fn feed_in_pieces(f: &mut Fixture, id: ConnId, data: &[u8], cut: u8) {
    let size = usize::from(cut % 64) + 1;
    for chunk in data.chunks(size) {
        f.send(id, chunk);
    }
}

/// SASL exchanges: the first byte picks the mechanism and binding; the rest
/// is split at `0xff` bytes into client messages.
pub fn sasl(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut messages = rest.split(|&b| b == 0xff);
    let first = messages.next().unwrap_or_default();
    if sel & 0x80 != 0 {
        let _ = crate::sasl::parse_plain(first);
        return;
    }
    let hash = if sel & 1 == 0 {
        ScramHash::Sha1
    } else {
        ScramHash::Sha256
    };
    let binding = match sel & 6 {
        0 => ServerBinding::Unsupported,
        2 => ServerBinding::Available {
            data: vec![7; 32],
            plus: false,
        },
        _ => ServerBinding::Available {
            data: vec![7; 32],
            plus: true,
        },
    };
    let keys = ScramKeys::derive(hash, "pw", b"saltsaltsaltsalt", 16);
    let mut server = ScramServer::new(hash, binding);
    if server.client_first(first).is_err() {
        return;
    }
    let known = sel & 8 == 0;
    let Ok(_) = server.server_first(known.then_some(&keys), "servernonce", b"fakesalt") else {
        return;
    };
    if let Some(fin) = messages.next() {
        // A guessed proof must never succeed.
        assert!(
            server.client_final(fin).is_err() || known,
            "unknown user authenticated"
        );
    }
}

/// Stanza parsing and serialization: what parses serializes to something
/// that parses back to the same element; and the stream parser's
/// namespaces agree with rxml's own resolver on the same bytes.
pub fn stanza_roundtrip(data: &[u8]) {
    let limits = Limits::default();
    let mut p = StreamParser::new(&limits);
    let doc = [HEADER, data].concat();
    let mut input = &doc[..];
    let mut stanzas = Vec::new();
    let stopped = loop {
        match p.next(&mut input) {
            Ok(Some(StreamEvent::Stanza(el))) => stanzas.push(el),
            Ok(Some(_)) => {}
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let (reference, reference_failed) = rxml_stanzas(&doc);
    match stopped {
        // Limits and the text between stanzas are the stream parser's own
        // rules: up to where they stopped it, both agree.
        Some(
            crate::error::StreamErrorCondition::PolicyViolation
            | crate::error::StreamErrorCondition::BadFormat,
        ) => assert!(
            reference.len() >= stanzas.len()
                && reference.iter().zip(&stanzas).all(|(r, s)| same(r, s)),
            "{stanzas:?}\nrxml: {reference:?}"
        ),
        // Otherwise the same stanzas, and both refuse or both wait for more.
        _ => assert!(
            reference.len() == stanzas.len()
                && reference.iter().zip(&stanzas).all(|(r, s)| same(r, s))
                && reference_failed == stopped.is_some(),
            "stopped by {stopped:?}: {stanzas:?}\nrxml (failed: {reference_failed}): {reference:?}"
        ),
    }
    for el in stanzas {
        let xml = el.to_xml(NS_CLIENT);
        let back = crate::xml::parse_fragment(
            &xml,
            &Limits {
                max_stanza_size: 1 << 20,
                ..limits.clone()
            },
        )
        .unwrap_or_else(|| panic!("serialized stanza does not parse: {xml}"));
        assert_eq!(normalize(back), normalize(el), "round trip changed {xml}");
    }
}

/// The stanzas rxml's own parser (its namespace resolver, no limits) reads
/// from `doc` before it needs more bytes or fails, and whether it failed.
fn rxml_stanzas(doc: &[u8]) -> (Vec<Element>, bool) {
    use rxml::{Event, Parse};
    let mut parser = rxml::Parser::new();
    let mut input = doc;
    let mut stack: Vec<Element> = Vec::new();
    let mut depth = 0usize;
    let mut out = Vec::new();
    let failed = loop {
        let ev = match parser.parse(&mut input, false) {
            Ok(Some(ev)) => ev,
            Ok(None) | Err(rxml::error::EndOrError::NeedMoreData) => break false,
            Err(rxml::error::EndOrError::Error(_)) => break true,
        };
        match ev {
            Event::XmlDeclaration(..) => {}
            Event::StartElement(_, (ns, name), attrs) => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
                stack.push(Element {
                    ns: ns.as_str().to_owned(),
                    name: name.into_inner(),
                    attrs: attrs
                        .into_iter()
                        .map(|((ns, name), value)| crate::xml::Attr {
                            ns: ns.as_str().to_owned(),
                            name: name.into_inner(),
                            value,
                        })
                        .collect(),
                    children: Vec::new(),
                });
            }
            Event::EndElement(_) => {
                depth -= 1;
                let Some(el) = stack.pop() else {
                    // The stream closed.
                    break false;
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(crate::xml::Node::Element(el)),
                    None => out.push(el),
                }
            }
            Event::Text(_, text) => {
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(crate::xml::Node::Text(text));
                }
            }
        }
    };
    (out, failed)
}

/// The same element, whatever the order of the attributes and the cuts
/// between text nodes.
fn same(a: &Element, b: &Element) -> bool {
    fn key(el: &Element) -> Element {
        let mut el = normalize(el.clone());
        el.attrs
            .sort_by(|x, y| (&x.ns, &x.name).cmp(&(&y.ns, &y.name)));
        for c in &mut el.children {
            if let crate::xml::Node::Element(e) = c {
                *e = key(e);
            }
        }
        el
    }
    key(a) == key(b)
}

/// Adjacent text nodes merge when parsed back; compare merged.
fn normalize(mut el: Element) -> Element {
    let mut out: Vec<crate::xml::Node> = Vec::new();
    for n in el.children.drain(..) {
        match (out.last_mut(), n) {
            (_, crate::xml::Node::Text(t)) if t.is_empty() => {}
            (Some(crate::xml::Node::Text(prev)), crate::xml::Node::Text(t)) => prev.push_str(&t),
            (_, crate::xml::Node::Element(e)) => out.push(crate::xml::Node::Element(normalize(e))),
            (_, n) => out.push(n),
        }
    }
    el.children = out;
    el
}

/// JID parsing: normalization is idempotent and the parts recombine.
pub fn jid(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let Ok(j) = crate::address::parse_jid(text) else {
        return;
    };
    let again = crate::address::parse_jid(j.as_str()).expect("a normalized JID parses again");
    assert_eq!(again, j);
    let bare = j.to_bare();
    assert_eq!(
        crate::address::parse_bare(bare.as_str()).expect("bare parses"),
        bare
    );
    assert_eq!(
        crate::router::Router::new("localhost").route(&j) == crate::router::Route::Local,
        j.domain().as_str() == "localhost"
    );
}

/// Router and session manager decisions driven by arbitrary sequences of
/// operations: logins, presences, messages, roster and subscription
/// changes, blocking, disconnects, time, failing storage, stream
/// management (enable, `r`, `a` with any `h`, resumption of known and
/// unknown sessions on new connections), client state, carbons, the archive
/// (queries of fuzzed fields, ids and paging; preferences) and raw bytes.
pub fn sm_ops(tls: &TlsConfigs, data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut f = Fixture::new(tls);
    let mut sessions: Vec<ConnId> = Vec::new();
    let targets = [
        "user0@localhost",
        "user1@localhost/r0",
        "user2@localhost",
        "user3@localhost/r1",
        "nobody@localhost",
        "x@remote.example",
        "localhost",
        "user1@localhost/none",
    ];
    // Resumption ids handed out (XEP-0198), with their account.
    let mut resumable: Vec<(String, usize)> = Vec::new();
    for _ in 0..64 {
        let Ok(op) = u.int_in_range(0u8..=16) else {
            break;
        };
        let pick = |u: &mut Unstructured, n: usize| u.choose_index(n).unwrap_or(0);
        let target = targets[pick(&mut u, targets.len())];
        let session = (!sessions.is_empty()).then(|| sessions[pick(&mut u, sessions.len())]);
        match (op, session) {
            (0, _) | (_, None) => {
                let user = pick(&mut u, 4);
                let res = pick(&mut u, 2);
                if let Some(id) = f.login(&format!("user{user}"), &format!("r{res}")) {
                    sessions.push(id);
                }
            }
            (1, Some(s)) => {
                let prio = u.int_in_range(-1i8..=2).unwrap_or(0);
                f.send(
                    s,
                    format!("<presence><priority>{prio}</priority><status>s</status></presence>")
                        .as_bytes(),
                );
            }
            (2, Some(s)) => f.send(s, b"<presence type='unavailable'/>"),
            (3, Some(s)) => {
                let ty = ["chat", "normal", "headline", "groupchat", "error"][pick(&mut u, 5)];
                f.send(
                    s,
                    format!("<message to='{target}' type='{ty}' id='m'><body>hi</body></message>")
                        .as_bytes(),
                );
            }
            (4, Some(s)) => {
                let sub = if u.arbitrary::<bool>().unwrap_or(false) {
                    " subscription='remove'"
                } else {
                    ""
                };
                f.send(s, format!("<iq type='set' id='r'><query xmlns='jabber:iq:roster'><item jid='{target}'{sub}/></query></iq>").as_bytes());
            }
            (5, Some(s)) => {
                let ty = [
                    "subscribe",
                    "subscribed",
                    "unsubscribe",
                    "unsubscribed",
                    "probe",
                ][pick(&mut u, 5)];
                f.send(
                    s,
                    format!("<presence to='{target}' type='{ty}'/>").as_bytes(),
                );
            }
            (6, Some(s)) => {
                let verb = if u.arbitrary::<bool>().unwrap_or(false) {
                    "block"
                } else {
                    "unblock"
                };
                f.send(s, format!("<iq type='set' id='k'><{verb} xmlns='urn:xmpp:blocking'><item jid='{target}'/></{verb}></iq>").as_bytes());
            }
            (7, Some(s)) => {
                f.server.handle_eof(f.now, s);
                f.pump();
                sessions.retain(|&x| x != s);
            }
            (8, _) => {
                let secs = u.int_in_range(0u64..=400).unwrap_or(0);
                f.advance(Duration::from_secs(secs));
            }
            (9, _) => f.store_fails = u.arbitrary::<bool>().unwrap_or(false),
            (10, Some(s)) => {
                let resume = if u.arbitrary::<bool>().unwrap_or(false) {
                    " resume='true'"
                } else {
                    ""
                };
                let mark = f.received.get(&s).map_or(0, Vec::len);
                f.send(
                    s,
                    format!("<enable xmlns='urn:xmpp:sm:3'{resume}/>").as_bytes(),
                );
                let text = String::from_utf8_lossy(&f.received[&s][mark..]).into_owned();
                if let Some(at) = text.find("<enabled") {
                    let rest = &text[at..];
                    if let Some(i) = rest.find(" id='") {
                        let id: String = rest[i + 5..].chars().take_while(|&c| c != '\'').collect();
                        let user = f
                            .server
                            .sessions()
                            .iter()
                            .find(|x| x.conn == s)
                            .and_then(|x| x.jid.strip_prefix("user"))
                            .and_then(|j| j.chars().next())
                            .and_then(|c| c.to_digit(10))
                            .unwrap_or(0) as usize;
                        resumable.push((id, user));
                    }
                }
            }
            (11, Some(s)) => f.send(s, b"<r xmlns='urn:xmpp:sm:3'/>"),
            (12, Some(s)) => {
                let h = u.int_in_range(0u32..=12).unwrap_or(0);
                f.send(s, format!("<a xmlns='urn:xmpp:sm:3' h='{h}'/>").as_bytes());
            }
            (13, _) => {
                // A new connection resumes a session (known or not).
                let (previd, user) =
                    if resumable.is_empty() || u.arbitrary::<bool>().unwrap_or(false) {
                        ("unknown".to_owned(), pick(&mut u, 4))
                    } else {
                        resumable[pick(&mut u, resumable.len())].clone()
                    };
                let h = u.int_in_range(0u32..=12).unwrap_or(0);
                if let Some(id) = f.authenticate(&format!("user{user}")) {
                    f.send(
                        id,
                        format!("<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='{h}'/>")
                            .as_bytes(),
                    );
                    sessions.push(id);
                }
            }
            (14, Some(s)) => {
                let el = [
                    "<inactive xmlns='urn:xmpp:csi:0'/>",
                    "<active xmlns='urn:xmpp:csi:0'/>",
                    "<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
                    "<iq type='set' id='c'><disable xmlns='urn:xmpp:carbons:2'/></iq>",
                ][pick(&mut u, 4)];
                f.send(s, el.as_bytes());
            }
            (15, Some(s)) => {
                // The archive (XEP-0313): a query made of fuzzed parts, ids
                // that are in the archive or not, or preferences.
                let known: Vec<String> =
                    f.store.archive.iter().map(|(_, e)| e.id.clone()).collect();
                let mut id = || match u.int_in_range(0u8..=2).unwrap_or(0) {
                    0 if !known.is_empty() => known[pick(&mut u, known.len())].clone(),
                    1 => String::new(),
                    _ => "x".to_owned(),
                };
                let (a, b) = (id(), id());
                let max = u.int_in_range(0u32..=300).unwrap_or(0);
                let field = [
                    "with",
                    "start",
                    "end",
                    "after-id",
                    "before-id",
                    "ids",
                    "other",
                ][pick(&mut u, 7)];
                let value = [target, "2027-01-15T08:00:00Z", "bad", &a][pick(&mut u, 4)];
                let paging = [
                    format!("<after>{a}</after>"),
                    format!("<before>{b}</before>"),
                    "<before/>".to_owned(),
                    format!("<after>{a}</after><before>{b}</before>"),
                ][pick(&mut u, 4)]
                .clone();
                let flip = if u.arbitrary::<bool>().unwrap_or(false) {
                    "<flip-page/>"
                } else {
                    ""
                };
                let el = match pick(&mut u, 4) {
                    0 => "<iq type='get' id='p'><prefs xmlns='urn:xmpp:mam:2'/></iq>".to_owned(),
                    1 => format!("<iq type='set' id='p'><prefs xmlns='urn:xmpp:mam:2' default='{}'><always><jid>{target}</jid></always></prefs></iq>",
                        ["always", "never", "roster", "x"][pick(&mut u, 4)]),
                    _ => format!("<iq type='set' id='q'><query xmlns='urn:xmpp:mam:2' queryid='f'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field><field var='{field}'><value>{value}</value></field></x><set xmlns='http://jabber.org/protocol/rsm'><max>{max}</max>{paging}</set>{flip}</query></iq>"),
                };
                f.send(s, el.as_bytes());
            }
            (_, Some(s)) => {
                let len = u.int_in_range(0usize..=64).unwrap_or(0);
                let bytes = u.bytes(len).unwrap_or_default().to_vec();
                f.send(s, &bytes);
            }
        }
        sessions.retain(|s| !f.closed.contains(s));
    }
    for (id, _) in f.received.clone() {
        f.check_output(id);
    }
    assert_eq!(
        f.server.connection_count(),
        f.received.len() - f.closed.len()
    );
}

/// Kontalk's parsers of client input: the first byte picks an OpenPGP key
/// (parsed, its facts read, certified), a bridge certificate (parsed and
/// checked for registration and login) or a key with a revocation. A key
/// the server certifies must parse back, certified by it.
pub fn kontalk_keys(data: &[u8]) {
    use crate::kontalk::{bridge, keys};
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let server = crate::testing::test_server_key();
    let now = 1_800_000_000;
    match sel % 3 {
        0 => {
            let Ok(key) = keys::UserKey::parse(rest) else {
                return;
            };
            let _ = (key.fingerprint(), key.user_ids(), key.primary_rsa());
            let _ = (key.is_revoked(), key.expires(), key.is_expired(now));
            for jid in key.emails() {
                if let Ok(signed) = keys::certify(server, rest, &jid, [5; 32], now) {
                    let back = keys::UserKey::parse(&signed).expect("a certified key parses");
                    assert_eq!(back.fingerprint(), key.fingerprint());
                    assert!(back.certified_by(server, &jid), "certified by the server");
                }
            }
        }
        1 => {
            let _ = bridge::has_pgp_extension(rest);
            if let Ok(cert) = bridge::BridgeCert::parse(rest) {
                let _ = (cert.keyring().len(), cert.rsa());
            }
            let _ = bridge::check_registration(rest, "localhost");
            if let Ok(login) = bridge::check_login(rest, "localhost", server, now) {
                assert!(login.jid.ends_with("@localhost"), "{}", login.jid);
            }
        }
        _ => {
            if let Ok(key) = keys::verify_revocation(rest) {
                assert!(key.is_revoked());
            }
        }
    }
}

/// Kontalk registration forms before login: the input, split at `0xff`
/// bytes, gives the values of the phone step's fields, the code step's
/// code, a form type and a private key token; each request gets exactly one
/// answer, and the stream stays well-formed.
pub fn kontalk_register(tls: &TlsConfigs, data: &[u8]) {
    // Values a client can send: characters XML allows (others would end
    // the stream before the form is read).
    let xml_chars = |p: &[u8]| -> String {
        String::from_utf8_lossy(p)
            .chars()
            .filter(|&c| {
                matches!(c, '\t' | '\n' | '\r')
                    || (c >= ' ' && !matches!(c, '\u{fffe}' | '\u{ffff}'))
            })
            .collect()
    };
    let mut parts = data.split(|&b| b == 0xff).map(xml_chars);
    let mut next = || parts.next().unwrap_or_default();
    let (phone, force, challenge, code, form_type, token) =
        (next(), next(), next(), next(), next(), next());
    let mut f = Fixture::new(tls);
    f.server
        .set_kontalk_key(crate::testing::test_server_key().clone());
    let id = f.connect_client(crate::Listener::Starttls);
    f.open(id);
    let field = |var: &str, value: &str| {
        Element::new(crate::ns::DATA, "field")
            .with_attr("var", var)
            .with_child(Element::new(crate::ns::DATA, "value").with_text(value))
    };
    let iq = |id: &str, ty: &str, fields: Vec<Element>| {
        let x = fields.into_iter().fold(
            Element::new(crate::ns::DATA, "x").with_attr("type", "submit"),
            |x, f| x.with_child(f),
        );
        Element::new(NS_CLIENT, "iq")
            .with_attr("type", ty)
            .with_attr("id", id)
            .with_child(Element::new(crate::ns::REGISTER, "query").with_child(x))
            .to_xml(NS_CLIENT)
    };
    let requests = [
        (
            "get",
            "<iq type='get' id='get'><query xmlns='jabber:iq:register'/></iq>".to_owned(),
        ),
        (
            "phone",
            iq(
                "phone",
                "set",
                vec![
                    field("FORM_TYPE", "jabber:iq:register"),
                    field("phone", &phone),
                    field("force", &force),
                    field("challenge", &challenge),
                ],
            ),
        ),
        (
            "code",
            iq(
                "code",
                "set",
                vec![
                    field("FORM_TYPE", crate::kontalk::register::REGISTER_CODE),
                    field("code", &code),
                ],
            ),
        ),
        (
            "other",
            iq("other", "set", vec![field("FORM_TYPE", &form_type)]),
        ),
        (
            "token",
            Element::new(NS_CLIENT, "iq")
                .with_attr("type", "get")
                .with_attr("id", "token")
                .with_child(
                    Element::new(crate::ns::REGISTER, "query").with_child(
                        Element::new(crate::kontalk::register::REGISTER_ACCOUNT, "account")
                            .with_child(
                                Element::new(
                                    crate::kontalk::register::REGISTER_ACCOUNT,
                                    "privatekey",
                                )
                                .with_child(
                                    Element::new(
                                        crate::kontalk::register::REGISTER_ACCOUNT,
                                        "token",
                                    )
                                    .with_text(&token),
                                ),
                            ),
                    ),
                )
                .to_xml(NS_CLIENT),
        ),
    ];
    for (name, request) in requests {
        f.send(id, request.as_bytes());
        let answers = f
            .stanzas(id)
            .into_iter()
            .filter(|e| e.attr("id") == Some(name))
            .count();
        assert_eq!(answers, 1, "{name}: one answer");
    }
    f.check_output(id);
}

/// Bytes from another server of the network on an established Net link:
/// a test peer (`alpha.kontalk.net`, listed with the test certificate's
/// fingerprint) opens a link to `beta.kontalk.net` over real TLS, sends its
/// header, then the input, in pieces picked by the first byte. The server
/// must never panic, answer in well-formed XML, and end the link or keep
/// it up, never half of each.
pub fn net_link(tls: &TlsConfigs, data: &[u8]) {
    use std::io::{Read, Write};
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cert = crate::testing::test_certificate_der();
    let config = crate::Config {
        domain: "kontalk.net".into(),
        net: Some(crate::testing::test_network(
            "beta.kontalk.net",
            "alpha.kontalk.net",
            crate::tls::fingerprint(&cert),
        )),
        ..crate::Config::default()
    };
    let mut server = crate::Server::new(config, tls.clone(), [9; 32]).expect("valid config");
    let mut store = crate::testing::MemStore::default();
    store.add_account("carol", "pw");
    let mut now = std::time::Instant::now();
    server.handle_wall_clock(now, 1_800_000_000);
    let id = server.handle_accept(now, crate::Listener::Net, [192, 0, 2, 1].into());
    let name = rustls::pki_types::ServerName::try_from("beta.kontalk.net").expect("a name");
    let mut peer = rustls::ClientConnection::new(tls.net_client.clone(), name).expect("config");
    let mut received = Vec::new();
    let mut closed = false;
    // Moves bytes both ways until nothing moves.
    let mut pump = |server: &mut crate::Server,
                    peer: &mut rustls::ClientConnection,
                    now: std::time::Instant,
                    received: &mut Vec<u8>,
                    closed: &mut bool| loop {
        let mut moved = false;
        while let Some(ev) = server.poll_event() {
            moved = true;
            match ev {
                crate::Event::Transmit(t) => {
                    let mut buf = Vec::new();
                    server.poll_transmit(t, &mut buf);
                    let mut rd = &buf[..];
                    while !rd.is_empty() && !*closed {
                        if peer.read_tls(&mut rd).is_err() || peer.process_new_packets().is_err() {
                            *closed = true;
                        }
                        let _ = peer.reader().read_to_end(received);
                    }
                }
                crate::Event::Close(_) => *closed = true,
                crate::Event::Store(token, req) => {
                    let reply = store.answer(&req);
                    server.handle_store_reply(now, token, reply);
                }
                crate::Event::Connect { conn, .. } => {
                    server.handle_connect_failed(now, conn, "none here")
                }
                crate::Event::Resume(_)
                | crate::Event::SendCode(_)
                | crate::Event::Push(_)
                | crate::Event::Resolve { .. } => {}
            }
        }
        if !*closed && peer.wants_write() {
            let mut wire = Vec::new();
            while peer.wants_write() {
                let _ = peer.write_tls(&mut wire);
            }
            server.handle_data(now, id, &wire);
            moved = true;
        }
        if !moved {
            return;
        }
    };
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
                  xmlns:stream='http://etherx.jabber.org/streams' from='alpha.kontalk.net' \
                  to='beta.kontalk.net' version='1.0'>";
    let _ = peer.writer().write_all(header.as_bytes());
    pump(&mut server, &mut peer, now, &mut received, &mut closed);
    assert!(
        server.net_links_up() == ["alpha.kontalk.net"],
        "the link is up before the input"
    );
    let size = usize::from(cut % 64) + 1;
    for chunk in rest.chunks(size) {
        if closed {
            break;
        }
        let _ = peer.writer().write_all(chunk);
        pump(&mut server, &mut peer, now, &mut received, &mut closed);
    }
    now += Duration::from_secs(700);
    server.handle_timeout(now);
    pump(&mut server, &mut peer, now, &mut received, &mut closed);
    check_server_xml(&received, "the link");
    if closed {
        let up = server.net_links_up();
        assert!(up.is_empty(), "a link that was closed is not up: {up:?}");
    }
}

/// Bytes from another server on an inbound federation stream (plaintext,
/// TLS not required), before or after authentication (the first byte's
/// low bit; the rest of it cuts the input into reads of 1-64 bytes).
/// Before: the input is the stream from its first byte. After: a test peer
/// `remote.example` opens the stream to `localhost`, asks for dialback,
/// and answers the server's `db:verify` on the stream the server opens back
/// to it (a static route) as valid; then the input follows on the
/// authenticated stream, and 700 s of silence. The server must never
/// panic, write only well-formed XML on either stream, and report a stream
/// it closed as gone.
pub fn s2s_inbound(tls: &TlsConfigs, data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut w = S2sPeer::new(tls);
    let id = w
        .server
        .handle_accept(w.now, crate::Listener::S2s, [192, 0, 2, 1].into());
    if sel & 1 == 1 {
        w.authenticate(id);
    }
    let size = usize::from(sel >> 1) % 64 + 1;
    for chunk in rest.chunks(size) {
        if w.closed.contains(&id) {
            break;
        }
        w.server.handle_data(w.now, id, chunk);
        w.pump();
    }
    w.now += Duration::from_secs(700);
    w.server.handle_timeout(w.now);
    w.pump();
    for (conn, bytes) in &w.received {
        check_server_xml(bytes, &format!("s2s stream {}", conn.0));
    }
    if w.closed.contains(&id) {
        let inbound = w.server.s2s_status().iter().filter(|s| !s.outbound).count();
        assert_eq!(inbound, 0, "a closed inbound stream is still listed");
    }
}

/// One server (`localhost`, federation on, plaintext allowed) and what
/// it wrote on each of its server streams.
struct S2sPeer {
    server: crate::Server,
    store: crate::testing::MemStore,
    now: std::time::Instant,
    received: std::collections::HashMap<ConnId, Vec<u8>>,
    closed: std::collections::HashSet<ConnId>,
    /// The stream the server opened to `remote.example`.
    outbound: Option<ConnId>,
}

impl S2sPeer {
    fn new(tls: &TlsConfigs) -> S2sPeer {
        let config = crate::Config {
            domain: "localhost".into(),
            s2s: Some(crate::config::S2sConfig {
                require_tls: false,
                dialback_secret: b"fuzzing".to_vec(),
                routes: vec![crate::config::S2sRoute {
                    domain: "remote.example".into(),
                    host: "192.0.2.2".into(),
                    port: 5269,
                    direct_tls: false,
                }],
                ..crate::config::S2sConfig::default()
            }),
            ..crate::Config::default()
        };
        let mut server = crate::Server::new(config, tls.clone(), [7; 32]).expect("valid config");
        let mut store = crate::testing::MemStore::default();
        store.add_account("carol", "pw");
        let now = std::time::Instant::now();
        server.handle_wall_clock(now, 1_800_000_000);
        S2sPeer {
            server,
            store,
            now,
            received: Default::default(),
            closed: Default::default(),
            outbound: None,
        }
    }

    /// Runs the server's effects until there are none: output collected,
    /// storage answered, the connection to the route made.
    fn pump(&mut self) {
        while let Some(ev) = self.server.poll_event() {
            match ev {
                crate::Event::Transmit(t) => {
                    let mut buf = Vec::new();
                    self.server.poll_transmit(t, &mut buf);
                    assert!(
                        buf.is_empty() || !self.closed.contains(&t),
                        "output after close"
                    );
                    self.received.entry(t).or_default().extend_from_slice(&buf);
                }
                crate::Event::Close(c) => {
                    self.closed.insert(c);
                }
                crate::Event::Store(token, req) => {
                    let reply = self.store.answer(&req);
                    self.server.handle_store_reply(self.now, token, reply);
                }
                crate::Event::Connect { conn, .. } => {
                    if self.outbound.is_none() {
                        self.outbound = Some(conn);
                        self.server
                            .handle_connected(self.now, conn, [192, 0, 2, 2].into());
                    } else {
                        self.server
                            .handle_connect_failed(self.now, conn, "one stream only");
                    }
                }
                crate::Event::Resume(_)
                | crate::Event::SendCode(_)
                | crate::Event::Push(_)
                | crate::Event::Resolve { .. } => {}
            }
        }
    }

    /// `remote.example` authenticates inbound stream `id` by dialback.
    fn authenticate(&mut self, id: ConnId) {
        let header = |from: &str, to: &str, id: &str| {
            format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
                 xmlns:stream='http://etherx.jabber.org/streams' \
                 xmlns:db='jabber:server:dialback' from='{from}' to='{to}'{id} version='1.0'>"
            )
        };
        let open = header("remote.example", "localhost", "");
        self.server.handle_data(self.now, id, open.as_bytes());
        self.server.handle_data(
            self.now,
            id,
            b"<db:result from='remote.example' to='localhost'>0123abcd</db:result>",
        );
        self.pump();
        let out = self
            .outbound
            .expect("the server connects to the authoritative server");
        // As the authoritative server: a header, dialback offered, and
        // whatever key the server asks about is valid.
        let answer = header("remote.example", "localhost", " id='auth1'")
            + "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>";
        self.server.handle_data(self.now, out, answer.as_bytes());
        self.pump();
        let said = String::from_utf8_lossy(&self.received[&out]).into_owned();
        let stream_id = said
            .split("<db:verify ")
            .nth(1)
            .and_then(|v| v.split(" id='").nth(1))
            .and_then(|v| v.split('\'').next())
            .unwrap_or_else(|| panic!("no db:verify asked: {said}"))
            .to_owned();
        let valid = format!(
            "<db:verify from='remote.example' to='localhost' id='{stream_id}' type='valid'/>"
        );
        self.server.handle_data(self.now, out, valid.as_bytes());
        self.pump();
        let authed = self
            .server
            .s2s_status()
            .iter()
            .any(|s| !s.outbound && s.remote == "remote.example" && s.auth == "dialback");
        assert!(
            authed,
            "the inbound stream is authenticated before the input"
        );
    }
}

/// What a server wrote on a stream is well-formed XML, up to where it
/// stopped (or to its `<proceed/>`: TLS records follow).
fn check_server_xml(bytes: &[u8], what: &str) {
    let mut p = StreamParser::new(&Limits {
        max_stanza_size: 1 << 20,
        ..Limits::default()
    });
    let mut input = bytes;
    loop {
        match p.next(&mut input) {
            Ok(Some(StreamEvent::End)) | Ok(None) => break,
            Ok(Some(StreamEvent::Stanza(el))) if el.is(crate::ns::TLS, "proceed") => break,
            Ok(Some(_)) => {}
            Err(e) => panic!(
                "the server wrote bad XML on {what}: {e:?}\n{}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(4096)])
            ),
        }
    }
}

/// Fuzz target `dns_answers`: the S2S resolver of `example.org` against a
/// name server that answers each question with the next piece of the input
/// (two bytes of length, then the piece): the question itself turned into
/// an answer with the piece as its records (even first byte), or the piece
/// as a whole message with the question's id (odd). A piece too short goes
/// unanswered (the question times out). The resolver must never panic, end
/// within a bounded number of steps, and hand out a bounded number of
/// addresses.
pub fn dns_answers(data: &[u8]) {
    use crate::dns::{Resolution, Step};
    use rand_core::SeedableRng;
    let Some((&seed, mut rest)) = data.split_first() else {
        return;
    };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(seed));
    let mut now = std::time::Instant::now();
    let mut r = Resolution::new("example.org", now, &mut rng);
    let mut candidates = 0;
    for _ in 0..20_000 {
        match r.poll(now, &mut rng) {
            Step::Query(q) => {
                if rest.len() < 2 {
                    continue;
                }
                let n = (usize::from(u16::from_be_bytes([rest[0], rest[1]])) % 1024)
                    .min(rest.len() - 2);
                let piece = &rest[2..2 + n];
                rest = &rest[2 + n..];
                let Some((&how, records)) = piece.split_first() else {
                    continue;
                };
                let answer = if how % 2 == 0 {
                    // The question, as a response with `records` after it:
                    // QR set, the answer count from the piece.
                    let mut a = q.bytes.clone();
                    if a.len() >= 12 {
                        a[2] |= 0x80;
                        a[6] = 0;
                        a[7] = how / 2;
                    }
                    a.extend_from_slice(records);
                    a
                } else {
                    let mut a = records.to_vec();
                    if a.len() >= 2 {
                        a[..2].copy_from_slice(&q.id.to_be_bytes());
                    }
                    a
                };
                r.handle_answer(now, &answer);
            }
            Step::Candidate(_) => {
                candidates += 1;
                assert!(candidates <= 4096, "too many addresses handed out");
            }
            Step::Waiting => {
                now = r.poll_timeout().expect("a deadline while waiting");
                r.handle_timeout(now);
            }
            Step::Exhausted(_) => return,
        }
    }
    panic!("the resolution did not end");
}

/// Fuzz target `http_upload`: the upload listener's decisions on
/// arbitrary bytes, read as the host reads them (a head, its body skipped,
/// the next head). The first two bytes pick the slot the requests meet
/// (its state, whether it has a type, its size); then a file name of up to
/// 32 bytes and a content type of up to 32 (kept only if a media type, as
/// the core keeps it). Checked: a head parses the same whole or fed in
/// pieces, never longer than [`MAX_HEAD`](crate::upload::http::MAX_HEAD)
/// or the input; a token is 40 lowercase hex digits; a PUT is accepted only
/// for a reserved slot in its time with the slot's exact length; a range
/// lies inside the file; and every answer's head is lines of printable
/// text ending in `\r\n\r\n`, with exactly the fields it writes (nothing
/// the file name or type could inject).
pub fn http_upload(data: &[u8]) {
    use crate::store::{UploadSlot, UploadState};
    use crate::upload::http::{self, Method};
    let [pick, size, rest @ ..] = data else {
        return;
    };
    let take = |rest: &mut &[u8]| -> String {
        let n = rest
            .first()
            .map_or(0, |&n| usize::from(n % 33))
            .min(rest.len().saturating_sub(1));
        let piece = rest.get(1..1 + n).unwrap_or_default();
        *rest = rest.get(1 + n..).unwrap_or_default();
        String::from_utf8_lossy(piece).into_owned()
    };
    let mut rest = rest;
    let filename = take(&mut rest);
    let ty = take(&mut rest);
    let slot = UploadSlot {
        token: "ab".repeat(crate::upload::TOKEN_BYTES),
        username: "alice".into(),
        filename,
        size: u64::from(*size),
        content_type: if pick & 4 != 0 && http::is_media_type(&ty) {
            ty
        } else {
            String::new()
        },
        put_by: 100,
        expires: 1000,
        state: match pick % 3 {
            0 => UploadState::Reserved,
            1 => UploadState::Uploading,
            _ => UploadState::Stored,
        },
        legacy: pick & 8 != 0,
    };
    let now = u64::from(pick >> 4) * 80;
    let check_head = |out: &[u8], fields: Option<usize>| {
        let text = std::str::from_utf8(out).expect("an answer's head is text");
        let head = text.split("\r\n\r\n").next().expect("a head");
        assert!(text.contains("\r\n\r\n"), "{text:?}");
        for line in head.split("\r\n") {
            assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}");
        }
        if let Some(n) = fields {
            assert_eq!(head.split("\r\n").count(), n, "{head:?}");
        }
    };
    let mut input = rest;
    for _ in 0..64 {
        let whole = match http::parse_head(input) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(status) => {
                check_head(&http::refusal(status, false), None);
                return;
            }
        };
        assert!(whole.len <= input.len() && whole.len <= http::MAX_HEAD);
        // The same head from every longer prefix, and from the exact one.
        let exact = http::parse_head(&input[..whole.len]);
        assert_eq!(exact, Ok(Some(whole.clone())));
        if whole.len > 1 {
            let short = http::parse_head(&input[..whole.len - 1]);
            assert!(!matches!(short, Ok(Some(_))), "{short:?}");
        }
        if let Some(token) = http::token_of(&whole.path) {
            assert!(token.len() == 40 && token.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let known = http::token_of(&whole.path) == Some(slot.token.as_str());
        let found = known
            .then_some(&slot)
            .or(Some(&slot).filter(|_| pick & 16 != 0));
        match whole.method {
            Method::Put => match http::put(&whole, found, now) {
                Ok(n) => {
                    let s = found.expect("a PUT only to a slot");
                    assert_eq!(n, s.size);
                    assert_eq!(whole.content_length, Some(s.size));
                    assert!(s.state == UploadState::Reserved && now <= s.put_by);
                    assert!(!whole.transfer_encoding);
                    let stored = http::stored_type(&whole, s);
                    assert!(http::is_media_type(&stored), "{stored:?}");
                    check_head(&http::put_done(s.legacy, whole.keep_alive), None);
                }
                Err(status) => check_head(&http::refusal(status, whole.keep_alive), None),
            },
            Method::Get | Method::Head => match http::get(&whole, found, now) {
                Ok(serve) => {
                    let s = found.expect("served from a slot");
                    assert!(s.state == UploadState::Stored && now < s.expires);
                    assert!(serve.start.saturating_add(serve.len) <= serve.total);
                    assert_eq!(serve.total, s.size);
                    assert!(serve.partial || (serve.start == 0 && serve.len == serve.total));
                    assert!(!serve.partial || serve.len > 0);
                    // Status, type, length, ranges, cache, tag, name, the
                    // three of every answer, and a range's Content-Range.
                    let fields = 10 + usize::from(serve.partial) + usize::from(!whole.keep_alive);
                    check_head(
                        &http::file_head(s, &serve, now, whole.keep_alive),
                        Some(fields),
                    );
                }
                Err(status) => check_head(&http::refusal(status, whole.keep_alive), None),
            },
            Method::Options => check_head(&http::preflight(whole.keep_alive), None),
            Method::Other => {
                check_head(&http::refusal(http::Status::MethodNotAllowed, false), None)
            }
        }
        // The body (as far as there is input), then the next request.
        let body = usize::try_from(whole.content_length.unwrap_or(0)).unwrap_or(usize::MAX);
        input = input
            .get(whole.len.saturating_add(body)..)
            .unwrap_or_default();
        if input.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_logs_in() {
        let tls = test_tls();
        let mut f = Fixture::new(&tls);
        let id = f.login("user0", "r").expect("login");
        assert!(String::from_utf8_lossy(&f.received[&id]).contains("user0@localhost/r"));
    }
}
