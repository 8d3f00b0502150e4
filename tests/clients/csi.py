#!/usr/bin/env python3
"""Client state indication (XEP-0352) with slixmpp's xep_0352 plugin: an inactive client gets
messages at once and presence only when it is active again, the latest of each sender.

1. A (with the plugin; the server advertises `csi`) says <inactive/>;
2. B sends A three directed presences (away, xa, dnd), then a message: A gets the message,
   and no presence;
3. A says <active/>: it gets one presence from B, `dnd`.

    csi.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost --password-b pb

Prints the lines of xmpptest.py (STEP ..., RESULT ...).
"""

import asyncio
import uuid

from xmpptest import TestClient, pair_parser, run, setup_logging, step

QUIET = 2.0


def main():
    p = pair_parser(__doc__)
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        tag = uuid.uuid4().hex[:8]
        a = TestClient(args.jid_a, args.password_a, args, plugins=['xep_0352'])
        b = TestClient(args.jid_b, args.password_b, args)
        await asyncio.gather(a.start(), b.start())
        assert a.plugin['xep_0352'].enabled, 'the server did not advertise csi'
        from_b = lambda p: p['from'].bare == b.boundjid.bare and p['type'] != 'unavailable'

        step('inactive: presence waits, the message does not')
        a.plugin['xep_0352'].send_inactive()
        await a.barrier()
        a.seen['presence'].clear()
        for show in ('away', 'xa', 'dnd'):
            b.send_presence(pto=a.boundjid.full, pshow=show)
        body = 'while inactive (%s)' % tag
        b.send_message(mto=a.boundjid.full, mbody=body, mtype='chat')
        await a.expect('message', 'the message %r' % body, lambda m: m['body'] == body)
        await asyncio.sleep(QUIET)
        a.unexpected('presence', 'a presence while inactive', from_b)

        step('active: the latest presence only')
        a.plugin['xep_0352'].send_active()
        got = await a.expect('presence', 'the presence that waited', from_b)
        assert got['show'] == 'dnd', 'the presence that waited is %r, not dnd' % got['show']
        await asyncio.sleep(QUIET)
        a.unexpected('presence', 'an older presence after active', from_b)
        await asyncio.gather(a.close(), b.close())

    run(flow, args)


if __name__ == '__main__':
    main()
