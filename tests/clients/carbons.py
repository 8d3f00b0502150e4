#!/usr/bin/env python3
"""Message carbons (XEP-0280) with slixmpp's xep_0280 plugin: two devices of one user see both
sides of a conversation.

1. B is online as "phone" (priority 1) and "tablet" (priority 0), both with carbons enabled;
   A writes to B's bare JID: the phone gets the message, the tablet a `received` copy;
2. the phone answers: A gets the answer, the tablet a `sent` copy;
3. a message marked `private` reaches the phone only.

    carbons.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost --password-b pb

Prints the lines of xmpptest.py (STEP ..., RESULT ...).
"""

import asyncio
import uuid

from slixmpp.xmlstream import ET

from xmpptest import TestClient, body_is, pair_parser, run, setup_logging, step, until

QUIET = 2.0


def main():
    p = pair_parser(__doc__)
    args = p.parse_args()
    setup_logging(args)
    b_bare = args.jid_b

    def device(resource, priority):
        c = TestClient('%s/%s' % (b_bare, resource), args.password_b, args,
                       priority=priority, plugins=['xep_0280'])
        c.copies = {'received': [], 'sent': []}
        c.add_event_handler('carbon_received',
                            lambda m: c.copies['received'].append(m['carbon_received']))
        c.add_event_handler('carbon_sent',
                            lambda m: c.copies['sent'].append(m['carbon_sent']))
        return c

    async def copy_of(client, side, body):
        found = lambda: [m for m in client.copies[side] if m['body'] == body]
        await until('a %s copy of %r at %s' % (side, body, client.boundjid.full), found, 5.0)
        return found()[0]

    async def flow():
        tag = uuid.uuid4().hex[:8]
        a = TestClient(args.jid_a, args.password_a, args)
        phone, tablet = device('phone', 1), device('tablet', 0)
        await asyncio.gather(a.start(), phone.start(), tablet.start())
        await asyncio.gather(phone.plugin['xep_0280'].enable(),
                             tablet.plugin['xep_0280'].enable())

        step('a message to the bare JID: the phone has it, the tablet a received copy')
        body = 'to the bare JID (%s)' % tag
        a.send_message(mto=b_bare, mbody=body, mtype='chat')
        await phone.expect('message', 'the message %r' % body, body_is(body))
        copy = await copy_of(tablet, 'received', body)
        assert copy['from'].bare == a.boundjid.bare, 'copy from %s' % copy['from']
        tablet.unexpected('message', 'the message itself at priority 0', body_is(body))

        step('the phone answers: the tablet gets a sent copy')
        body = 'answer from the phone (%s)' % tag
        phone.send_message(mto=a.boundjid.bare, mbody=body, mtype='chat')
        await a.expect('message', 'the answer %r' % body, body_is(body))
        copy = await copy_of(tablet, 'sent', body)
        assert copy['to'].bare == a.boundjid.bare, 'sent copy to %s' % copy['to']
        assert copy['from'].full == phone.boundjid.full, 'sent copy from %s' % copy['from']

        step('a private message has no copies')
        body = 'private (%s)' % tag
        msg = a.make_message(mto=b_bare, mbody=body, mtype='chat')
        msg.xml.append(ET.Element('{urn:xmpp:carbons:2}private'))
        msg.send()
        await phone.expect('message', 'the private message', body_is(body))
        await asyncio.sleep(QUIET)
        assert not [m for m in tablet.copies['received'] if m['body'] == body], \
            'the tablet got a copy of a private message'
        await asyncio.gather(a.close(), phone.close(), tablet.close())

    run(flow, args)


if __name__ == '__main__':
    main()
