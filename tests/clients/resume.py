#!/usr/bin/env python3
"""Stream management (XEP-0198) with slixmpp's xep_0198 plugin: a TCP connection dropped in
the middle of a conversation is resumed, and nothing is lost or doubled.

1. B (with the plugin: it enables stream management with resumption) and A are online;
   A writes m1, B gets it;
2. B's TCP connection is cut (no closing of the stream); A writes m2 and m3;
3. B connects again and resumes: it gets m2 and m3, and each of m1, m2, m3 exactly once.

    resume.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost --password-b pb

Prints the lines of xmpptest.py (STEP ..., RESULT ...).
"""

import asyncio
import uuid

from xmpptest import TestClient, pair_parser, run, setup_logging, step, until

QUIET = 2.0


def main():
    p = pair_parser(__doc__)
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        tag = uuid.uuid4().hex[:8]
        a = TestClient(args.jid_a, args.password_a, args)
        b = TestClient(args.jid_b + '/phone', args.password_b, args, plugins=['xep_0198'])
        sm = b.plugin['xep_0198']
        resumed = []
        b.add_event_handler('session_resumed', lambda _s: resumed.append(True))
        got = []
        b.add_event_handler('message', lambda m: got.append(m['body']) if m['body'] else None)
        await asyncio.gather(a.start(), b.start())
        await until('stream management enabled with resumption', lambda: sm.sm_id is not None)
        full = b.boundjid.full
        bodies = ['m%d (%s)' % (i, tag) for i in (1, 2, 3)]

        step('a message before the cut')
        a.send_message(mto=full, mbody=bodies[0], mtype='chat')
        await until('m1 at B', lambda: bodies[0] in got)

        step('the connection is cut; A writes on')
        b.abort()
        await asyncio.sleep(0.5)
        for body in bodies[1:]:
            a.send_message(mto=full, mbody=body, mtype='chat')
        await a.barrier()
        a.unexpected('message', 'an error for a message to a session that waits to be resumed',
                     lambda m: m['type'] == 'error')

        step('B connects again and resumes')
        b.connect(*b.target)
        await until('the session resumed', lambda: resumed)
        await until('m2 and m3 at B', lambda: all(x in got for x in bodies[1:]))
        await asyncio.sleep(QUIET)
        for body in bodies:
            n = got.count(body)
            assert n == 1, '%r arrived %d times' % (body, n)
        await asyncio.gather(a.close(), b.close())

    run(flow, args)


if __name__ == '__main__':
    main()
