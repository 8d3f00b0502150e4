//! The session manager end to end (RFC 6121 rosters, subscriptions, presence and delivery;
//! offline storage; XEP-0191 blocking; vcard-temp, entity time and last activity), driven by
//! slixmpp exactly as a client does it. Each scenario is one script in `tests/clients/` that
//! checks every step with its own deadline and prints what it saw; the tests here check the
//! record once more and fail with the script's output and the server's log.

use std::time::{SystemTime, UNIX_EPOCH};

use super::*;

// Once per runtime, as in `e2e.rs`.
per_runtime!(
    roster_add_and_push,
    subscribe_approve_and_presence_both_ways,
    offline_message_survives_kill_9,
    two_resources_and_priorities,
    carbons_show_both_sides_on_every_device,
    an_inactive_client_gets_messages_but_presence_only_when_active,
    a_dropped_connection_is_resumed_with_nothing_lost_or_doubled,
    the_archive_holds_both_sides_and_pages_through_them,
    an_acknowledged_message_survives_kill_9_in_the_archive,
    a_phone_that_drops_right_after_login_gets_its_messages_next_time,
    blocked_contact_messages_do_not_arrive,
    vcard_last_and_time,
);

/// Deadline of one scenario script (its own `--timeout`); below [`CLIENT_TIMEOUT`].
const SCENARIO_TIMEOUT: &str = "40";

/// A scenario script between alice and bob (`--jid-a`/`--jid-b`), run to completion.
fn scenario(python: &Path, server: &TestServer, script: &str) -> Run {
    run(
        slix(
            python,
            server,
            script,
            Tls::StartTls,
            &[
                "--jid-a",
                ALICE.0,
                "--password-a",
                ALICE.1,
                "--jid-b",
                BOB.0,
                "--password-b",
                BOB.1,
                "--timeout",
                SCENARIO_TIMEOUT,
            ],
        ),
        None,
        CLIENT_TIMEOUT,
    )
}

/// The script ran through: exit 0 and `RESULT ok` (else its output: the last `STEP` line is
/// where it stopped, the `RESULT fail` line says why).
#[track_caller]
fn assert_scenario(out: &Run, what: &str) {
    assert!(
        out.success() && out.has_line("RESULT ok"),
        "{what}: {}\n{}",
        out.value("RESULT").unwrap_or("no RESULT line"),
        out.describe()
    );
}

/// The bound full JIDs of `bare` (from the `BOUND` lines).
fn bound_of<'a>(out: &'a Run, bare: &str) -> Vec<&'a str> {
    out.lines("BOUND")
        .iter()
        .map(|l| l["BOUND".len()..].trim())
        .filter(|j| j.starts_with(&format!("{bare}/")))
        .collect()
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One `DELAYED <to> <from> <stamp> <unix-seconds> <age-seconds> <body>` line.
#[derive(Debug)]
struct Delayed {
    to: String,
    from: String,
    stamp: String,
    unix: Option<f64>,
    age: Option<f64>,
    body: String,
}

