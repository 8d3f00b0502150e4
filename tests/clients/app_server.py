#!/usr/bin/env python3
"""An XEP-0357 app server, as slixmpp: a client whose full JID the user's server publishes
push notifications to (an <iq type='set'> with a pubsub publish of the summary form). Prints
READY once online, then PUBLISH <from> <node> <message-count> <last-message-sender or -> <options
secret or -> for each notification (and BODY-LEAK if the message's text is in one), answers each
with a result (or, with --refuse-after N, the ones after the first N with item-not-found), and
exits after --count notifications.

    app_server.py --port 5222 --jid app@p.test --password pw --resource push --count 2
"""

import asyncio

from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from xmpptest import TestClient, base_parser, run, say, setup_logging

PUBSUB = 'http://jabber.org/protocol/pubsub'
PUSH = 'urn:xmpp:push:0'
DATA = 'jabber:x:data'


def field(form, var):
    if form is None:
        return '-'
    for f in form.findall('{%s}field' % DATA):
        if f.get('var') == var:
            v = f.find('{%s}value' % DATA)
            return v.text if v is not None and v.text else '-'
    return '-'


def main():
    p = base_parser(__doc__)
    p.add_argument('--jid', required=True)
    p.add_argument('--password', required=True)
    p.add_argument('--resource', default='push')
    p.add_argument('--count', type=int, required=True)
    p.add_argument('--refuse-after', type=int, default=None)
    p.add_argument('--secret-text', default='secret plan')
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        client = TestClient('%s/%s' % (args.jid, args.resource), args.password, args)
        got = []
        done = asyncio.get_running_loop().create_future()

        def on_publish(iq):
            xml = iq.xml
            publish = xml.find('{%s}pubsub/{%s}publish' % (PUBSUB, PUBSUB))
            form = xml.find('{%s}pubsub/{%s}publish/{%s}item/{%s}notification/{%s}x'
                            % (PUBSUB, PUBSUB, PUBSUB, PUSH, DATA))
            options = xml.find('{%s}pubsub/{%s}publish-options/{%s}x' % (PUBSUB, PUBSUB, DATA))
            say('PUBLISH', iq['from'], publish.get('node') if publish is not None else '-',
                field(form, 'message-count'), field(form, 'last-message-sender'),
                field(options, 'secret'))
            if args.secret_text in ET.tostring(xml, encoding='unicode'):
                say('BODY-LEAK')
            got.append(iq)
            reply = iq.reply(clear=True)
            if args.refuse_after is not None and len(got) > args.refuse_after:
                reply.error()
                reply['error']['type'] = 'cancel'
                reply['error']['condition'] = 'item-not-found'
            reply.send()
            if len(got) >= args.count and not done.done():
                done.set_result(None)

        client.register_handler(Callback(
            'push publish',
            MatchXPath('{jabber:client}iq/{%s}pubsub/{%s}publish' % (PUBSUB, PUBSUB)),
            on_publish))
        await client.start()
        say('READY', client.boundjid.full)
        await done
        await asyncio.sleep(0.5)
        await client.close()

    run(flow, args)


if __name__ == '__main__':
    main()
