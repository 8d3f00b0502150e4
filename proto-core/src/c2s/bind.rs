//! Resource binding (RFC 6120 section 7): the full JID of a new session.
//! The session manager takes the session from there.

use jid::BareJid;

use crate::error::StanzaErrorCondition as SE;
use crate::ns;
use crate::server::{ConnId, Server};
use crate::stanza::IqType;
use crate::xml::Element;

impl Server {
    pub(super) fn on_bind(&mut self, id: ConnId, iq: &Element) {
        if IqType::of(iq) != Some(IqType::Set) {
            self.reply_error(id, iq, SE::BadRequest, None);
            return;
        }
        let bind = iq.child(ns::BIND, "bind").expect("checked by caller");
        let requested = bind
            .child(ns::BIND, "resource")
            .map(|r| r.text())
            .filter(|r| !r.trim().is_empty());
        let user = self.conns[&id].auth.user.clone().expect("authenticated");
        let bare = BareJid::from_parts(
            Some(&jid::NodePart::new(&user).expect("normalized at login")),
            &self.domain,
        );
        let full = match requested {
            Some(r) => match bare.with_resource_str(r.trim()) {
                Ok(full) => full,
                Err(_) => {
                    self.reply_error(id, iq, SE::BadRequest, Some("invalid resource"));
                    return;
                }
            },
            None => {
                let r = format!("kontalkd-{}", self.random_hex(6));
                bare.with_resource_str(&r)
                    .expect("generated resource is valid")
            }
        };
        self.bind_session(id, full, iq.clone());
    }
}
