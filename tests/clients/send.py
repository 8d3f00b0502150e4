#!/usr/bin/env python3
"""Log in, send chat messages (one per --body, --pause seconds apart so their order is
defined), make sure the server has handled them (an IQ round trip), print SENT-ALL, then stay
online for --linger seconds or until the server goes away, whichever comes first.

    send.py --port 5222 --jid alice@localhost --password pa --to bob@localhost \\
            --body one --body two --pause 0.3 --linger 30

With --acked, stream management (XEP-0198) is on and every message must be covered by the
server's <a/> before SENT-ALL (prints ACKED <body> for each): the server has it durable.

Prints SENT <from> <to> <body> per message, then SENT-ALL, and the lines of xmpptest.py.
Losing the connection while lingering is not a failure (the test may kill the server).
"""

import asyncio

from xmpptest import TestClient, base_parser, run, say, setup_logging, until


def main():
    p = base_parser(__doc__)
    p.add_argument('--jid', required=True)
    p.add_argument('--password', required=True)
    p.add_argument('--to', required=True)
    p.add_argument('--body', action='append', required=True)
    p.add_argument('--type', default='chat')
    p.add_argument('--pause', type=float, default=0.3)
    p.add_argument('--linger', type=float, default=0.0)
    p.add_argument('--acked', action='store_true')
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        plugins = ['xep_0198'] if args.acked else []
        client = TestClient(args.jid, args.password, args, plugins=plugins)
        acked = []
        client.add_event_handler(
            'stanza_acked', lambda s: acked.append(s['body']) if s.name == 'message' else None)
        await client.start()
        if args.acked:
            await until('stream management', lambda: client.plugin['xep_0198'].enabled_in)
        for i, body in enumerate(args.body):
            if i:
                await asyncio.sleep(args.pause)
            client.send_message(mto=args.to, mbody=body, mtype=args.type)
            say('SENT', client.boundjid.full, args.to, body)
        if args.acked:
            # Ask until the server's <a/> covers every one.
            for _ in range(100):
                await asyncio.sleep(0.1)
                if all(b in acked for b in args.body):
                    break
                client.plugin['xep_0198'].request_ack()
            for body in args.body:
                assert body in acked, 'no ack of %r' % body
                say('ACKED', body)
        await client.barrier()
        say('SENT-ALL')
        if not await client.linger(args.linger):
            await client.close()

    run(flow, args)


if __name__ == '__main__':
    main()
