//! Message carbons (XEP-0280): every device of a user sees both sides of
//! its conversations. A resource that enabled carbons gets a `received`
//! copy of a chat message delivered to another resource of its account,
//! and a `sent` copy of one that another resource sent; `private`
//! (XEP-0280) and `no-copy` (XEP-0334) keep a message to its own resource.
//! Copies are not kept anywhere: the message itself is where the delivery
//! rules put it.

use jid::BareJid;

use super::archive;
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::iq_result;
use crate::xml::Element;

/// Which side of the conversation a copy shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Delivered to another resource of the account.
    Received,
    /// Sent by another resource of the account.
    Sent,
}

/// Whether `el` is a message carbons copy (XEP-0280 section 6): a chat, or a
/// normal message with a body; not marked private or no-copy, and not a
/// carbon itself.
pub(super) fn eligible(el: &Element) -> bool {
    let kind_ok = match el.attr("type").unwrap_or("normal") {
        "chat" => true,
        "normal" => el.child(ns::CLIENT, "body").is_some(),
        _ => false,
    };
    kind_ok
        && el.child(ns::CARBONS, "private").is_none()
        && el.child(ns::HINTS, "no-copy").is_none()
        && el.child(ns::CARBONS, "received").is_none()
        && el.child(ns::CARBONS, "sent").is_none()
}

impl Server {
    /// `<enable/>` or `<disable/>` (XEP-0280 section 4) from `conn`.
    pub(super) fn carbons_iq(&mut self, conn: ConnId, iq: &Element, payload: &Element) {
        let enable = match payload.name.as_str() {
            "enable" => true,
            "disable" => false,
            _ => return self.reply_error(conn, iq, SE::BadRequest, None),
        };
        if let Some(s) = self.conns.get_mut(&conn).and_then(|c| c.session.as_mut()) {
            s.carbons = enable;
        }
        self.send_stanza(conn, &iq_result(iq));
    }

    /// Copies `el` to the resources of `user` that enabled carbons, but
    /// those in `except` (which have the message itself); `archived` is the
    /// id of a sent message in `user`'s archive, which the copies carry as
    /// its `<stanza-id/>` (XEP-0359).
    pub(super) fn carbon_copies(
        &mut self,
        user: &BareJid,
        except: &[ConnId],
        el: &Element,
        side: Side,
        archived: Option<&str>,
    ) {
        // On every chat message: nothing allocated unless a copy goes out.
        let Some(list) = self.sm.sessions.get(user) else {
            return;
        };
        let mut targets: Vec<(ConnId, String)> = Vec::new();
        for c in list.iter().filter(|c| !except.contains(c)) {
            if let Some(s) = self.conns.get(c).and_then(|c| c.session.as_ref()) {
                if s.carbons {
                    targets.push((*c, s.jid.to_string()));
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        let wrapper = match side {
            Side::Received => "received",
            Side::Sent => "sent",
        };
        let mut forwarded = el.clone();
        if let Some(id) = archived {
            forwarded = forwarded.with_child(archive::stanza_id(id, user.as_str()));
        }
        let mut copy = Element::new(ns::CLIENT, "message")
            .with_attr("from", user.as_str())
            .with_child(
                Element::new(ns::CARBONS, wrapper)
                    .with_child(Element::new(ns::FORWARD, "forwarded").with_child(forwarded)),
            );
        if let Some(t) = el.attr("type") {
            copy.set_attr("type", Some(t));
        }
        for (c, full) in targets {
            copy.set_attr("to", Some(&full));
            self.send_stanza(c, &copy);
        }
    }
}
