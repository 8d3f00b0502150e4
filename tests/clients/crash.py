#!/usr/bin/env python3
"""The two sides of a server crash with stream management (XEP-0198) and the archive (XEP-0313).

    crash.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost \\
             --password-b pb --body K --linger 30 before
        A and B ("phone") enable stream management; A writes K to B's bare JID and waits for
        the server's <a/> that covers it (prints ACKED K); B gets K and does not acknowledge
        it (the server asks only every few stanzas). Then both stay online until the server
        goes away (the test kills it) or --linger passes.

    crash.py --port 5222 --jid-a bob@localhost --password-a pb --jid-b alice@localhost \\
             --password-b - --settle 2 after
        A logs in (sends presence: offline messages come), waits --settle seconds, then reads
        its archive of the conversation with B (prints ARCHIVED <id> <body> for each).

Prints the lines of xmpptest.py (BOUND, RECEIVED, STEP, RESULT, ...).
"""

import asyncio

from slixmpp import JID

from xmpptest import TestClient, body_is, pair_parser, run, say, setup_logging, step, until


def main():
    p = pair_parser(__doc__)
    p.add_argument('phase', choices=['before', 'after'])
    p.add_argument('--body', default='')
    p.add_argument('--linger', type=float, default=0.0)
    p.add_argument('--settle', type=float, default=2.0)
    args = p.parse_args()
    setup_logging(args)

    async def before():
        a = TestClient(args.jid_a, args.password_a, args, plugins=['xep_0198'])
        b = TestClient(args.jid_b + '/phone', args.password_b, args, plugins=['xep_0198'])
        acked = []
        a.add_event_handler('stanza_acked',
                            lambda s: acked.append(s['body']) if s.name == 'message' else None)
        await asyncio.gather(a.start(), b.start())
        await until('stream management on both', lambda: a.plugin['xep_0198'].enabled_in
                    and b.plugin['xep_0198'].enabled_in)

        step('A writes; the server acknowledges it; B has it and acknowledges nothing')
        a.send_message(mto=args.jid_b, mbody=args.body, mtype='chat')
        # slixmpp may write an <r/> ahead of the queued message: ask until one covers it.
        for _ in range(100):
            await asyncio.sleep(0.1)
            if args.body in acked:
                break
            a.plugin['xep_0198'].request_ack()
        assert args.body in acked, 'no ack of %r' % args.body
        say('ACKED', args.body)
        await b.expect('message', 'the message %r' % args.body, body_is(args.body))
        say('UNACKED-AT-B', b.plugin['xep_0198'].handled)
        say('WAITING')
        if not await a.linger(args.linger):
            await asyncio.gather(a.close(), b.close())

    async def after():
        a = TestClient(args.jid_a + '/phone', args.password_a, args,
                       plugins=['xep_0059', 'xep_0313', 'xep_0359'])
        await a.start()
        await asyncio.sleep(args.settle)
        step('the archive of the conversation')
        async for msg in a.plugin['xep_0313'].iterate(with_jid=JID(args.jid_b), rsm={'max': 10}):
            fwd = msg['mam_result']['forwarded']['stanza']
            say('ARCHIVED', msg['mam_result']['id'], ' '.join((fwd['body'] or '').split()))
        await a.close()

    run(before if args.phase == 'before' else after, args)


if __name__ == '__main__':
    main()
