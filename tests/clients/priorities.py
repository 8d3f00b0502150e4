#!/usr/bin/env python3
"""Message delivery to several resources by presence priority (RFC 6121 8.5.2, 8.5.3):

1. B is online as "high" (priority 5), "low" (1) and "neg" (-1); a chat message from A to B's
   bare JID reaches high only (the "most available" resource of RFC 6121 8.5.2.1.1, as
   Prosody and ejabberd do), not low and not neg;
2. a message to B's full JID .../neg reaches neg only;
3. high and low log out, so B's only resource has a negative priority: a message to the bare
   JID is not delivered to neg but stored offline, and delivered (with an XEP-0203 delay) when
   a resource with a non-negative priority ("back", 0) sends its initial presence.

    priorities.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost --password-b pb

Prints the lines of xmpptest.py (RECEIVED, DELAYED, STEP ...).
"""

import asyncio
import uuid

from xmpptest import TestClient, body_is, pair_parser, run, setup_logging, step

QUIET = 2.0


def main():
    p = pair_parser(__doc__)
    args = p.parse_args()
    setup_logging(args)
    b_bare = args.jid_b

    def bob(resource, priority):
        return TestClient('%s/%s' % (b_bare, resource), args.password_b, args,
                          priority=priority, plugins=['xep_0203'])

    async def expect_from(client, body, sender):
        msg = await client.expect('message', 'the message %r' % body, body_is(body))
        assert msg['from'].full == sender.boundjid.full, \
            '%r arrived at %s from %s, expected %s' % (
                body, client.boundjid.full, msg['from'], sender.boundjid.full)
        return msg

    async def flow():
        tag = uuid.uuid4().hex[:8]
        a = TestClient(args.jid_a, args.password_a, args)
        high, low, neg = bob('high', 5), bob('low', 1), bob('neg', -1)
        await asyncio.gather(a.start(), high.start(), low.start(), neg.start())

        step('to the bare JID')
        body = 'to the bare JID (%s)' % tag
        a.send_message(mto=b_bare, mbody=body, mtype='chat')
        await expect_from(high, body, a)
        await asyncio.sleep(QUIET)
        neg.unexpected('message', 'the message to the bare JID (priority -1)', body_is(body))
        low.unexpected('message', 'the message to the bare JID (priority 1, below 5)',
                       body_is(body))
        high.unexpected('message', 'a second copy of the message to the bare JID',
                        body_is(body))

        step('to the full JID of the negative resource')
        body = 'to %s (%s)' % (neg.boundjid.full, tag)
        a.send_message(mto=neg.boundjid.full, mbody=body, mtype='chat')
        await expect_from(neg, body, a)
        await asyncio.sleep(QUIET)
        for client in (high, low):
            client.unexpected('message', 'the message to %s' % neg.boundjid.full, body_is(body))

        step('only a negative resource left')
        await asyncio.gather(high.close(), low.close())
        # Closing waited for the server's end of the streams; give it a moment all the same.
        await asyncio.sleep(0.5)
        body = 'while only priority -1 is online (%s)' % tag
        a.send_message(mto=b_bare, mbody=body, mtype='chat')
        await a.barrier()
        await asyncio.sleep(QUIET)
        neg.unexpected('message', 'the message to the bare JID (priority -1)', body_is(body))
        a.unexpected('message', 'an error for a message that is to be stored offline',
                     lambda m: m['type'] == 'error')

        step('a non-negative resource comes online')
        back = bob('back', 0)
        await back.start()
        msg = await expect_from(back, body, a)
        assert msg.xml.find('{urn:xmpp:delay}delay') is not None, \
            'the stored message came without a delay: %s' % msg
        await asyncio.sleep(QUIET)
        neg.unexpected('message', 'the stored message', body_is(body))
        back.unexpected('message', 'a second copy of the stored message', body_is(body))
        await asyncio.gather(a.close(), neg.close(), back.close())

    run(flow, args)


if __name__ == '__main__':
    main()
