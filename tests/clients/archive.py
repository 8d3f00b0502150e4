#!/usr/bin/env python3
"""The message archive (XEP-0313) with slixmpp's xep_0313, xep_0059 and xep_0359 plugins.

1. A and B ("phone") are online; A writes three messages to B's bare JID: B gets each with a
   stanza id (XEP-0359) by B's account;
2. a second device of B ("laptop") logs in later and reads the conversation from B's archive,
   two messages a page: all three, in order, once each, with the ids the phone saw;
3. A's own archive holds the three it sent (a query with B's JID, complete);
4. B sets its preferences to archive nothing: A's next message reaches the phone without a
   stanza id and is not in B's archive, but is in A's.

    archive.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost --password-b pb

Prints the lines of xmpptest.py (STEP ..., RESULT ...).
"""

import uuid

from slixmpp import JID
from slixmpp.xmlstream import ET

from xmpptest import TestClient, body_is, pair_parser, run, setup_logging, step

PLUGINS = ['xep_0059', 'xep_0313', 'xep_0359']
MAM = 'urn:xmpp:mam:2'


def main():
    p = pair_parser(__doc__)
    args = p.parse_args()
    setup_logging(args)
    b_bare = args.jid_b

    async def archive_of(client, with_jid, page):
        """(archive id, body) of every message with `with_jid`, page by page."""
        seen = []
        async for msg in client.plugin['xep_0313'].iterate(with_jid=JID(with_jid),
                                                           rsm={'max': page}):
            fwd = msg['mam_result']['forwarded']
            assert fwd['delay']['stamp'] is not None, 'a result without its delay stamp'
            seen.append((msg['mam_result']['id'], fwd['stanza']['body']))
        return seen

    async def flow():
        tag = uuid.uuid4().hex[:8]
        a = TestClient(args.jid_a, args.password_a, args, plugins=PLUGINS)
        phone = TestClient(b_bare + '/phone', args.password_b, args, plugins=PLUGINS)
        await a.start()
        await phone.start()

        step('A writes three messages: the phone gets each with a stanza id by B')
        bodies = ['m%d (%s)' % (i, tag) for i in (1, 2, 3)]
        for body in bodies:
            a.send_message(mto=b_bare, mbody=body, mtype='chat')
        ids = []
        for body in bodies:
            m = await phone.expect('message', 'the message %r' % body, body_is(body))
            sid = m['stanza_id']
            assert sid['by'] == b_bare, 'stanza id by %r, not %s' % (sid['by'], b_bare)
            assert sid['id'], 'a stanza id without an id'
            ids.append(sid['id'])
        assert len(set(ids)) == 3, 'stanza ids are not unique: %s' % ids

        step('the laptop reads the conversation from the archive, two a page')
        laptop = TestClient(b_bare + '/laptop', args.password_b, args, plugins=PLUGINS)
        await laptop.start()
        seen = [s for s in await archive_of(laptop, args.jid_a, 2) if tag in (s[1] or '')]
        assert [b for _, b in seen] == bodies, 'the archive has %s' % seen
        assert [i for i, _ in seen] == ids, 'archive ids %s, stanza ids %s' % (
            [i for i, _ in seen], ids)

        step("A's archive has what it sent")
        iq = await a.plugin['xep_0313'].retrieve(with_jid=JID(b_bare), rsm={'max': 10})
        sent = [m['mam_result']['forwarded']['stanza']['body'] for m in iq['mam']['results']]
        sent = [b for b in sent if tag in (b or '')]
        assert sent == bodies, "A's archive has %s" % sent
        fin = iq.xml.find('{%s}fin' % MAM)
        assert fin is not None and fin.get('complete') == 'true', 'fin: %s' % (
            ET.tostring(fin) if fin is not None else None)

        step('B archives nothing once its preferences say never')
        prefs = phone.make_iq_set()
        prefs.append(ET.Element('{%s}prefs' % MAM, {'default': 'never'}))
        answer = await prefs.send(timeout=5)
        got = answer.xml.find('{%s}prefs' % MAM)
        assert got is not None and got.get('default') == 'never', 'prefs answer: %s' % answer
        body = 'unarchived (%s)' % tag
        a.send_message(mto=b_bare, mbody=body, mtype='chat')
        m = await phone.expect('message', 'the message %r' % body, body_is(body))
        assert not m['stanza_id']['id'], 'a stanza id on an unarchived message: %s' % m
        seen = [b for _, b in await archive_of(laptop, args.jid_a, 10)]
        assert body not in seen, "B's archive kept it against its preferences"
        seen = [b for _, b in await archive_of(a, b_bare, 10)]
        assert body in seen, "A's archive (default always) lacks it"
        await a.close()
        await phone.close()
        await laptop.close()

    run(flow, args)


if __name__ == '__main__':
    main()
