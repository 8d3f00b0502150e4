#!/usr/bin/env python3
"""Two users online at once, in one asyncio loop: A sends to B's bare JID and B sends to A's
bare JID; each checks that the other's message arrives with the right body and with `from` set
to the sender's full JID (as the server bound it).

    chat.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost --password-b pb
"""

import asyncio
import uuid

from xmpptest import TestClient, pair_parser, run, say, setup_logging


async def expect_message(receiver, sender, body):
    while True:
        frm, got = await receiver.messages.get()
        if got == body:
            assert frm == sender.boundjid.full, \
                'message to %s came from %r, expected %r' % (receiver.boundjid, frm, sender.boundjid.full)
            return
        say('UNEXPECTED', receiver.boundjid.full, frm, ' '.join(got.split()))


def main():
    p = pair_parser(__doc__)
    p.add_argument('--rounds', type=int, default=1, help='messages each way')
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        a = TestClient(args.jid_a, args.password_a, args)
        b = TestClient(args.jid_b, args.password_b, args, port=args.port_b)
        await asyncio.gather(a.start(), b.start())
        tag = uuid.uuid4().hex[:8]
        for i in range(args.rounds):
            to_b = 'hello %s from A, round %d (%s) <&> ünïcode' % (b.boundjid.bare, i, tag)
            to_a = 'hello %s from B, round %d (%s)' % (a.boundjid.bare, i, tag)
            a.send_message(mto=b.boundjid.bare, mbody=to_b, mtype='chat')
            b.send_message(mto=a.boundjid.bare, mbody=to_a, mtype='chat')
            await asyncio.gather(expect_message(b, a, to_b), expect_message(a, b, to_a))
        say('CHAT ok', args.rounds)
        await asyncio.gather(a.close(), b.close())

    run(flow, args)


if __name__ == '__main__':
    main()
