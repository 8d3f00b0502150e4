use std::time::Duration;

use super::{file_url, http, over_quota, UPLOAD, UPLOAD_LEGACY};
use crate::ns;
use crate::store::{UploadSlot, UploadState};
use crate::testing::{answer, test_tls, Fixture};
use crate::xml::Element;
use crate::{Config, UploadConfig};

/// The fixture's wall clock at its start (see `Fixture::with_config`).
const START: u64 = 1_800_000_000;

fn fixture(quota: u64) -> Fixture {
    let mut upload = UploadConfig::new("localhost", "https://localhost:5443/");
    upload.max_file_size = 1000;
    upload.quota = quota;
    let config = Config {
        require_tls: false,
        upload: Some(upload),
        ..Config::default()
    };
    let mut h = Fixture::with_config(config, &test_tls(), [3; 32]);
    h.store.add_account("alice", "secret");
    h.store.add_account("bob", "secret");
    h
}

fn request(legacy: bool, id: &str, name: &str, size: &str, ty: &str) -> String {
    if legacy {
        format!(
            "<iq to='media.localhost' type='get' id='{id}'><request xmlns='{UPLOAD_LEGACY}'>\
             <filename>{name}</filename><size>{size}</size><content-type>{ty}</content-type>\
             </request></iq>"
        )
    } else {
        format!(
            "<iq to='media.localhost' type='get' id='{id}'><request xmlns='{UPLOAD}' \
             filename='{name}' size='{size}' content-type='{ty}'/></iq>"
        )
    }
}

/// The put and get URLs of a slot answer.
fn urls(slot: &Element, legacy: bool) -> (String, String) {
    let namespace = if legacy { UPLOAD_LEGACY } else { UPLOAD };
    let url = |name: &str| {
        let el = slot
            .child(namespace, name)
            .unwrap_or_else(|| panic!("{slot:?}"));
        if legacy {
            el.text()
        } else {
            el.attr("url").unwrap().to_owned()
        }
    };
    (url("put"), url("get"))
}

