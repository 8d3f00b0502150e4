//! vCards (XEP-0054): a user's own vCard, stored and read back, and the
//! vCards of other local accounts.

use jid::BareJid;

use super::Deferred;
use crate::effects::Pending;
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::iq_result;
use crate::store::{StoreReply, StoreRequest};
use crate::xml::Element;

impl Server {
    /// Loads `username`'s vCard to answer `iq` on `conn`; `own` when it is
    /// the asker's (an empty vCard then, rather than `item-not-found`).
    pub(super) fn load_vcard(&mut self, conn: ConnId, iq: Element, username: String, own: bool) {
        self.fx.store(
            Pending::Vcard { conn, iq, own },
            StoreRequest::LoadVcard { username },
        );
    }

    /// Stores the user's own vCard; the result goes out once durable.
    pub(super) fn set_vcard(
        &mut self,
        conn: ConnId,
        iq: &Element,
        user: &BareJid,
        vcard: &Element,
    ) {
        self.store_change(
            user,
            None,
            vec![Deferred::Send(conn, iq_result(iq))],
            StoreRequest::SetVcard {
                username: super::username(user),
                vcard: vcard.to_xml(ns::CLIENT),
            },
        );
    }

    /// The store answered with a vCard.
    pub(crate) fn vcard_loaded(&mut self, conn: ConnId, iq: Element, own: bool, reply: StoreReply) {
        let vcard = match reply {
            StoreReply::Vcard(Some(xml)) => crate::xml::parse_fragment(&xml, &self.config.limits),
            StoreReply::Vcard(None) if own => Some(Element::new(ns::VCARD, "vCard")),
            StoreReply::Vcard(None) => None,
            // A failure, logged where every store failure is.
            _ => return self.reply_error(conn, &iq, SE::InternalServerError, None),
        };
        match vcard {
            Some(v) => {
                let reply = iq_result(&iq).with_child(v);
                self.send_stanza(conn, &reply);
            }
            None => self.reply_error(conn, &iq, SE::ItemNotFound, None),
        }
    }
}
