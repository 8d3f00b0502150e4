#!/usr/bin/env python3
"""Log in with slixmpp, report TLS version, SASL mechanism and bound JID, then log out.

    login.py --port 5222 --jid alice@localhost --password secret [--tls direct] [--mech PLAIN]

Prints MECHANISM/BOUND/READY then RESULT ok (exit 0), or FAILURE <condition> and exit 2 when
SASL refuses the credentials. See xmpptest.py for the line format.
"""

from xmpptest import TestClient, base_parser, run, setup_logging


def main():
    p = base_parser(__doc__)
    p.add_argument('--jid', required=True)
    p.add_argument('--password', required=True)
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        client = TestClient(args.jid, args.password, args)
        await client.start()
        await client.close()

    run(flow, args)


if __name__ == '__main__':
    main()
