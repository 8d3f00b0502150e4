//! The message archive (XEP-0313, `urn:xmpp:mam:2`) with stanza ids
//! (XEP-0359) and result set paging (XEP-0059).
//!
//! - **What is kept.** A `chat` or `normal` message with a body or an
//!   end-to-end payload, unless its hints say `no-store` or
//!   `no-permanent-store` (XEP-0334), is archived for its local sender
//!   (when it goes out) and for its local recipient (when it comes in),
//!   as each one's preferences say. The recipient's copy gets a
//!   `<stanza-id by='recipient'/>` that is its id in the archive; one by the
//!   recipient that came with the message is removed (it would be forged).
//! - **Durability.** The archive writes are store requests sent while the
//!   sender's stanza is handled, so the sender's XEP-0198 `<a/>` (which
//!   waits for every request in flight) comes only once they are durable.
//!   A message stored offline is archived in the same request: a message
//!   refused for the offline quota is not archived either.
//! - **Queries** go to the store and come back as a page of result
//!   messages followed by the iq result with `<fin/>`; a page is cut short
//!   (`complete` false) when it would exceed half the output budget.
//! - Messages older than [`Config::archive_retention`](crate::Config) are
//!   deleted at maintenance.

use jid::{BareJid, FullJid, Jid};

use super::{username, Change, Deferred};
use crate::address::Bare;
use crate::effects::Pending;
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::{iq_result, IqType};
use crate::store::{
    ArchiveDefault, ArchiveEntry, ArchivePage, ArchivePrefs, ArchiveQuery, StoreReply, StoreRequest,
};
use crate::timer::{parse_datetime, rfc3339};
use crate::xml::{Element, Node};

/// Messages in a page when the query does not say.
pub(crate) const PAGE_DEFAULT: u32 = 50;
/// Most messages in one page, whatever the query asks.
pub(crate) const PAGE_MAX: u32 = 250;
/// Most archive ids in one `ids` query field.
const IDS_MAX: usize = 250;

/// Whether `el` belongs in an archive: a `chat` or `normal` message with a
/// body or an end-to-end payload, not hinted away, and not a copy of
/// another message (a carbon, an archive result).
pub(crate) fn archivable(el: &Element) -> bool {
    if !matches!(el.attr("type").unwrap_or("normal"), "chat" | "normal") {
        return false;
    }
    let mut content = false;
    for c in el.elements() {
        match (c.ns.as_str(), c.name.as_str()) {
            (ns::CLIENT, "body") => content = true,
            (ns::OPENPGP, "openpgp")
            | (ns::E2E, "e2e")
            | (ns::X_ENCRYPTED, "x")
            | (ns::OMEMO, "encrypted") => content = true,
            (ns::HINTS, "no-store" | "no-permanent-store") => return false,
            (ns::CARBONS, "received" | "sent") | (ns::MAM, "result") => return false,
            _ => {}
        }
    }
    content
}

/// Whether `prefs` keep messages with `with`; `in_roster` says whether
/// `with` is in the account's roster.
fn wanted(prefs: &ArchivePrefs, with: &str, in_roster: bool) -> bool {
    if prefs.never.iter().any(|j| j == with) {
        return false;
    }
    if prefs.always.iter().any(|j| j == with) {
        return true;
    }
    match prefs.default {
        ArchiveDefault::Always => true,
        ArchiveDefault::Never => false,
        ArchiveDefault::Roster => in_roster,
    }
}

/// `<stanza-id xmlns='urn:xmpp:sid:0' id by/>`.
pub(super) fn stanza_id(id: &str, by: &str) -> Element {
    Element::new(ns::SID, "stanza-id")
        .with_attr("id", id)
        .with_attr("by", by)
}

/// The `<prefs/>` element of `prefs`.
fn prefs_element(prefs: &ArchivePrefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        jids.iter().fold(Element::new(ns::MAM, name), |e, j| {
            e.with_child(Element::new(ns::MAM, "jid").with_text(j))
        })
    };
    Element::new(ns::MAM, "prefs")
        .with_attr("default", prefs.default.as_str())
        .with_child(list("always", &prefs.always))
        .with_child(list("never", &prefs.never))
}

