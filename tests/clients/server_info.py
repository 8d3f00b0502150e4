#!/usr/bin/env python3
"""vcard-temp (XEP-0054), entity time (XEP-0202) and last activity (XEP-0012) as slixmpp's
plugins do them:

1. A publishes a vCard with FN "Alice A." and reads it back from its bare JID;
2. B fetches A's vCard (iq get to A's bare JID, answered by the server) and sees that FN;
3. B asks the server ('localhost') for its time: a UTC time within a minute of now;
4. B asks the server for its last activity: the uptime in seconds, >= 0.

    server_info.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost --password-b pb

Prints VCARD <owner> <reader> FN=<fn>, TIME <utc> <tzo> <offset-seconds>, LAST <seconds>, and
the lines of xmpptest.py.
"""

import asyncio
import datetime

from xmpptest import TestClient, pair_parser, run, say, setup_logging, step

FN = 'Alice A.'


def main():
    p = pair_parser(__doc__)
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        plugins = ['xep_0054', 'xep_0202', 'xep_0012']
        a = TestClient(args.jid_a, args.password_a, args, plugins=plugins)
        b = TestClient(args.jid_b, args.password_b, args, plugins=plugins)
        await asyncio.gather(a.start(), b.start())
        a_bare = a.boundjid.bare

        step('A publishes its vCard')
        vcard = a.plugin['xep_0054'].make_vcard()
        vcard['FN'] = FN
        vcard['NICKNAME'] = 'alice'
        await a.plugin['xep_0054'].publish_vcard(vcard, timeout=5)

        for reader in (a, b):
            step('%s fetches the vCard of %s' % (reader.boundjid.bare, a_bare))
            got = await reader.plugin['xep_0054'].get_vcard(a_bare, local=False, timeout=5)
            assert got.xml.find('{vcard-temp}vCard') is not None, \
                'vCard get of %s returned no vCard: %s' % (a_bare, got)
            fn = got['vcard_temp']['FN']
            say('VCARD', a_bare, reader.boundjid.bare, 'FN=' + fn)
            assert fn == FN, 'FN of %s is %r, expected %r' % (a_bare, fn, FN)
            assert got['from'].full in ('', a_bare), 'vCard result from %s' % got['from']

        step('entity time of the server')
        domain = b.boundjid.domain
        now = datetime.datetime.now(datetime.timezone.utc)
        got = await b.plugin['xep_0202'].get_entity_time(domain, timeout=5)
        time_el = got.xml.find('{urn:xmpp:time}time')
        assert time_el is not None, 'no <time xmlns="urn:xmpp:time"/> in %s' % got
        utc_text = time_el.findtext('{urn:xmpp:time}utc') or ''
        tzo_text = time_el.findtext('{urn:xmpp:time}tzo') or ''
        assert utc_text.endswith('Z'), 'utc %r is not in UTC (XEP-0202 wants a Z)' % utc_text
        assert tzo_text, 'no tzo in %s' % got
        utc = datetime.datetime.fromisoformat(utc_text.replace('Z', '+00:00'))
        offset = (utc - now).total_seconds()
        say('TIME', utc_text, tzo_text, '%.3f' % offset)
        assert abs(offset) < 60, 'server time %s is %.1f s from now' % (utc_text, offset)

        step('last activity of the server')
        got = await b.plugin['xep_0012'].get_last_activity(domain, timeout=5)
        query = got.xml.find('{jabber:iq:last}query')
        assert query is not None, 'no jabber:iq:last query in %s' % got
        seconds = int(query.get('seconds', '-1'))
        say('LAST', seconds)
        assert seconds >= 0, 'uptime %r' % query.get('seconds')
        await asyncio.gather(a.close(), b.close())

    run(flow, args)


if __name__ == '__main__':
    main()
