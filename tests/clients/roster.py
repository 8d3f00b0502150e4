#!/usr/bin/env python3
"""Roster management (RFC 6121 section 2) with two resources of one account, both of which
requested the roster at login (so both are "interested resources"):

1. resource one adds --contact with name "Bob" and group "Friends" (slixmpp update_roster: an
   iq set of jabber:iq:roster); both resources get the roster push;
2. a roster get returns the item with subscription none (and no ask);
3. roster versioning (RFC 6121 2.6), when the server advertises it: a get with the current
   ver gets an empty result; with the ver from before the add, the full roster (or, as 2.6.3
   allows, an empty result followed by pushes of the changes);
4. removing the item (subscription='remove') pushes the removal to both resources, and a
   roster get no longer has it.

    roster.py --port 5222 --jid alice@localhost --password pa --contact bob@localhost

Prints FEATURE rosterver advertised|absent, VER <when> <ver>, ITEM <when> <description>,
VERSIONED <current|old> <empty|full|pushes> and the lines of xmpptest.py.
"""

import asyncio

from xmpptest import (TestClient, base_parser, describe_item, roster_items, run, say,
                      setup_logging, step)


def is_push_of(jid, pred):
    def match(iq):
        items = roster_items(iq)
        return jid in items and pred(items[jid])
    return match


def main():
    p = base_parser(__doc__)
    p.add_argument('--jid', required=True, help='bare JID of the account')
    p.add_argument('--password', required=True)
    p.add_argument('--contact', required=True, help='bare JID to add to the roster')
    args = p.parse_args()
    setup_logging(args)
    contact = args.contact

    async def flow():
        one = TestClient(args.jid + '/one', args.password, args)
        two = TestClient(args.jid + '/two', args.password, args)
        await asyncio.gather(one.start(), two.start())
        versioning = 'rosterver' in one.features
        say('FEATURE rosterver', 'advertised' if versioning else 'absent')

        step('initial roster get')
        before = await one.roster_query(ver='' if versioning else None)
        items = roster_items(before)
        assert contact not in items, 'fresh account has %s in its roster: %s' % (contact, before)
        ver0 = before.xml.find('{jabber:iq:roster}query')
        ver0 = ver0.get('ver') if ver0 is not None else None
        say('VER initial', ver0 if ver0 is not None else '-')
        if versioning:
            assert ver0 is not None, \
                'versioning advertised, but the roster result has no ver: %s' % before

        step('add %s' % contact)
        await one.update_roster(contact, name='Bob', groups=['Friends'], timeout=5)
        for client in (one, two):
            push = await client.expect(
                'push', 'roster push adding %s' % contact,
                is_push_of(contact, lambda i: i['subscription'] in ('', 'none')))
            item = roster_items(push)[contact]
            say('ITEM push-add', client.boundjid.full, describe_item(contact, item))
            assert item['name'] == 'Bob', 'pushed name %r' % item['name']
            assert item['groups'] == ['Friends'], 'pushed groups %r' % item['groups']
            assert not item['ask'], 'pushed ask %r without any subscribe' % item['ask']
            assert push['from'].full in ('', args.jid), 'push from %s' % push['from']

        step('roster get after the add')
        after = await one.roster_query()
        items = roster_items(after)
        assert contact in items, 'roster get after the add lacks %s: %s' % (contact, after)
        item = items[contact]
        say('ITEM get', describe_item(contact, item))
        assert item['subscription'] in ('', 'none'), 'subscription %r' % item['subscription']
        assert not item['ask'], 'ask %r' % item['ask']
        assert item['name'] == 'Bob' and item['groups'] == ['Friends'], str(item)

        if versioning:
            step('roster get with the current ver')
            current = await one.roster_query(ver='')
            ver1 = current.xml.find('{jabber:iq:roster}query').get('ver')
            say('VER current', ver1 if ver1 is not None else '-')
            assert ver1 is not None and ver1 != ver0, \
                'the roster changed but ver did not: %r -> %r' % (ver0, ver1)
            same = await one.roster_query(ver=ver1)
            got = roster_items(same)
            say('VERSIONED current', 'empty' if not got else 'full')
            assert not got, 'a get with the current ver returned items: %s' % same

            step('roster get with the old ver')
            old = await one.roster_query(ver=ver0)
            got = roster_items(old)
            if got:
                say('VERSIONED old full')
                assert contact in got, 'full roster for an old ver lacks %s: %s' % (contact, old)
            else:
                # RFC 6121 2.6.3: an empty result, then the changes as roster pushes.
                say('VERSIONED old pushes')
                await one.expect('push', 'roster push of %s after a get with an old ver' % contact,
                                 is_push_of(contact, lambda i: i['subscription'] != 'remove'))

        step('remove %s' % contact)
        await one.del_roster_item(contact)
        for client in (one, two):
            push = await client.expect(
                'push', 'roster push removing %s' % contact,
                is_push_of(contact, lambda i: i['subscription'] == 'remove'))
            say('ITEM push-remove', client.boundjid.full,
                describe_item(contact, roster_items(push)[contact]))

        step('roster get after the removal')
        gone = await one.roster_query()
        assert contact not in roster_items(gone), \
            'removed %s is still in the roster: %s' % (contact, gone)
        say('ITEM removed', contact)
        await asyncio.gather(one.close(), two.close())

    run(flow, args)


if __name__ == '__main__':
    main()
