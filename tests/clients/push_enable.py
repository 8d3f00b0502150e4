#!/usr/bin/env python3
"""Enables (or with --disable, disables) XEP-0357 push notifications of an account at an app
server, as Conversations does it: <enable jid node> with publish options (a `secret` field),
then goes offline. Prints ENABLED <jid> <node> (or DISABLED) and the lines of xmpptest.py.

    push_enable.py --port 5222 --jid alice@k.test --password pw --app app@p.test/push --node n1
"""

from slixmpp.xmlstream import ET

from xmpptest import TestClient, base_parser, run, say, setup_logging

PUSH = 'urn:xmpp:push:0'
DATA = 'jabber:x:data'


def main():
    p = base_parser(__doc__)
    p.add_argument('--jid', required=True)
    p.add_argument('--password', required=True)
    p.add_argument('--app', required=True)
    p.add_argument('--node', required=True)
    p.add_argument('--secret', default='s3cr3t')
    p.add_argument('--disable', action='store_true')
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        client = TestClient(args.jid, args.password, args, plugins=['xep_0030'])
        await client.start()
        info = await client.plugin['xep_0030'].get_info(jid=client.boundjid.bare)
        assert PUSH in info['disco_info']['features'], info['disco_info']['features']
        iq = client.make_iq_set()
        if args.disable:
            el = ET.Element('{%s}disable' % PUSH, jid=args.app, node=args.node)
        else:
            el = ET.Element('{%s}enable' % PUSH, jid=args.app, node=args.node)
            x = ET.SubElement(el, '{%s}x' % DATA, type='submit')
            for var, value in [('FORM_TYPE', 'http://jabber.org/protocol/pubsub#publish-options'),
                               ('secret', args.secret)]:
                f = ET.SubElement(x, '{%s}field' % DATA, var=var)
                ET.SubElement(f, '{%s}value' % DATA).text = value
        iq.append(el)
        await iq.send(timeout=10)
        say('DISABLED' if args.disable else 'ENABLED', args.app, args.node)
        await client.close()

    run(flow, args)


if __name__ == '__main__':
    main()
