#!/usr/bin/env python3
"""Log in (initial presence with --priority), and print every message that arrives:
RECEIVED lines, plus DELAYED <to> <from> <stamp> <age-seconds> <body> for those with an
XEP-0203 delay (the xep_0203 plugin is registered). Waits until --count messages have come
(if given), then --settle more seconds to catch any extra ones, and prints COUNT <n>.

    inbox.py --port 5222 --jid bob@localhost --password pb --count 2 --settle 2
"""

import asyncio

from xmpptest import TestClient, base_parser, run, say, setup_logging


def main():
    p = base_parser(__doc__)
    p.add_argument('--jid', required=True)
    p.add_argument('--password', required=True)
    p.add_argument('--priority', type=int, default=None)
    p.add_argument('--count', type=int, default=0)
    p.add_argument('--settle', type=float, default=2.0)
    args = p.parse_args()
    setup_logging(args)

    def chat(msg):
        return msg['type'] in ('chat', 'normal') and bool(msg['body'])

    async def flow():
        client = TestClient(args.jid, args.password, args, priority=args.priority,
                            plugins=['xep_0203'])
        await client.start()
        for i in range(args.count):
            await client.expect('message', 'message %d of %d' % (i + 1, args.count), chat,
                                timeout=10)
        await asyncio.sleep(args.settle)
        extra = [m for m in client.seen['message'] if chat(m)]
        say('COUNT', args.count + len(extra))
        await client.close()

    run(flow, args)


if __name__ == '__main__':
    main()
