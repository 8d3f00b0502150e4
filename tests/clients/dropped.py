#!/usr/bin/env python3
"""A phone that drops right after login finds its stored messages at the next login.

1. B is offline; A writes --count messages of --size bytes to B's bare JID (stored);
2. B ("phone", with stream management, XEP-0198) logs in, gets the first stored message and
   loses its TCP connection at once, having acknowledged nothing;
3. B logs in again (a new session, no resumption): every message arrives, each once, with its
   delay stamp.

    dropped.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost \\
               --password-b pb --count 20 --size 2000

Prints the lines of xmpptest.py (STEP ..., RESULT ...).
"""

import asyncio
import uuid

from xmpptest import TestClient, pair_parser, run, setup_logging, step, until

QUIET = 2.0


def main():
    p = pair_parser(__doc__)
    p.add_argument('--count', type=int, default=20)
    p.add_argument('--size', type=int, default=2000)
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        tag = uuid.uuid4().hex[:8]
        bodies = ['%d %s %s' % (i, tag, 'x' * args.size) for i in range(args.count)]
        a = TestClient(args.jid_a, args.password_a, args)
        await a.start()

        step('A writes to B, who is offline')
        for body in bodies:
            a.send_message(mto=args.jid_b, mbody=body, mtype='chat')
        await a.barrier()

        step('B logs in with stream management and drops at the first message')
        phone = TestClient(args.jid_b + '/phone', args.password_b, args, plugins=['xep_0198'])
        # It never acknowledges: the server's <r/> goes unanswered.
        phone.plugin['xep_0198'].send_ack = lambda *_a: None
        got = []
        phone.add_event_handler(
            'message', lambda m: got.append(m['body']) if m['body'] in bodies else None)
        phone.connect(*phone.target)
        await until('the first stored message', lambda: got, 10.0)
        phone.abort()
        await asyncio.sleep(0.5)

        step('B logs in again: everything, once each, with its delay stamp')
        again = TestClient(args.jid_b + '/phone', args.password_b, args, plugins=['xep_0203'])
        seen = []
        again.add_event_handler('message', lambda m: seen.append(m) if m['body'] in bodies else None)
        await again.start()
        await until('all %d messages' % len(bodies), lambda: len(seen) >= len(bodies), 15.0)
        await asyncio.sleep(QUIET)
        counts = [sum(1 for m in seen if m['body'] == b) for b in bodies]
        assert all(n == 1 for n in counts), 'arrivals per message: %s' % counts
        assert [m['body'] for m in seen] == bodies, 'not in the order they were sent'
        assert all(m.xml.find('{urn:xmpp:delay}delay') is not None for m in seen), \
            'a stored message without its delay stamp'
        await asyncio.gather(a.close(), again.close())

    run(flow, args)


if __name__ == '__main__':
    main()
