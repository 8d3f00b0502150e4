#!/usr/bin/env python3
"""In-band registration (XEP-0077) with slixmpp, then log in with the new account.

    register.py --port 5222 --jid carol@localhost --password pc [--force]

After TLS, reports whether the server advertises the registration stream feature
(FEATURE register advertised|absent). With --force the registration is attempted even when it
is not advertised. The client asks for the form (IQ get), then sends username and password
(IQ set): REGISTERED on success, after which it logs in (MECHANISM/BOUND/READY, RESULT ok).
A refusal prints FAILURE <condition> and exits 3.
"""

from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza import StreamFeatures

from xmpptest import (EXIT_ERROR, EXIT_REFUSED, TestClient, base_parser, run, say,
                      setup_logging)


class Registrar(TestClient):
    def __init__(self, jid, password, args):
        super().__init__(jid, password, args)
        self.force = args.force
        self.seen_secure_features = False
        self.register_plugin('xep_0077')
        # Replace the plugin's feature handler with one that reports each step (and does
        # the IQ itself): the plugin's own force_registration never fires on an asyncio TLS
        # transport in slixmpp 1.17 (it tests for ssl.SSLSocket).
        order = self.plugin['xep_0077'].order
        self.unregister_feature('register', order)
        self.register_feature('register', self._register, restart=False, order=order)
        self.add_filter('in', self._features_filter)

    def _features_filter(self, stanza):
        if isinstance(stanza, StreamFeatures) and not self.seen_secure_features \
                and self.tls_version() is not None and 'mechanisms' not in self.features:
            self.seen_secure_features = True
            advertised = 'register' in stanza['features']
            say('FEATURE register', 'advertised' if advertised else 'absent')
            if not advertised and self.force:
                stanza.enable('register')
        return stanza

    async def _register(self, _features):
        if 'mechanisms' in self.features or self.tls_version() is None:
            return False
        try:
            iq = self.Iq()
            iq['type'] = 'get'
            iq.enable('register')
            form = await iq.send(timeout=10)
            fields = sorted(form['register'].get_fields())
            say('REGISTER-FORM', *fields)

            iq = self.Iq()
            iq['type'] = 'set'
            iq['register']['username'] = self.requested_jid.user
            iq['register']['password'] = self.password
            await iq.send(timeout=10)
            say('REGISTERED', self.requested_jid.bare)
        except IqError as e:
            condition = e.iq['error']['condition'] or 'unknown'
            say('FAILURE', condition, e.iq['error']['text'] or '')
            self.fail(EXIT_REFUSED, condition, e.iq['error']['text'])
            self.abort()
        except IqTimeout:
            self.fail(EXIT_ERROR, 'registration-timeout')
            self.abort()
        return False


def main():
    p = base_parser(__doc__)
    p.add_argument('--jid', required=True)
    p.add_argument('--password', required=True)
    p.add_argument('--force', action='store_true',
                   help='register even when the server does not advertise it')
    args = p.parse_args()
    setup_logging(args)

    async def flow():
        client = Registrar(args.jid, args.password, args)
        await client.start()
        await client.close()

    run(flow, args)


if __name__ == '__main__':
    main()
