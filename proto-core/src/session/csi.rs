//! Client state indication (XEP-0352): a client in the background says
//! `<inactive/>`, and presence updates of its contacts wait, the latest of
//! each contact's resources only, until it says `<active/>`. Messages and
//! everything else go out at once. What waits is bounded: past
//! [`MAX_HELD`] senders, it all goes out.

use crate::ns;
use crate::server::{ConnId, Server};
use crate::xml::Element;

/// Most senders whose presence waits for one inactive session.
pub(crate) const MAX_HELD: usize = 1000;

impl Server {
    /// `<active/>` or `<inactive/>` from a bound session.
    pub(crate) fn client_state(&mut self, conn: ConnId, active: bool) {
        let Some(s) = self.conns.get_mut(&conn).and_then(|c| c.session.as_mut()) else {
            return;
        };
        s.inactive = !active;
        if active {
            self.flush_presence(conn);
        }
    }

    /// A presence update for `conn`'s client: out now, or, while the
    /// client is inactive, kept in place of the last one from the same sender.
    pub(super) fn send_presence(&mut self, conn: ConnId, el: &Element) {
        let Some(s) = self.conns.get_mut(&conn).and_then(|c| c.session.as_mut()) else {
            return;
        };
        if !s.inactive {
            return self.send_stanza(conn, el);
        }
        let from = el.attr("from");
        match s.held_presence.iter_mut().find(|p| p.attr("from") == from) {
            Some(p) => *p = el.clone(),
            None => s.held_presence.push(el.clone()),
        }
        if s.held_presence.len() > MAX_HELD {
            self.flush_presence(conn);
        }
    }

    /// Sends the presence updates that waited for `conn`, in arrival order.
    fn flush_presence(&mut self, conn: ConnId) {
        let Some(s) = self.conns.get_mut(&conn).and_then(|c| c.session.as_mut()) else {
            return;
        };
        for p in std::mem::take(&mut s.held_presence) {
            self.send_stanza(conn, &p);
        }
    }
}

/// The stream feature (XEP-0352 section 3).
pub(crate) fn feature() -> Element {
    Element::new(ns::CSI, "csi")
}
