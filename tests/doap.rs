//! `kontalkd.doap` says what the server supports: every feature the server advertises with
//! disco#info (XEP-0030) belongs to a XEP the DOAP lists, and every listed XEP that has a disco
//! feature is advertised.

use std::collections::BTreeSet;

use super::hostile::Raw;
use super::support::{repo_root, Runtime, ServerOptions, TestServer};
use super::ALICE;

per_runtime!(the_doap_lists_what_disco_info_advertises);

/// Each XEP with the disco#info features that say it is supported.
const FEATURES: &[(&str, &[&str])] = &[
    ("0012", &["jabber:iq:last"]),
    (
        "0030",
        &[
            "http://jabber.org/protocol/disco#info",
            "http://jabber.org/protocol/disco#items",
        ],
    ),
    ("0049", &["jabber:iq:private"]),
    ("0054", &["vcard-temp"]),
    ("0077", &["jabber:iq:register"]),
    ("0092", &["jabber:iq:version"]),
    ("0160", &["msgoffline"]),
    ("0191", &["urn:xmpp:blocking"]),
    ("0199", &["urn:xmpp:ping"]),
    ("0202", &["urn:xmpp:time"]),
    ("0237", &["urn:xmpp:features:rosterver"]),
    ("0280", &["urn:xmpp:carbons:2"]),
    ("0313", &["urn:xmpp:mam:2", "urn:xmpp:mam:2#extended"]),
    ("0359", &["urn:xmpp:sid:0"]),
    ("0357", &["urn:xmpp:push:0"]),
    ("0363", &["urn:xmpp:http:upload:0", "urn:xmpp:http:upload"]),
];

/// XEPs that have no disco#info feature (stream features, stanza payloads, DNS): the DOAP may
/// list them without the server advertising anything.
const WITHOUT_FEATURE: &[&str] = &[
    "0059", "0178", "0185", "0198", "0203", "0220", "0297", "0334", "0352", "0368", "0440", "0478",
];

/// The XEP numbers of the DOAP's `<xmpp:xep rdf:resource=".../xep-NNNN.html"/>`.
fn doap_xeps() -> BTreeSet<String> {
    let doap = std::fs::read_to_string(repo_root().join("kontalkd.doap")).expect("kontalkd.doap");
    const PREFIX: &str = "<xmpp:xep rdf:resource=\"https://xmpp.org/extensions/xep-";
    let xeps: BTreeSet<String> = doap
        .split(PREFIX)
        .skip(1)
        .map(|rest| {
            let (number, tail) = rest.split_at(4);
            assert!(
                number.bytes().all(|b| b.is_ascii_digit()) && tail.starts_with(".html\"/>"),
                "a malformed xmpp:xep: {PREFIX}{}",
                &rest[..rest.len().min(40)]
            );
            number.to_owned()
        })
        .collect();
    assert_eq!(
        xeps.len(),
        doap.matches("<xmpp:SupportedXep>").count(),
        "one xmpp:xep per xmpp:SupportedXep"
    );
    xeps
}

fn the_doap_lists_what_disco_info_advertises(rt: Runtime) {
    let server = TestServer::start(ServerOptions {
        require_encryption: false,
        // So that registration (XEP-0077) is advertised too.
        allow_registration: true,
        // So that file upload (XEP-0363) is, at its own address.
        upload: true,
        ..ServerOptions::with_users(rt, &[ALICE])
    });
    let user = ALICE.0.split('@').next().unwrap();
    let mut alice = Raw::login(server.c2s_addr(), user, ALICE.1, "doap");
    // The server's features, those of an account (the archive is the account's), and those
    // of the upload service.
    let mut answer = String::new();
    for to in ["localhost", ALICE.0, "media.localhost"] {
        let mark = alice.mark();
        alice.send(
            format!(
                "<iq type='get' to='{to}' id='disco-{to}'>\
                 <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            )
            .as_bytes(),
        );
        let got = alice
            .wait_for("</iq>", mark)
            .unwrap_or_else(|e| panic!("{e}\n{}", server.log_report()));
        assert!(got.contains("type='result'"), "{got}");
        answer.push_str(&got);
    }
    let advertised: BTreeSet<&str> = answer
        .split("<feature var='")
        .skip(1)
        .filter_map(|rest| rest.split_once('\'').map(|(var, _)| var))
        .collect();
    assert!(!advertised.is_empty(), "no features in {answer}");

    let doap = doap_xeps();
    for xep in &doap {
        assert!(
            FEATURES.iter().any(|(n, _)| n == xep) || WITHOUT_FEATURE.contains(&xep.as_str()),
            "XEP-{xep} is in kontalkd.doap but not in this test's tables: add it"
        );
    }
    for var in &advertised {
        let xep = FEATURES
            .iter()
            .find(|(_, vars)| vars.contains(var))
            .map(|(n, _)| *n)
            .unwrap_or_else(|| panic!("the server advertises {var}, which no XEP here names"));
        assert!(
            doap.contains(xep),
            "the server advertises {var} (XEP-{xep}), which kontalkd.doap does not list"
        );
    }
    for (xep, vars) in FEATURES.iter().filter(|(n, _)| doap.contains(*n)) {
        for var in *vars {
            assert!(
                advertised.contains(var),
                "kontalkd.doap lists XEP-{xep}, but disco#info does not advertise {var}: {answer}"
            );
        }
    }
}