#[test]
fn both_versions_get_a_slot_from_the_service_once_the_store_kept_it() {
    let mut h = fixture(0);
    let a = h.session("alice", "secret", "phone");
    // Found among the domain's items, as the Kontalk client looks.
    h.send(
        a,
        "<iq to='localhost' type='get' id='i'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    );
    let got = h.stanzas(a);
    let jids: Vec<&str> = answer(&got, "i")
        .0
        .child(ns::DISCO_ITEMS, "query")
        .unwrap()
        .elements()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert_eq!(jids, ["media.localhost"]);
    h.send(
        a,
        "<iq to='media.localhost' type='get' id='f'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    );
    let got = h.stanzas(a);
    let (info, error) = answer(&got, "f");
    assert_eq!(error, None);
    assert_eq!(info.attr("from"), Some("media.localhost"));
    let q = info.child(ns::DISCO_INFO, "query").unwrap();
    let features: Vec<&str> = q
        .elements()
        .filter(|f| f.name == "feature")
        .filter_map(|f| f.attr("var"))
        .collect();
    assert!(features.contains(&UPLOAD) && features.contains(&UPLOAD_LEGACY));
    let identity = q.child(ns::DISCO_INFO, "identity").unwrap();
    assert_eq!(
        (identity.attr("category"), identity.attr("type")),
        (Some("store"), Some("file"))
    );
    // XEP-0363 section 6: the limit, in a form of each namespace.
    let forms: Vec<(String, String)> = q
        .elements()
        .filter(|x| x.name == "x")
        .map(|x| {
            let form = crate::forms::Submitted::read(x);
            (
                form.form_type().unwrap().to_owned(),
                form.value("max-file-size").unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        forms,
        [
            (UPLOAD.to_owned(), "1000".to_owned()),
            (UPLOAD_LEGACY.to_owned(), "1000".to_owned())
        ]
    );

    for legacy in [true, false] {
        h.hold_store();
        h.send(a, request(legacy, "s", "photo 1.jpg", "1000", "image/jpeg"));
        assert!(h.stanzas(a).is_empty(), "no slot before the store kept it");
        for (token, req) in h.release_store() {
            let reply = h.store.answer(&req);
            h.server.handle_store_reply(h.now, token, reply);
        }
        h.pump();
        let got = h.stanzas(a);
        let (reply, error) = answer(&got, "s");
        assert_eq!(error, None, "{reply:?}");
        assert_eq!(reply.attr("from"), Some("media.localhost"));
        let slot = reply
            .elements()
            .next()
            .unwrap_or_else(|| panic!("{reply:?}"));
        assert_eq!(slot.name, "slot");
        let (put, get) = urls(slot, legacy);
        assert_eq!(put, get);
        let kept = h.store.uploads.last().unwrap().clone();
        assert_eq!(
            put,
            format!("https://localhost:5443/upload/{}/photo%201.jpg", kept.token)
        );
        assert_eq!(
            http::token_of(put.strip_prefix("https://localhost:5443").unwrap()),
            Some(kept.token.as_str())
        );
        assert_eq!(
            (
                kept.username.as_str(),
                kept.size,
                kept.content_type.as_str(),
                kept.legacy,
                kept.state
            ),
            ("alice", 1000, "image/jpeg", legacy, UploadState::Reserved)
        );
        assert_eq!(kept.put_by, START + 300);
        assert_eq!(kept.expires, START + 30 * 24 * 3600);
    }
    let tokens: Vec<&str> = h.store.uploads.iter().map(|s| s.token.as_str()).collect();
    assert_ne!(tokens[0], tokens[1], "every slot has its own token");
}

#[test]
fn a_file_too_large_is_refused_with_the_limit_in_its_version() {
    let mut h = fixture(0);
    let a = h.session("alice", "secret", "phone");
    for (legacy, limit) in [(true, "max-size"), (false, "max-file-size")] {
        h.send(
            a,
            request(legacy, "big", "a.bin", "1001", "application/octet-stream"),
        );
        let got = h.stanzas(a);
        let (reply, error) = answer(&got, "big");
        assert_eq!(error.as_deref(), Some("not-acceptable"));
        let err = reply.child(ns::CLIENT, "error").unwrap();
        assert_eq!(err.attr("type"), Some("modify"));
        let namespace = if legacy { UPLOAD_LEGACY } else { UPLOAD };
        let max = err
            .child(namespace, "file-too-large")
            .and_then(|f| f.child(namespace, limit))
            .unwrap_or_else(|| panic!("{reply:?}"));
        assert_eq!(max.text(), "1000");
    }
    assert!(h.store.uploads.is_empty());
}

#[test]
fn malformed_requests_are_bad_requests_and_keep_nothing() {
    let mut h = fixture(0);
    let a = h.session("alice", "secret", "phone");
    for (i, (name, size, ty)) in [
        ("", "10", "image/png"),
        ("a/b.png", "10", "image/png"),
        ("a.png", "", "image/png"),
        ("a.png", "-1", "image/png"),
        ("a.png", "1e3", "image/png"),
        ("a.png", "99999999999999999999999", "image/png"),
        ("a.png", "10", "png"),
        ("a.png", "10", "image/png&#13;&#10;X: y"),
    ]
    .into_iter()
    .enumerate()
    {
        for legacy in [true, false] {
            let id = format!("b{i}{legacy}");
            h.send(a, request(legacy, &id, name, size, ty));
            assert_eq!(
                answer(&h.stanzas(a), &id).1.as_deref(),
                Some("bad-request"),
                "{name:?} {size:?} {ty:?}"
            );
        }
    }
    // The name may be long and anything but a control or a slash.
    let long = "é".repeat(128);
    h.send(a, request(false, "long", &long, "1", "text/plain"));
    assert_eq!(
        answer(&h.stanzas(a), "long").1.as_deref(),
        Some("bad-request")
    );
    // A set is not a request; neither is an unknown payload.
    h.send(
        a,
        format!("<iq to='media.localhost' type='set' id='set'><request xmlns='{UPLOAD}' filename='a' size='1'/></iq>"),
    );
    assert_eq!(
        answer(&h.stanzas(a), "set").1.as_deref(),
        Some("service-unavailable")
    );
    assert!(h.store.uploads.is_empty());
    // Without a content type (optional in both versions): the PUT's is kept.
    h.send(
        a,
        format!("<iq to='media.localhost' type='get' id='nt'><request xmlns='{UPLOAD}' filename='a' size='1'/></iq>"),
    );
    assert_eq!(answer(&h.stanzas(a), "nt").1, None);
    assert_eq!(h.store.uploads[0].content_type, "");
}

#[test]
fn the_quota_counts_files_and_open_slots_until_they_stop_counting() {
    let mut h = fixture(2500);
    let a = h.session("alice", "secret", "phone");
    let b = h.session("bob", "secret", "phone");
    for id in ["q1", "q2"] {
        h.send(
            a,
            request(false, id, "a.bin", "1000", "application/octet-stream"),
        );
        assert_eq!(answer(&h.stanzas(a), id).1, None);
    }
    // The third would be 3000 bytes: refused until the first stops counting.
    h.send(
        a,
        request(true, "q3", "a.bin", "1000", "application/octet-stream"),
    );
    let got = h.stanzas(a);
    let (reply, error) = answer(&got, "q3");
    assert_eq!(error.as_deref(), Some("resource-constraint"));
    let err = reply.child(ns::CLIENT, "error").unwrap();
    assert_eq!(err.attr("type"), Some("wait"));
    let retry = err.child(UPLOAD_LEGACY, "retry").unwrap();
    assert_eq!(
        retry.attr("stamp"),
        Some(crate::timer::rfc3339(START + 300).as_str())
    );
    assert_eq!(h.store.uploads.len(), 2);
    // Another account has its own.
    h.send(
        b,
        request(false, "b1", "a.bin", "1000", "application/octet-stream"),
    );
    assert_eq!(answer(&h.stanzas(b), "b1").1, None);
    // A stored file counts until it expires; an unused slot until its PUT
    // may no longer start.
    h.store.uploads[0].state = UploadState::Stored;
    h.advance(Duration::from_secs(301));
    h.send(
        a,
        request(false, "q4", "a.bin", "1000", "application/octet-stream"),
    );
    assert_eq!(answer(&h.stanzas(a), "q4").1, None);
    h.send(
        a,
        request(false, "q5", "a.bin", "1000", "application/octet-stream"),
    );
    assert_eq!(
        answer(&h.stanzas(a), "q5").1.as_deref(),
        Some("resource-constraint")
    );
    // A file larger than the whole quota can never fit: no use waiting.
    let mut h = fixture(500);
    let a = h.session("alice", "secret", "phone");
    h.send(
        a,
        request(false, "q6", "a.bin", "501", "application/octet-stream"),
    );
    assert_eq!(
        answer(&h.stanzas(a), "q6").1.as_deref(),
        Some("not-acceptable")
    );
    assert!(h.store.uploads.is_empty());
}

#[test]
fn the_quota_rule_alone() {
    let slot = |token: &str, size, state, put_by, expires| UploadSlot {
        token: token.into(),
        username: "alice".into(),
        filename: "f".into(),
        size,
        content_type: String::new(),
        put_by,
        expires,
        state,
        legacy: false,
    };
    let new = slot("n", 500, UploadState::Reserved, 200, 1000);
    let stored = slot("s", 500, UploadState::Stored, 50, 900);
    let open = slot("o", 500, UploadState::Reserved, 150, 1000);
    let stale = slot("x", 500, UploadState::Reserved, 90, 1000);
    assert_eq!(over_quota(&new, [&stored, &open, &stale], 1500, 100), None);
    assert_eq!(
        over_quota(&new, [&stored, &open, &stale], 1499, 100),
        Some(150)
    );
    assert_eq!(over_quota(&new, [&stored, &open], 0, 100), None);
    assert_eq!(over_quota(&new, [], 499, 100), Some(100));
    assert_eq!(over_quota(&new, [&stored], 999, 901), None);
}

#[test]
fn only_this_servers_accounts_get_slots_and_only_from_the_service() {
    let mut h = fixture(0);
    let a = h.session("alice", "secret", "phone");
    // A full JID or a user at the service is nobody.
    h.send(
        a,
        format!("<iq to='x@media.localhost' type='get' id='u'><request xmlns='{UPLOAD}' filename='a' size='1'/></iq>"),
    );
    assert_eq!(
        answer(&h.stanzas(a), "u").1.as_deref(),
        Some("service-unavailable")
    );
    assert!(h.store.uploads.is_empty());
    assert_eq!(
        file_url("https://h:1", "t", "ä b/c?.png"),
        "https://h:1/upload/t/%C3%A4%20b%2Fc%3F.png"
    );
}

#[test]
fn without_the_service_the_domain_lists_none() {
    let config = Config {
        require_tls: false,
        ..Config::default()
    };
    let mut h = Fixture::with_config(config, &test_tls(), [3; 32]);
    h.store.add_account("alice", "secret");
    let a = h.session("alice", "secret", "phone");
    h.send(
        a,
        "<iq to='localhost' type='get' id='i'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
    );
    let got = h.stanzas(a);
    let (items, _) = answer(&got, "i");
    assert!(items
        .child(ns::DISCO_ITEMS, "query")
        .unwrap()
        .elements()
        .next()
        .is_none());
    h.send(a, request(false, "s", "a", "1", "text/plain"));
    assert_eq!(
        answer(&h.stanzas(a), "s").1.as_deref(),
        Some("remote-server-not-found")
    );
}
