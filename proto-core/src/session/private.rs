//! Private XML storage (XEP-0049): an account keeps elements of its own
//! namespaces on the server (bookmarks of older clients, preferences), one
//! per namespace, readable only by itself.

use jid::BareJid;

use super::{username, Deferred};
use crate::effects::Pending;
use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::{iq_result, IqType};
use crate::store::{StoreReply, StoreRequest};
use crate::xml::Element;

/// Namespaces that are not the client's to store (XEP-0049 section 3).
fn reserved(namespace: &str) -> bool {
    namespace.is_empty()
        || namespace == ns::CLIENT
        || namespace == ns::SERVER
        || namespace == ns::PRIVATE
}

impl Server {
    /// A `jabber:iq:private` query of `user`'s own session.
    pub(super) fn private_iq(
        &mut self,
        conn: ConnId,
        user: &BareJid,
        iq: &Element,
        query: &Element,
    ) {
        let items: Vec<&Element> = query.elements().collect();
        if items.is_empty() {
            return self.reply_error(conn, iq, SE::BadRequest, Some("an element is needed"));
        }
        if items.iter().any(|e| reserved(&e.ns)) {
            return self.reply_error(
                conn,
                iq,
                SE::NotAcceptable,
                Some("this namespace cannot be stored"),
            );
        }
        match IqType::of(iq) {
            Some(IqType::Get) => {
                let [item] = items.as_slice() else {
                    return self.reply_error(
                        conn,
                        iq,
                        SE::BadRequest,
                        Some("ask for one element at a time"),
                    );
                };
                let empty = Element::new(&item.ns, &item.name);
                self.fx.store(
                    Pending::Private {
                        conn,
                        iq: iq.clone(),
                        empty,
                    },
                    StoreRequest::LoadPrivate {
                        username: username(user),
                        namespace: item.ns.clone(),
                    },
                );
            }
            Some(IqType::Set) => {
                let items = items
                    .iter()
                    .map(|e| (e.ns.clone(), e.to_xml(ns::PRIVATE)))
                    .collect();
                self.store_change(
                    user,
                    None,
                    vec![Deferred::Send(conn, iq_result(iq))],
                    StoreRequest::SetPrivate {
                        username: username(user),
                        items,
                    },
                );
            }
            _ => self.reply_error(conn, iq, SE::BadRequest, None),
        }
    }

    /// The store answered with private XML for `iq`.
    pub(crate) fn private_loaded(
        &mut self,
        conn: ConnId,
        iq: Element,
        empty: Element,
        reply: StoreReply,
    ) {
        let item = match reply {
            StoreReply::Private(Some(xml)) => {
                crate::xml::parse_fragment(&xml, &self.config.limits).unwrap_or(empty)
            }
            StoreReply::Private(None) => empty,
            // A failure, logged where every store failure is.
            _ => return self.reply_error(conn, &iq, SE::InternalServerError, None),
        };
        let reply = iq_result(&iq).with_child(Element::new(ns::PRIVATE, "query").with_child(item));
        self.send_stanza(conn, &reply);
    }
}