/// The query form (XEP-0313 section 4.1.1), to an iq `get`.
fn query_form() -> Element {
    let field = |var: &str, ty: &str| {
        Element::new(ns::DATA, "field")
            .with_attr("var", var)
            .with_attr("type", ty)
    };
    let form = Element::new(ns::DATA, "x")
        .with_attr("type", "form")
        .with_child(
            field("FORM_TYPE", "hidden")
                .with_child(Element::new(ns::DATA, "value").with_text(ns::MAM)),
        )
        .with_child(field("with", "jid-single"))
        .with_child(field("start", "text-single"))
        .with_child(field("end", "text-single"))
        .with_child(field("before-id", "text-single"))
        .with_child(field("after-id", "text-single"))
        .with_child(field("ids", "text-multi"));
    Element::new(ns::MAM, "query").with_child(form)
}

/// A query as the client asked it, checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Asked {
    pub(crate) query: ArchiveQuery,
    /// Results newest first (`<flip-page/>`).
    pub(crate) flip: bool,
}

/// Reads a `<query/>` of `urn:xmpp:mam:2`: its form and its `<set/>`.
/// `Err` is the text of a `bad-request` (or, for a field this server does
/// not know, `feature-not-implemented`) error.
pub(crate) fn parse_query(
    query: &Element,
    mut parse_jid: impl FnMut(&str) -> Option<Jid>,
) -> Result<Asked, (SE, &'static str)> {
    let bad = |text| Err((SE::BadRequest, text));
    let mut q = ArchiveQuery {
        max: PAGE_DEFAULT,
        ..ArchiveQuery::default()
    };
    if let Some(form) = query.child(ns::DATA, "x") {
        for field in form.elements().filter(|f| f.is(ns::DATA, "field")) {
            let values: Vec<String> = field
                .elements()
                .filter(|v| v.is(ns::DATA, "value"))
                .map(|v| v.text())
                .collect();
            let one = || values.first().map(|v| v.trim().to_owned());
            match field.attr("var").unwrap_or_default() {
                "FORM_TYPE" => {
                    if one().as_deref() != Some(ns::MAM) {
                        return bad("the form is not urn:xmpp:mam:2");
                    }
                }
                "with" => match one().as_deref().map(&mut parse_jid) {
                    Some(Some(j)) => q.with = Some(j.to_string()),
                    Some(None) => return bad("'with' is not a JID"),
                    None => {}
                },
                "start" => match one().as_deref().map(parse_datetime) {
                    Some(Some(t)) => q.start = Some(t),
                    Some(None) => return bad("'start' is not an XEP-0082 DateTime"),
                    None => {}
                },
                "end" => match one().as_deref().map(parse_datetime) {
                    Some(Some(t)) => q.end = Some(t),
                    Some(None) => return bad("'end' is not an XEP-0082 DateTime"),
                    None => {}
                },
                "after-id" => q.after = one().filter(|v| !v.is_empty()),
                "before-id" => {
                    q.before = one().filter(|v| !v.is_empty());
                    q.from_end = q.before.is_some();
                }
                "ids" => {
                    q.ids = values.iter().map(|v| v.trim().to_owned()).collect();
                    if q.ids.len() > IDS_MAX {
                        return bad("too many ids");
                    }
                }
                _ => {
                    return Err((
                        SE::FeatureNotImplemented,
                        "a field of the query is not supported",
                    ))
                }
            }
        }
    }
    if let Some(set) = query.child(ns::RSM, "set") {
        if let Some(max) = set.child(ns::RSM, "max") {
            match max.text().trim().parse::<u32>() {
                Ok(n) => q.max = n.min(PAGE_MAX),
                Err(_) => return bad("<max/> is not a number"),
            }
        }
        if let Some(after) = set.child(ns::RSM, "after") {
            let id = after.text().trim().to_owned();
            if id.is_empty() {
                return bad("<after/> needs an id");
            }
            q.after = Some(id);
        }
        if let Some(before) = set.child(ns::RSM, "before") {
            // An empty <before/> asks for the last page.
            let id = before.text().trim().to_owned();
            q.before = (!id.is_empty()).then_some(id);
            q.from_end = true;
        }
        if set.child(ns::RSM, "index").is_some() {
            return Err((
                SE::FeatureNotImplemented,
                "paging by index is not supported",
            ));
        }
    }
    if let (Some(s), Some(e)) = (q.start, q.end) {
        if s > e {
            return bad("'start' is after 'end'");
        }
    }
    Ok(Asked {
        query: q,
        flip: query.child(ns::MAM, "flip-page").is_some(),
    })
}

