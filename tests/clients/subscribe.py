#!/usr/bin/env python3
"""Presence subscription both ways (RFC 6121 section 3) and presence after it (section 4),
between two online users who both requested their roster, answering requests by hand:

1. A subscribes to B (A gets a push with ask=subscribe); B gets the request from A's bare JID;
2. B approves: B gets a push with subscription=from; A gets `subscribed` and a push with
   subscription=to, and B's current presence from B's full JID;
3. B subscribes back and A approves: both end with subscription=both (pushes and roster get),
   and B gets A's current presence from A's full JID;
4. A changes presence to show=dnd, status=busy: B receives exactly that, from A's full JID;
5. B disconnects: A receives unavailable from B's full JID.

    subscribe.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost --password-b pb

(`--port-b`: B on another server of a Kontalk network.)

Prints ITEM <who> <description> for the final rosters and the lines of xmpptest.py.
"""

import asyncio

from xmpptest import (TestClient, describe_item, pair_parser, roster_items, run, say,
                      setup_logging, step)


def push_of(jid, subscription, ask=None):
    def match(iq):
        item = roster_items(iq).get(jid)
        return (item is not None
                and (item['subscription'] or 'none') == subscription
                and (ask is None or item['ask'] == ask))
    return match


def presence(frm, ptype, show=None, status=None):
    """A presence from exactly `frm` (a bare or full JID string) of type `ptype`."""
    def match(pres):
        return (pres['from'].full == frm
                and pres.xml.get('type', 'available') == ptype
                and (show is None or pres['show'] == show)
                and (status is None or pres['status'] == status))
    return match


def main():
    p = pair_parser(__doc__)
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        a = TestClient(args.jid_a, args.password_a, args, manual_subscriptions=True)
        b = TestClient(args.jid_b, args.password_b, args, manual_subscriptions=True,
                       port=args.port_b)
        await asyncio.gather(a.start(), b.start())
        a_bare, b_bare = a.boundjid.bare, b.boundjid.bare
        a_full, b_full = a.boundjid.full, b.boundjid.full

        step('A subscribes to B')
        a.send_presence_subscription(pto=b_bare)
        await a.expect('push', 'push of %s with ask=subscribe' % b_bare,
                       push_of(b_bare, 'none', 'subscribe'))
        req = await b.expect('presence', 'subscribe from %s' % a_bare,
                             lambda p: p.xml.get('type') == 'subscribe')
        assert req['from'].full == a_bare, \
            'subscribe request from %s, expected the bare JID %s' % (req['from'], a_bare)

        step('B approves')
        b.send_presence(pto=a_bare, ptype='subscribed')
        await b.expect('push', 'push of %s with subscription=from' % a_bare,
                       push_of(a_bare, 'from'))
        await a.expect('presence', 'subscribed from %s' % b_bare,
                       presence(b_bare, 'subscribed'))
        await a.expect('push', 'push of %s with subscription=to' % b_bare,
                       push_of(b_bare, 'to'))
        await a.expect('presence', "B's available presence from %s" % b_full,
                       presence(b_full, 'available'))

        step('B subscribes back')
        b.send_presence_subscription(pto=a_bare)
        await b.expect('push', 'push of %s with subscription=from ask=subscribe' % a_bare,
                       push_of(a_bare, 'from', 'subscribe'))
        req = await a.expect('presence', 'subscribe from %s' % b_bare,
                             lambda p: p.xml.get('type') == 'subscribe')
        assert req['from'].full == b_bare, \
            'subscribe request from %s, expected the bare JID %s' % (req['from'], b_bare)

        step('A approves')
        a.send_presence(pto=b_bare, ptype='subscribed')
        await a.expect('push', 'push of %s with subscription=both' % b_bare,
                       push_of(b_bare, 'both'))
        await b.expect('presence', 'subscribed from %s' % a_bare,
                       presence(a_bare, 'subscribed'))
        await b.expect('push', 'push of %s with subscription=both' % a_bare,
                       push_of(a_bare, 'both'))
        await b.expect('presence', "A's available presence from %s" % a_full,
                       presence(a_full, 'available'))

        step('both rosters')
        for client, contact in ((a, b_bare), (b, a_bare)):
            result = await client.roster_query()
            item = roster_items(result).get(contact)
            assert item is not None, '%s has no roster item for %s: %s' % (
                client.boundjid.bare, contact, result)
            say('ITEM', client.boundjid.bare, describe_item(contact, item))
            assert item['subscription'] == 'both', '%s: %s' % (client.boundjid.bare, result)
            assert not item['ask'], '%s: ask left over: %s' % (client.boundjid.bare, result)

        step('A goes dnd')
        a.send_presence(pshow='dnd', pstatus='busy')
        await b.expect('presence', 'dnd/busy presence from %s' % a_full,
                       presence(a_full, 'available', show='dnd', status='busy'))

        step('B disconnects')
        await b.close()
        await a.expect('presence', 'unavailable from %s' % b_full,
                       presence(b_full, 'unavailable'))
        await a.close()

    run(flow, args)


if __name__ == '__main__':
    main()
