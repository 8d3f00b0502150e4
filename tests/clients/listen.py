#!/usr/bin/env python3
"""Log in, print READY once the server has our presence, then print every message received
(RECEIVED <to> <from> <body>) until --count messages have arrived.

    listen.py --port 5222 --jid bob@localhost --password pb --count 2 --timeout 40
"""

from xmpptest import TestClient, base_parser, run, setup_logging


def main():
    p = base_parser(__doc__)
    p.add_argument('--jid', required=True)
    p.add_argument('--password', required=True)
    p.add_argument('--count', type=int, default=1)
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        client = TestClient(args.jid, args.password, args)
        await client.start()
        for _ in range(args.count):
            await client.messages.get()
        await client.close()

    run(flow, args)


if __name__ == '__main__':
    main()