impl Server {
    /// Whether `user` archives messages with `with` (bare JID).
    fn archives(&self, user: &BareJid, with: &BareJid) -> bool {
        if !self.config.archive {
            return false;
        }
        let Some(acc) = self.sm.account(user) else {
            return false;
        };
        let in_roster = || acc.roster.get(with.as_str()).is_some_and(|i| i.in_roster);
        wanted(&acc.archive_prefs, with.as_str(), in_roster())
    }

    /// A message from `sender` to `to` goes out: its copy in the sender's
    /// archive. Returns its archive id. A message to the sender's own
    /// account is archived once, as it comes in.
    pub(super) fn archive_sent(
        &mut self,
        sender: &FullJid,
        to: &Jid,
        el: &Element,
    ) -> Option<String> {
        let user = sender.bare();
        let with = to.bare();
        if with == user || !archivable(el) || !self.archives(&user, &with) {
            return None;
        }
        let stamp = self.clock.unix_now()?;
        let id = self.random_hex(8);
        let entry = ArchiveEntry {
            id: id.clone(),
            with: with.to_string(),
            with_full: to.to_string(),
            stamp,
            stanza: el.to_xml(ns::CLIENT),
        };
        self.fx.store(
            Pending::Ignore("the message went on, missing from the sender's archive"),
            StoreRequest::Archive {
                username: username(&user),
                entry,
            },
        );
        Some(id)
    }

    /// A message for `user` comes in from `from`: when `user` archives it,
    /// adds the stanza id of its archive copy, and returns the copy (its
    /// `stanza` is filled in once the message is serialized). One that has
    /// `user`'s stanza id already is being delivered again (see
    /// [`drop_claimed_ids`]), and is in the archive.
    pub(super) fn archive_received(
        &mut self,
        user: &BareJid,
        from: &Jid,
        el: &mut Element,
    ) -> Option<ArchiveEntry> {
        let by = user.as_str();
        let with = from.bare();
        if !archivable(el)
            || el
                .elements()
                .any(|c| c.is(ns::SID, "stanza-id") && c.attr("by") == Some(by))
            || !self.archives(user, &with)
        {
            return None;
        }
        let stamp = self.clock.unix_now()?;
        let id = self.random_hex(8);
        el.children.push(Node::Element(stanza_id(&id, by)));
        Some(ArchiveEntry {
            id,
            with: with.to_string(),
            with_full: from.to_string(),
            stamp,
            stanza: String::new(),
        })
    }

    /// Stores the recipient's archive copy of a message delivered to a
    /// session (`stanza` is the message as written).
    pub(super) fn archive_delivered(
        &mut self,
        user: &BareJid,
        mut entry: ArchiveEntry,
        stanza: &[u8],
    ) {
        entry.stanza = String::from_utf8_lossy(stanza).into_owned();
        self.fx.store(
            Pending::Ignore("the message was delivered, missing from the recipient's archive"),
            StoreRequest::Archive {
                username: username(user),
                entry,
            },
        );
    }