fn delayed(out: &Run) -> Vec<Delayed> {
    out.lines("DELAYED")
        .iter()
        .filter_map(|l| {
            let mut parts = l.splitn(7, ' ').skip(1);
            Some(Delayed {
                to: parts.next()?.to_string(),
                from: parts.next()?.to_string(),
                stamp: parts.next()?.to_string(),
                unix: parts.next()?.parse().ok(),
                age: parts.next()?.parse().ok(),
                body: parts.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// RFC 6121 section 2: roster set by one resource, pushes to both interested resources,
/// roster get, roster versioning, removal.
fn roster_add_and_push(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = run(
        slix(
            &python,
            &server,
            "roster.py",
            Tls::StartTls,
            &[
                "--jid",
                ALICE.0,
                "--password",
                ALICE.1,
                "--contact",
                BOB.0,
                "--timeout",
                SCENARIO_TIMEOUT,
            ],
        ),
        None,
        CLIENT_TIMEOUT,
    );
    assert_scenario(&out, "roster add, push, get, versioning, remove");
    assert!(
        out.has_line("FEATURE rosterver advertised"),
        "roster versioning (<ver xmlns='urn:xmpp:features:rosterver'/>) not advertised\n{}",
        out.describe()
    );

    let resources = bound_of(&out, ALICE.0);
    assert_eq!(resources.len(), 2, "{}", out.describe());
    let pushes = out.lines("PUSH");
    for resource in &resources {
        let added = format!(
            "PUSH {resource} - {} subscription=none name=Bob groups=Friends",
            BOB.0
        );
        let added_bare = added.replace(" - ", &format!(" {} ", ALICE.0));
        assert!(
            pushes.iter().any(|l| *l == added || *l == added_bare),
            "{resource} did not get the push {added:?}\n{}",
            out.describe()
        );
        assert!(
            pushes
                .iter()
                .any(|l| l.starts_with(&format!("PUSH {resource} "))
                    && l.contains(&format!(" {} subscription=remove", BOB.0))),
            "{resource} did not get the removal push\n{}",
            out.describe()
        );
    }
    assert_eq!(
        out.value("ITEM get"),
        Some(format!("{} subscription=none name=Bob groups=Friends", BOB.0).as_str()),
        "{}",
        out.describe()
    );
    assert!(
        out.has_line("VERSIONED current empty"),
        "a get with the current ver must get an empty result\n{}",
        out.describe()
    );
    let old = out.value("VERSIONED old").unwrap_or_default();
    assert!(
        old == "full" || old == "pushes",
        "a get with an old ver must get the roster (or pushes): {old:?}\n{}",
        out.describe()
    );
    if old == "pushes" {
        eprintln!("note: the server answered an old roster ver with pushes, not the full roster");
    }
}

/// RFC 6121 sections 3 and 4: subscribe, approve, subscribe back, approve; presence both
/// ways with show/status; unavailable on disconnect.
fn subscribe_approve_and_presence_both_ways(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = scenario(&python, &server, "subscribe.py");
    assert_scenario(&out, "subscription both ways");

    let alice = bound_of(&out, ALICE.0);
    let bob = bound_of(&out, BOB.0);
    assert!(alice.len() == 1 && bob.len() == 1, "{}", out.describe());
    let (alice, bob) = (alice[0], bob[0]);
    for line in [
        format!("ITEM {} {} subscription=both", ALICE.0, BOB.0),
        format!("ITEM {} {} subscription=both", BOB.0, ALICE.0),
        format!("PRESENCE {bob} {} subscribe", ALICE.0),
        format!("PRESENCE {alice} {} subscribe", BOB.0),
        format!("PRESENCE {alice} {} subscribed", BOB.0),
        format!("PRESENCE {bob} {} subscribed", ALICE.0),
        format!("PRESENCE {alice} {bob} available"),
        format!("PRESENCE {bob} {alice} available show=dnd status=busy"),
        format!("PRESENCE {alice} {bob} unavailable"),
    ] {
        assert!(out.has_line(&line), "no line {line:?}\n{}", out.describe());
    }
}

/// Offline storage is durable: stored messages survive SIGKILL of the server and come once,
/// in order, with XEP-0203 delay stamps.
fn offline_message_survives_kill_9(rt: Runtime) {
    let python = require!(python());
    let mut server = TestServer::with_users(rt, &[ALICE, BOB]);
    let started = now_unix();

    // bob is offline; alice sends two messages and stays online until the server dies.
    let mut alice = Background::spawn(slix(
        &python,
        &server,
        "send.py",
        Tls::StartTls,
        &[
            "--jid",
            ALICE.0,
            "--password",
            ALICE.1,
            "--to",
            BOB.0,
            "--body",
            "one",
            "--body",
            "two",
            "--pause",
            "0.3",
            "--linger",
            "30",
            "--timeout",
            SCENARIO_TIMEOUT,
        ],
    ));
    if let Err(why) = alice.wait_for("SENT-ALL", Duration::from_secs(30)) {
        panic!(
            "alice did not send: {why}\n{}",
            alice.finish(Duration::from_secs(5)).describe()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = now_unix();
    let status = server.kill9();
    assert!(
        status.is_some(),
        "kontalkd was not running any more when it was to be killed\n{}",
        server.log_report()
    );
    let sender = alice.finish(Duration::from_secs(10));
    let alice_full = bound_of(&sender, ALICE.0)
        .first()
        .map(|s| s.to_string())
        .unwrap_or_else(|| panic!("alice not bound\n{}", sender.describe()));
    assert_eq!(sender.lines("SENT").len(), 2, "{}", sender.describe());
    assert!(
        sender.lines("MESSAGE-ERROR").is_empty(),
        "messages to an offline user must be stored, not bounced\n{}",
        sender.describe()
    );

    server.restart();

    let inbox = |count: &str, settle: &str| {
        run(
            slix(
                &python,
                &server,
                "inbox.py",
                Tls::StartTls,
                &[
                    "--jid",
                    BOB.0,
                    "--password",
                    BOB.1,
                    "--count",
                    count,
                    "--settle",
                    settle,
                    "--timeout",
                    "30",
                ],
            ),
            None,
            CLIENT_TIMEOUT,
        )
    };
    let first = inbox("2", "2");
    assert_scenario(&first, "bob's first login after the restart");
    let got = received(&first);
    let bodies: Vec<&str> = got.iter().map(|(_, _, b)| b.as_str()).collect();
    assert_eq!(
        bodies,
        ["one", "two"],
        "bob must get both messages, oldest first, once\n{}\n{}",
        first.describe(),
        sender.describe()
    );
    assert!(
        got.iter().all(|(_, from, _)| *from == alice_full),
        "offline messages must come from alice's full JID {alice_full}\n{}",
        first.describe()
    );
    let stamps = delayed(&first);
    assert_eq!(
        stamps.len(),
        2,
        "each offline message needs <delay xmlns='urn:xmpp:delay' stamp=.../>\n{}",
        first.describe()
    );
    for d in &stamps {
        let (Some(unix), Some(age)) = (d.unix, d.age) else {
            panic!(
                "delay stamp {:?} of {:?} does not parse as an XEP-0082 DateTime\n{}",
                d.stamp,
                d.body,
                first.describe()
            );
        };
        assert!(
            (-5.0..300.0).contains(&age),
            "delay stamp {} is {age} s old\n{}",
            d.stamp,
            first.describe()
        );
        // Stamped when the server got it: after the test began, before the kill.
        assert!(
            unix >= started - 2.0 && unix <= killed_at + 2.0,
            "delay stamp {} is not between the start of the test and the kill\n{}",
            d.stamp,
            first.describe()
        );
        assert!(d.to.starts_with(&format!("{}/", BOB.0)), "{d:?}");
        assert_eq!(d.from, alice_full, "{d:?}");
    }
    assert!(
        stamps[0].unix <= stamps[1].unix,
        "stamps out of order: {:?}\n{}",
        stamps,
        first.describe()
    );

    // Delivered means gone: the next login gets nothing.
    let again = inbox("0", "3");
    assert_scenario(&again, "bob's second login");
    assert!(
        received(&again).is_empty() && again.value("COUNT") == Some("0"),
        "offline messages were delivered twice\n{}",
        again.describe()
    );
}

/// RFC 6121 8.5: a message to the bare JID goes to every non-negative resource; to a full JID
/// only there; with only negative resources online it is stored and comes with the next
/// non-negative initial presence.
fn two_resources_and_priorities(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = scenario(&python, &server, "priorities.py");
    assert_scenario(&out, "delivery by priority");

    let got = received(&out);
    let at = |prefix: &str| -> Vec<String> {
        let mut to: Vec<String> = got
            .iter()
            .filter(|(_, _, body)| body.starts_with(prefix))
            .map(|(to, _, _)| to.rsplit('/').next().unwrap_or("").to_string())
            .collect();
        to.sort();
        to
    };
    assert_eq!(at("to the bare JID"), ["high"], "{}", out.describe());
    assert_eq!(
        at(&format!("to {}/neg", BOB.0)),
        ["neg"],
        "{}",
        out.describe()
    );
    assert_eq!(at("while only priority -1"), ["back"], "{}", out.describe());
    assert!(
        delayed(&out)
            .iter()
            .any(|d| d.body.starts_with("while only priority -1") && d.age.is_some()),
        "the stored message came without a parsable delay stamp\n{}",
        out.describe()
    );
    assert!(
        got.iter()
            .all(|(_, from, _)| from.starts_with("alice@localhost/")),
        "{}",
        out.describe()
    );
}

/// XEP-0280 with slixmpp's plugin: the other device of the recipient gets a `received` copy,
/// the other device of the sender a `sent` one, and `private` keeps a message to one device.
fn a_phone_that_drops_right_after_login_gets_its_messages_next_time(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = scenario(&python, &server, "dropped.py");
    assert_scenario(&out, "dropped");
    assert_eq!(
        out.lines("STEP").len(),
        3,
        "every step ran\n{}",
        out.describe()
    );
}

fn the_archive_holds_both_sides_and_pages_through_them(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = scenario(&python, &server, "archive.py");
    assert_scenario(&out, "archive");
    assert_eq!(
        out.lines("STEP").len(),
        4,
        "every step ran\n{}",
        out.describe()
    );
}

/// A crash between the sender's ack and the recipient's: the message is in both archives,
/// once, and the recipient gets it again, once, at its next login (a message in flight to a
/// session with stream management stays stored until the client acknowledges it).
fn an_acknowledged_message_survives_kill_9_in_the_archive(rt: Runtime) {
    let python = require!(python());
    let mut server = TestServer::with_users(rt, &[ALICE, BOB]);
    let body = "acknowledged before the crash";
    let crash = |server: &TestServer, phase: &str, a: (&str, &str), b: (&str, &str)| {
        slix(
            &python,
            server,
            "crash.py",
            Tls::StartTls,
            &[
                "--jid-a",
                a.0,
                "--password-a",
                a.1,
                "--jid-b",
                b.0,
                "--password-b",
                b.1,
                "--body",
                body,
                "--linger",
                "30",
                "--settle",
                "2",
                "--timeout",
                SCENARIO_TIMEOUT,
                phase,
            ],
        )
    };
    let mut before = Background::spawn(crash(&server, "before", ALICE, BOB));
    if let Err(why) = before.wait_for("WAITING", Duration::from_secs(30)) {
        panic!(
            "the message was not acknowledged: {why}\n{}",
            before.finish(Duration::from_secs(5)).describe()
        );
    }
    assert!(
        server.kill9().is_some(),
        "kontalkd was not running any more when it was to be killed\n{}",
        server.log_report()
    );
    let before = before.finish(Duration::from_secs(10));
    assert!(
        before.has_line(&format!("ACKED {body}")),
        "{}",
        before.describe()
    );
    server.restart();
    for (who, with) in [(BOB, ALICE), (ALICE, BOB)] {
        let after = run(crash(&server, "after", who, with), None, CLIENT_TIMEOUT);
        assert_scenario(&after, "reading the archive after the restart");
        let archived: Vec<&str> = after
            .lines("ARCHIVED")
            .iter()
            .filter(|l| l.ends_with(body))
            .copied()
            .collect();
        assert_eq!(
            archived.len(),
            1,
            "{}'s archive must hold the message once\n{}\n{}",
            who.0,
            after.describe(),
            server.log_report()
        );
        let delivered = after
            .lines("RECEIVED")
            .iter()
            .filter(|l| l.ends_with(body))
            .count();
        let expected = usize::from(who == BOB);
        assert_eq!(
            delivered,
            expected,
            "{} must get the unacknowledged message {expected} time(s) after the restart\n{}",
            who.0,
            after.describe()
        );
    }
}

fn carbons_show_both_sides_on_every_device(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = scenario(&python, &server, "carbons.py");
    assert_scenario(&out, "carbons");
    assert_eq!(
        out.lines("STEP").len(),
        3,
        "every step ran\n{}",
        out.describe()
    );
}

/// XEP-0352 with slixmpp's plugin: while inactive, a message arrives at once and presence waits;
/// on `<active/>` the latest presence of the sender comes, and only that.
fn an_inactive_client_gets_messages_but_presence_only_when_active(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = scenario(&python, &server, "csi.py");
    assert_scenario(&out, "client state indication");
    assert_eq!(out.lines("STEP").len(), 2, "{}", out.describe());
}

/// XEP-0198 with slixmpp's plugin: the TCP connection is cut mid-conversation, the messages
/// written meanwhile wait, and the resumed session gets each message exactly once.
fn a_dropped_connection_is_resumed_with_nothing_lost_or_doubled(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = scenario(&python, &server, "resume.py");
    assert_scenario(&out, "stream management resumption");
    assert_eq!(out.lines("STEP").len(), 3, "{}", out.describe());
    assert!(
        server.log_text().contains("resume: conn="),
        "the server logged no resumption\n{}",
        out.describe()
    );
}

/// XEP-0191: blocked messages neither arrive nor vanish silently; unblocking restores them.
fn blocked_contact_messages_do_not_arrive(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = scenario(&python, &server, "blocking.py");
    assert!(
        out.has_line("FEATURE blocking advertised"),
        "urn:xmpp:blocking not in the server's disco#info\n{}",
        out.describe()
    );
    assert_scenario(&out, "blocking");

    assert_eq!(
        out.lines("BLOCKLIST"),
        [format!("BLOCKLIST {}", ALICE.0).as_str(), "BLOCKLIST"],
        "{}",
        out.describe()
    );
    let errors = out.lines("ERROR");
    assert_eq!(
        errors
            .iter()
            .filter(|l| l.starts_with(&format!("ERROR {}/", ALICE.0))
                && l.ends_with(" service-unavailable"))
            .count(),
        2,
        "alice must get service-unavailable for each blocked message\n{}",
        out.describe()
    );
    let bob_received: Vec<_> = received(&out)
        .into_iter()
        .filter(|(to, _, _)| to.starts_with(&format!("{}/", BOB.0)))
        .collect();
    assert_eq!(bob_received.len(), 1, "{}", out.describe());
    assert!(
        bob_received[0].2.starts_with("after the unblock"),
        "{}",
        out.describe()
    );
}

/// vcard-temp stored by the server for its users, entity time and uptime of the server.
fn vcard_last_and_time(rt: Runtime) {
    let python = require!(python());
    let server = TestServer::with_users(rt, &[ALICE, BOB]);
    let out = scenario(&python, &server, "server_info.py");
    assert_scenario(&out, "vcard, time, last activity");

    for line in [
        format!("VCARD {} {} FN=Alice A.", ALICE.0, ALICE.0),
        format!("VCARD {} {} FN=Alice A.", ALICE.0, BOB.0),
    ] {
        assert!(out.has_line(&line), "no line {line:?}\n{}", out.describe());
    }
    let time = out.value("TIME").unwrap_or_default();
    let offset: f64 = time
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::MAX);
    assert!(
        offset.abs() < 60.0,
        "server time off: {time:?}\n{}",
        out.describe()
    );
    let last: i64 = out.value("LAST").and_then(|s| s.parse().ok()).unwrap_or(-1);
    assert!(last >= 0, "no uptime\n{}", out.describe());
}
