//! XML namespaces used by the core.

pub use crate::xml::{NS_CLIENT as CLIENT, NS_STREAM as STREAM};
/// Stanzas between servers (RFC 6120 section 4.8.3).
pub const SERVER: &str = "jabber:server";
/// Server dialback (XEP-0220), declared on server streams.
pub const DIALBACK: &str = "jabber:server:dialback";
/// Kontalk network links between the servers of one network (Net).
pub const NET: &str = "urn:kontalk:net:0";
/// STARTTLS (RFC 6120 section 5).
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL (RFC 6120 section 6).
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Resource binding (RFC 6120 section 7).
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// Legacy session establishment (RFC 3921), still sent by some clients.
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// Stanza error conditions.
pub const STANZAS: &str = crate::error::NS_STANZAS;
/// XEP-0478 stream limits advertisement.
pub const STREAM_LIMITS: &str = "urn:xmpp:stream-limits:0";
/// XEP-0440 SASL channel-binding type capability.
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XEP-0077 in-band registration (iq payload).
pub const REGISTER: &str = "jabber:iq:register";
/// XEP-0077 stream feature.
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
/// XEP-0030 service discovery, info.
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030 service discovery, items.
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0199 ping.
pub const PING: &str = "urn:xmpp:ping";
/// XEP-0092 software version.
pub const VERSION: &str = "jabber:iq:version";
/// Rosters (RFC 6121 section 2).
pub const ROSTER: &str = "jabber:iq:roster";
/// Roster versioning stream feature (XEP-0237).
pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
/// Subscription pre-approval stream feature (RFC 6121 section 3.4).
pub const PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";
/// XEP-0191 blocking command.
pub const BLOCKING: &str = "urn:xmpp:blocking";
/// XEP-0191 blocking error payload.
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
/// XEP-0054 vcard-temp.
pub const VCARD: &str = "vcard-temp";
/// XEP-0012 last activity.
pub const LAST: &str = "jabber:iq:last";
/// XEP-0202 entity time.
pub const TIME: &str = "urn:xmpp:time";
/// XEP-0203 delayed delivery.
pub const DELAY: &str = "urn:xmpp:delay";
/// XEP-0160 offline messages (advertised as `msgoffline`).
pub const OFFLINE: &str = "msgoffline";
/// XEP-0085 chat state notifications.
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// XEP-0280 message carbons.
pub const CARBONS: &str = "urn:xmpp:carbons:2";
/// XEP-0297 stanza forwarding (the envelope of a carbon copy).
pub const FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0334 message processing hints (`no-copy`).
pub const HINTS: &str = "urn:xmpp:hints";
/// XEP-0352 client state indication.
pub const CSI: &str = "urn:xmpp:csi:0";
/// XEP-0049 private XML storage.
pub const PRIVATE: &str = "jabber:iq:private";
/// XEP-0198 stream management.
pub const SM: &str = "urn:xmpp:sm:3";
/// XEP-0313 message archive management.
pub const MAM: &str = "urn:xmpp:mam:2";
/// Push notifications (XEP-0357).
pub const PUSH: &str = "urn:xmpp:push:0";
/// Publish-subscribe (XEP-0060): what a push notification is published with.
pub const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// The summary form of a push notification (XEP-0357 section 7).
pub const PUSH_SUMMARY: &str = "urn:xmpp:push:summary";
/// XEP-0313 extended queries (`before-id`, `after-id`, `ids`, `flip-page`).
pub const MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0359 unique and stable stanza ids.
pub const SID: &str = "urn:xmpp:sid:0";
/// XEP-0059 result set management.
pub const RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0004 data forms.
pub const DATA: &str = "jabber:x:data";
/// XEP-0373 OpenPGP for XMPP (an end-to-end payload).
pub const OPENPGP: &str = "urn:xmpp:openpgp:0";
/// RFC 3923 end-to-end signing and encryption (Kontalk's payload).
pub const E2E: &str = "urn:ietf:params:xml:ns:xmpp-e2e";
/// XEP-0027 legacy OpenPGP encryption.
pub const X_ENCRYPTED: &str = "jabber:x:encrypted";
/// XEP-0384 OMEMO encryption.
pub const OMEMO: &str = "eu.siacs.conversations.axolotl";
