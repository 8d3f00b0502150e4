#!/usr/bin/env python3
"""What federation adds to a chat, for two users of two servers (A on one, B on the other):

1. A pings B's server and B's full JID (XEP-0199), B pings A's server: each gets a result;
2. with `--down-domain D`: A sends a message and an iq to a user of D, whose server is down;
   each comes back once as an error (remote-server-not-found or remote-server-timeout).

    federation.py --port 5222 --jid-a alice@k.test --password-a pa \\
                  --jid-b bob@p.test --password-b pb --port-b 5223 [--down-domain x.test]

Prints PING <from> <to> ok, BOUNCED <kind> <condition>, and the lines of xmpptest.py.
"""

import asyncio
import uuid
import xml.etree.ElementTree as ET

from slixmpp.exceptions import IqError

from xmpptest import TestClient, pair_parser, run, say, setup_logging, step

BOUNCES = ('remote-server-not-found', 'remote-server-timeout')


async def ping(client, to):
    iq = client.make_iq_get(ito=to)
    iq.xml.append(ET.Element('{urn:xmpp:ping}ping'))
    result = await iq.send(timeout=15)
    assert result['type'] == 'result', 'ping %s: %s' % (to, result)
    say('PING', client.boundjid.full, to, 'ok')


def main():
    p = pair_parser(__doc__)
    p.add_argument('--down-domain', default=None,
                   help='a domain whose server is down: messages and iqs to it bounce')
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        a = TestClient(args.jid_a, args.password_a, args)
        b = TestClient(args.jid_b, args.password_b, args, port=args.port_b)
        b.register_plugin('xep_0199')
        await asyncio.gather(a.start(), b.start())
        step('pings across')
        await ping(a, b.boundjid.domain)
        await ping(a, b.boundjid.full)
        await ping(b, a.boundjid.domain)
        if args.down_domain:
            step('a domain that is down')
            tag = uuid.uuid4().hex[:8]
            a.send_message(mto='nobody@%s' % args.down_domain, mbody='lost? ' + tag,
                           mtype='chat')
            msg = await a.expect('message', 'the bounce of the message',
                                 lambda m: m['type'] == 'error', timeout=60)
            cond = msg['error']['condition']
            assert cond in BOUNCES, 'message bounced with %s' % cond
            say('BOUNCED', 'message', cond)
            iq = a.make_iq_get(ito='nobody@%s/r' % args.down_domain)
            iq.xml.append(ET.Element('{urn:xmpp:ping}ping'))
            try:
                await iq.send(timeout=60)
                raise AssertionError('an iq to a domain that is down got a result')
            except IqError as e:
                cond = e.iq['error']['condition']
                assert cond in BOUNCES, 'iq bounced with %s' % cond
                say('BOUNCED', 'iq', cond)
            await asyncio.sleep(1)
            a.unexpected('message', 'a second bounce', lambda m: m['type'] == 'error')

    run(flow, args)


if __name__ == '__main__':
    main()