    /// An iq of `urn:xmpp:mam:2` from `user`'s own session.
    pub(super) fn archive_iq(
        &mut self,
        conn: ConnId,
        user: &BareJid,
        iq: &Element,
        payload: &Element,
    ) {
        if !self.config.archive {
            return self.reply_error(conn, iq, SE::ServiceUnavailable, None);
        }
        let get = IqType::of(iq) == Some(IqType::Get);
        match (payload.name.as_str(), get) {
            ("query", true) => self.send_stanza(conn, &iq_result(iq).with_child(query_form())),
            ("query", false) => self.query_archive(conn, user, iq, payload),
            ("prefs", true) => {
                let prefs = self
                    .sm
                    .account(user)
                    .map(|a| a.archive_prefs.clone())
                    .unwrap_or_default();
                self.send_stanza(conn, &iq_result(iq).with_child(prefs_element(&prefs)));
            }
            ("prefs", false) => self.set_prefs(conn, user, iq, payload),
            _ => self.reply_error(conn, iq, SE::FeatureNotImplemented, None),
        }
    }

    fn set_prefs(&mut self, conn: ConnId, user: &BareJid, iq: &Element, payload: &Element) {
        let Some(default) = payload.attr("default").and_then(ArchiveDefault::parse) else {
            return self.reply_error(
                conn,
                iq,
                SE::BadRequest,
                Some("default must be always, never or roster"),
            );
        };
        let mut lists = [Vec::new(), Vec::new()];
        for (list, name) in lists.iter_mut().zip(["always", "never"]) {
            for j in payload
                .child(ns::MAM, name)
                .into_iter()
                .flat_map(|l| l.elements())
                .filter(|j| j.is(ns::MAM, "jid"))
            {
                let Ok(jid) = self.jids.parse(j.text().trim()) else {
                    return self.reply_error(conn, iq, SE::BadRequest, Some("not a JID"));
                };
                let bare = jid.bare().to_string();
                if !list.contains(&bare) {
                    list.push(bare);
                }
            }
        }
        let [always, never] = lists;
        let prefs = ArchivePrefs {
            default,
            always,
            never,
        };
        let reply = iq_result(iq).with_child(prefs_element(&prefs));
        self.store_change(
            user,
            Some(Change::ArchivePrefs(prefs.clone())),
            vec![Deferred::Send(conn, reply)],
            StoreRequest::SetArchivePrefs {
                username: username(user),
                prefs,
            },
        );
    }

    fn query_archive(&mut self, conn: ConnId, user: &BareJid, iq: &Element, payload: &Element) {
        let jids = &mut self.jids;
        let asked = match parse_query(payload, |s| jids.parse(s).ok()) {
            Ok(a) => a,
            Err((cond, text)) => return self.reply_error(conn, iq, cond, Some(text)),
        };
        let Asked { query, flip } = asked;
        self.fx.store(
            Pending::Archive {
                conn,
                iq: iq.clone(),
                queryid: payload.attr("queryid").map(str::to_owned),
                flip,
            },
            StoreRequest::QueryArchive {
                username: username(user),
                query,
            },
        );
    }

    /// The store answered a query: the page's messages, then the iq
    /// result with `<fin/>`.
    pub(crate) fn archive_page(
        &mut self,
        conn: ConnId,
        iq: Element,
        queryid: Option<String>,
        flip: bool,
        reply: StoreReply,
    ) {
        let Some(me) = self.full_jid(conn) else {
            return;
        };
        let page: ArchivePage = match reply {
            StoreReply::ArchivePage(Some(page)) => page,
            StoreReply::ArchivePage(None) => {
                return self.reply_error(
                    conn,
                    &iq,
                    SE::ItemNotFound,
                    Some("no message with this id in the archive"),
                )
            }
            // A failure, logged where every store failure is.
            _ => return self.reply_error(conn, &iq, SE::InternalServerError, None),
        };
        let ArchivePage {
            messages,
            mut complete,
            count,
        } = page;
        let budget = self.config.limits.output_budget / 2;
        let bare = me.bare();
        let mut written = 0usize;
        let mut sent: Vec<String> = Vec::new();
        let order: Vec<usize> = if flip {
            (0..messages.len()).rev().collect()
        } else {
            (0..messages.len()).collect()
        };
        for i in order {
            let m = &messages[i];
            if written + m.stanza.len() > budget && !sent.is_empty() {
                complete = false;
                break;
            }
            let Some(original) = crate::xml::parse_fragment(&m.stanza, &self.config.limits) else {
                log::warn!("{bare}: skipping an unreadable archived message {}", m.id);
                continue;
            };
            written += m.stanza.len();
            let mut result = Element::new(ns::MAM, "result").with_attr("id", &m.id);
            if let Some(q) = &queryid {
                result.set_attr("queryid", Some(q));
            }
            let result = result.with_child(
                Element::new(ns::FORWARD, "forwarded")
                    .with_child(
                        Element::new(ns::DELAY, "delay").with_attr("stamp", &rfc3339(m.stamp)),
                    )
                    .with_child(original),
            );
            let msg = Element::new(ns::CLIENT, "message")
                .with_attr("from", bare.as_str())
                .with_attr("to", me.as_str())
                .with_child(result);
            self.send_stanza(conn, &msg);
            sent.push(m.id.clone());
        }
        let mut set = Element::new(ns::RSM, "set");
        if let (Some(first), Some(last)) = (sent.first(), sent.last()) {
            set = set
                .with_child(Element::new(ns::RSM, "first").with_text(first))
                .with_child(Element::new(ns::RSM, "last").with_text(last));
        }
        set = set.with_child(Element::new(ns::RSM, "count").with_text(&count.to_string()));
        let mut fin = Element::new(ns::MAM, "fin");
        if complete {
            fin.set_attr("complete", Some("true"));
        }
        let reply = iq_result(&iq).with_child(fin.with_child(set));
        self.send_stanza(conn, &reply);
    }

