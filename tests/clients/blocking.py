#!/usr/bin/env python3
"""XEP-0191 blocking between two online users, with slixmpp's xep_0191 plugin:

1. the server's disco#info lists urn:xmpp:blocking;
2. B blocks A; B's blocklist get returns A;
3. A's chat messages to B (bare and full JID) do not arrive at B (nothing within 2 s), and A
   receives an error for each, service-unavailable (XEP-0191 3.5);
4. B's own message to A is not delivered either, and B gets an error, not-acceptable with
   <blocked xmlns='urn:xmpp:blocking:errors'/> (XEP-0191 3.6);
5. B unblocks A: the blocklist is empty and A's messages arrive again, from A's full JID.

    blocking.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost --password-b pb

Prints FEATURE blocking advertised|absent, BLOCKLIST <jids...>, ERROR <to> <condition> [blocked]
and the lines of xmpptest.py.
"""

import asyncio
import uuid

from xmpptest import TestClient, body_is, pair_parser, run, say, setup_logging, step

QUIET = 2.0


def error_about(body):
    """A message error that bounces `body` or, since the body is optional in a bounce, any
    message error."""
    def match(msg):
        return msg['type'] == 'error' and (not msg['body'] or msg['body'] == body)
    return match


def main():
    p = pair_parser(__doc__)
    args = p.parse_args()
    setup_logging(args)

    async def blocklist(client):
        jids = await client.plugin['xep_0191'].get_blocked_jids(timeout=5)
        jids = sorted(str(j) for j in jids)
        say('BLOCKLIST', *jids)
        return jids

    async def flow():
        tag = uuid.uuid4().hex[:8]
        a = TestClient(args.jid_a, args.password_a, args)
        b = TestClient(args.jid_b, args.password_b, args, plugins=['xep_0030', 'xep_0191'])
        await asyncio.gather(a.start(), b.start())
        a_bare = a.boundjid.bare

        step('disco#info of the server')
        info = await b.plugin['xep_0030'].get_info(jid=b.boundjid.domain, local=False,
                                                  cached=False, timeout=5)
        features = info['disco_info']['features']
        advertised = 'urn:xmpp:blocking' in features
        say('FEATURE blocking', 'advertised' if advertised else 'absent')
        assert advertised, 'urn:xmpp:blocking not in the server features %s' % features

        step('B blocks A')
        await b.plugin['xep_0191'].block(a_bare, timeout=5)
        jids = await blocklist(b)
        assert jids == [a_bare], 'blocklist after blocking %s: %s' % (a_bare, jids)

        for to in (b.boundjid.bare, b.boundjid.full):
            step('A writes to %s while blocked' % to)
            body = 'while blocked, to %s (%s)' % (to, tag)
            a.send_message(mto=to, mbody=body, mtype='chat')
            err = await a.expect('message', 'an error for the blocked message to %s' % to,
                                 error_about(body), timeout=QUIET)
            condition = err['error']['condition']
            say('ERROR', a.boundjid.full, condition)
            assert condition == 'service-unavailable', \
                'blocked message to %s: error %s, expected service-unavailable' % (to, condition)
            await asyncio.sleep(QUIET)
            b.unexpected('message', 'a message from blocked %s' % a_bare, body_is(body))

        step('B writes to blocked A')
        body = 'to someone I blocked (%s)' % tag
        b.send_message(mto=a_bare, mbody=body, mtype='chat')
        err = await b.expect('message', 'an error for the message to blocked %s' % a_bare,
                             error_about(body), timeout=QUIET)
        condition = err['error']['condition']
        marked = err.xml.find('.//{urn:xmpp:blocking:errors}blocked') is not None
        say('ERROR', b.boundjid.full, condition, 'blocked' if marked else '')
        assert condition == 'not-acceptable' and marked, \
            'message to a blocked contact: error %s%s, expected not-acceptable with ' \
            '<blocked xmlns="urn:xmpp:blocking:errors"/>' % (condition, ' (marked)' if marked else '')
        await asyncio.sleep(QUIET)
        a.unexpected('message', 'a message from %s, who blocked it' % b.boundjid.bare,
                     body_is(body))

        step('B unblocks A')
        await b.plugin['xep_0191'].unblock(a_bare, timeout=5)
        jids = await blocklist(b)
        assert jids == [], 'blocklist after unblocking: %s' % jids
        body = 'after the unblock (%s)' % tag
        a.send_message(mto=b.boundjid.bare, mbody=body, mtype='chat')
        msg = await b.expect('message', 'the message after the unblock', body_is(body))
        assert msg['from'].full == a.boundjid.full, \
            'message from %s, expected %s' % (msg['from'], a.boundjid.full)
        a.unexpected('message', 'an error after the unblock', lambda m: m['type'] == 'error')
        await asyncio.gather(a.close(), b.close())

    run(flow, args)


if __name__ == '__main__':
    main()