    /// Maintenance: archived messages past the retention time go.
    pub(crate) fn expire_archive(&mut self, unix: u64) {
        let keep = self.config.archive_retention.as_secs();
        if keep == 0 {
            return;
        }
        self.fx.store(
            Pending::Ignore("they are deleted at the next maintenance"),
            StoreRequest::ExpireArchive {
                before: unix.saturating_sub(keep),
            },
        );
    }
}

/// Removes from a message a client sends the `<stanza-id/>`s that claim
/// to be by its recipient `to` (XEP-0359 section 5): only the recipient's
/// server gives those. (A message that has one when it reaches the
/// recipient is one being delivered again, archived already.)
pub(super) fn drop_claimed_ids(el: &mut Element, to: &BareJid) {
    let to = to.as_str();
    el.children.retain(|n| match n {
        Node::Element(c) => !(c.is(ns::SID, "stanza-id") && c.attr("by") == Some(to)),
        Node::Text(_) => true,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(children: &[Element], ty: Option<&str>) -> Element {
        let mut m = Element::new(ns::CLIENT, "message");
        if let Some(t) = ty {
            m.set_attr("type", Some(t));
        }
        children.iter().fold(m, |m, c| m.with_child(c.clone()))
    }

    #[test]
    fn what_is_archived() {
        let body = Element::new(ns::CLIENT, "body").with_text("hi");
        let e2e = Element::new(ns::E2E, "e2e").with_text("...");
        let state = Element::new(ns::CHATSTATES, "composing");
        assert!(archivable(&msg(std::slice::from_ref(&body), None)));
        assert!(archivable(&msg(std::slice::from_ref(&body), Some("chat"))));
        assert!(archivable(&msg(&[e2e], Some("chat"))));
        assert!(!archivable(&msg(&[state], Some("chat"))));
        for ty in ["headline", "groupchat", "error"] {
            assert!(
                !archivable(&msg(std::slice::from_ref(&body), Some(ty))),
                "{ty}"
            );
        }
        let hint = Element::new(ns::HINTS, "no-permanent-store");
        assert!(!archivable(&msg(&[body.clone(), hint], Some("chat"))));
        let carbon = Element::new(ns::CARBONS, "received");
        assert!(!archivable(&msg(&[body, carbon], Some("chat"))));
    }

    #[test]
    fn preferences_decide() {
        let mut p = ArchivePrefs::default();
        assert!(wanted(&p, "a@x", false));
        p.default = ArchiveDefault::Roster;
        assert!(!wanted(&p, "a@x", false));
        assert!(wanted(&p, "a@x", true));
        p.default = ArchiveDefault::Never;
        p.always.push("a@x".into());
        assert!(wanted(&p, "a@x", false));
        p.never.push("a@x".into());
        assert!(!wanted(&p, "a@x", true), "never wins");
    }

    fn field(var: &str, values: &[&str]) -> Element {
        values.iter().fold(
            Element::new(ns::DATA, "field").with_attr("var", var),
            |f, v| f.with_child(Element::new(ns::DATA, "value").with_text(v)),
        )
    }

    fn query(fields: &[Element], set: Option<Element>) -> Element {
        let form = fields.iter().fold(
            Element::new(ns::DATA, "x")
                .with_attr("type", "submit")
                .with_child(field("FORM_TYPE", &[ns::MAM])),
            |x, f| x.with_child(f.clone()),
        );
        let q = Element::new(ns::MAM, "query").with_child(form);
        match set {
            Some(s) => q.with_child(s),
            None => q,
        }
    }

    fn parse(q: &Element) -> Result<Asked, (SE, &'static str)> {
        parse_query(q, |s| s.parse().ok())
    }

    #[test]
    fn queries_are_read() {
        let a = parse(&query(
            &[
                field("with", &["juliet@capulet.lit"]),
                field("start", &["2010-06-07T00:00:00Z"]),
                field("end", &["2010-07-07T13:23:54Z"]),
            ],
            Some(
                Element::new(ns::RSM, "set")
                    .with_child(Element::new(ns::RSM, "max").with_text("10"))
                    .with_child(Element::new(ns::RSM, "before")),
            ),
        ))
        .expect("valid");
        assert_eq!(a.query.with.as_deref(), Some("juliet@capulet.lit"));
        assert_eq!(a.query.start, Some(1_275_868_800));
        assert_eq!(a.query.end, Some(1_278_509_034));
        assert_eq!(
            (a.query.max, a.query.from_end, a.query.before),
            (10, true, None)
        );
        let a = parse(&query(&[field("after-id", &["x1"])], None)).expect("valid");
        assert_eq!(
            (a.query.after.as_deref(), a.query.max),
            (Some("x1"), PAGE_DEFAULT)
        );
        let big = Element::new(ns::RSM, "set")
            .with_child(Element::new(ns::RSM, "max").with_text("100000"));
        assert_eq!(
            parse(&query(&[], Some(big))).expect("valid").query.max,
            PAGE_MAX
        );
        // No form at all: everything.
        let bare = parse(&Element::new(ns::MAM, "query")).expect("valid");
        assert_eq!(
            bare.query,
            ArchiveQuery {
                max: PAGE_DEFAULT,
                ..ArchiveQuery::default()
            }
        );
    }

    #[test]
    fn bad_queries_are_refused() {
        let cases = [
            query(&[field("start", &["yesterday"])], None),
            query(&[field("with", &["@@"])], None),
            query(
                &[
                    field("start", &["2010-07-07T00:00:00Z"]),
                    field("end", &["2010-06-07T00:00:00Z"]),
                ],
                None,
            ),
            query(
                &[],
                Some(
                    Element::new(ns::RSM, "set")
                        .with_child(Element::new(ns::RSM, "max").with_text("-1")),
                ),
            ),
            query(
                &[],
                Some(Element::new(ns::RSM, "set").with_child(Element::new(ns::RSM, "after"))),
            ),
        ];
        for q in &cases {
            assert_eq!(
                parse(q).map(|_| ()).unwrap_err().0,
                SE::BadRequest,
                "{}",
                q.to_xml(ns::CLIENT)
            );
        }
        let unknown = query(&[field("{urn:xmpp:fulltext:0}fulltext", &["x"])], None);
        assert_eq!(
            parse(&unknown).map(|_| ()).unwrap_err().0,
            SE::FeatureNotImplemented
        );
        let wrong_form = Element::new(ns::MAM, "query").with_child(
            Element::new(ns::DATA, "x").with_child(field("FORM_TYPE", &["urn:xmpp:mam:1"])),
        );
        assert_eq!(
            parse(&wrong_form).map(|_| ()).unwrap_err().0,
            SE::BadRequest
        );
    }
}
