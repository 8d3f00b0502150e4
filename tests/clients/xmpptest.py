"""Shared pieces of the end-to-end test clients (slixmpp 1.17 from PyPI).

Every client script prints machine-checkable lines on stdout, one fact per line:

    TLS <version>                 TLS version of the connection once authenticated
    MECHANISM <name>              SASL mechanism slixmpp chose and succeeded with
    TRIED <name>                  SASL mechanism that the server refused (before FAILURE)
    BOUND <full jid>              resource bound by the server
    READY <full jid>              presence sent and one IQ round trip done (the server saw it)
    RECEIVED <to> <from> <body>   a chat/normal message arrived (<to> is the receiving client)
    MESSAGE-ERROR <to> <from> <condition>
    DELAYED <to> <from> <stamp> <unix-seconds> <age-seconds> <body>
                                  a RECEIVED message with an XEP-0203 delay (- when unparsable)
    PRESENCE <to> <from> <type> [show=..] [status=..] [priority=..]   any presence received
    PUSH <to> <from> <jid> subscription=.. [ask=..] [name=..] [groups=a,b]   a roster push
    STEP <what>                   the scenario scripts' progress (the last one is where it failed)
    FAILURE <condition> [text]    the server refused something (SASL, registration, stream error)
    RESULT ok | RESULT fail <why> last line

Exit codes: 0 ok, 1 any other failure (timeout, protocol surprise), 2 SASL failure,
3 in-band registration refused. Logs (slixmpp debug, with the XML) go to stderr.
"""

import argparse
import asyncio
import datetime
import logging
import os
import ssl
import sys
from xml.etree import ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_AUTH = 2
EXIT_REFUSED = 3


def say(*fields):
    print(*fields, flush=True)


class ClientFailure(Exception):
    def __init__(self, code, condition, text=''):
        super().__init__(condition)
        self.code = code
        self.condition = condition
        self.text = text


def base_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--tls', choices=['starttls', 'direct'], default='starttls',
                   help='STARTTLS on a c2s port, or direct TLS (XEP-0368)')
    p.add_argument('--mech', default=None,
                   help='restrict SASL to this one mechanism (default: slixmpp chooses)')
    p.add_argument('--timeout', type=float, default=20.0,
                   help='overall deadline of the script in seconds')
    p.add_argument('--max-tls', choices=['1.2', '1.3'], default=None,
                   help='highest TLS version to offer (on TLS 1.2 slixmpp does SCRAM-*-PLUS '
                        'with tls-unique)')
    p.add_argument('--quiet', action='store_true', help='log warnings only')
    p.add_argument('--follow-redirect', action='store_true',
                   help='follow a see-other-host stream error to the address it names (slixmpp '
                        'would reconnect to --host/--port again)')
    return p


def pair_parser(description):
    """`base_parser` with the two accounts of a scenario between A and B."""
    p = base_parser(description)
    p.add_argument('--jid-a', required=True)
    p.add_argument('--password-a', required=True)
    p.add_argument('--jid-b', required=True)
    p.add_argument('--password-b', required=True)
    p.add_argument('--port-b', type=int, default=None,
                   help="B's server's port, when it is another server (default: --port)")
    return p


async def until(what, cond, timeout=10.0):
    """Waits until `cond()` holds; AssertionError naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError('%s did not happen within %ss' % (what, timeout))
        await asyncio.sleep(0.05)


def body_is(body):
    """A predicate for `expect`/`unexpected`: a chat or normal message with this body."""
    return lambda msg: msg['type'] in ('chat', 'normal') and msg['body'] == body


def setup_logging(args):
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.DEBUG,
        stream=sys.stderr,
        format='%(asctime)s %(levelname)s %(name)s: %(message)s')


class TestClient(slixmpp.ClientXMPP):
    """A ClientXMPP that connects to one fixed address, trusts any certificate, and turns
    everything that happens into `say` lines and a `ready` future."""

    def __init__(self, jid, password, args, *, priority=None, show=None, status=None,
                 plugins=(), manual_subscriptions=False, port=None):
        """`priority`, `show`, `status`: what the initial presence carries. `plugins`: slixmpp
        plugins to register (e.g. 'xep_0203'). `manual_subscriptions`: do not let slixmpp
        answer subscription requests by itself (it approves and subscribes back by default).
        `port`: another port than `--port` (a user of another server)."""
        super().__init__(jid, password, sasl_mech=args.mech)
        self.priority = priority
        self.show = show
        self.status = status
        for plugin in plugins:
            self.register_plugin(plugin)
        if manual_subscriptions:
            self.roster.auto_authorize = None
            self.roster.auto_subscribe = False
        # Self-signed test certificate: no verification.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        if args.max_tls == '1.2':
            self.ssl_context.maximum_version = ssl.TLSVersion.TLSv1_2
        # Exactly one way in: the fixed address with the requested kind of TLS
        # (slixmpp would otherwise try direct TLS first, then STARTTLS).
        self.enable_plaintext = False
        self.enable_direct_tls = args.tls == 'direct'
        self.enable_starttls = args.tls == 'starttls'
        self.target = (args.host, port or args.port)
        self.follow_redirect = getattr(args, 'follow_redirect', False)
        self.redirecting = False
        self.mechanism = None
        self.ready = asyncio.get_running_loop().create_future()
        # Set once the connection is gone, for `linger`.
        self.gone = asyncio.get_running_loop().create_future()
        self.messages = asyncio.Queue()
        # Everything received, by kind ('message', 'presence', 'push'), for `expect`.
        self.seen = {'message': [], 'presence': [], 'push': []}
        self._seen_changed = asyncio.Event()
        self.add_event_handler('presence', self._on_presence)
        self.add_event_handler('roster_update', self._on_roster_update)
        self.add_event_handler('auth_success', self._on_auth_success)
        self.add_event_handler('failed_auth', self._on_failed_auth)
        self.add_event_handler('failed_all_auth', self._on_failed_all_auth)
        self.add_event_handler('connection_failed', self._on_connection_failed)
        self.add_event_handler('stream_error', self._on_stream_error)
        self.add_event_handler('disconnected', self._on_disconnected)
        self.add_event_handler('session_start', self._on_session_start)
        self.add_event_handler('message', self._on_message)

    # -- outcome ---------------------------------------------------------------------------

    def fail(self, code, condition, text=''):
        if not self.ready.done():
            self.ready.set_exception(ClientFailure(code, condition, text))

    def tls_version(self):
        if self.transport is None:
            return None
        obj = self.transport.get_extra_info('ssl_object')
        return obj.version() if obj is not None else None

    # -- events ----------------------------------------------------------------------------

    def _on_auth_success(self, _stanza):
        self.mechanism = self.plugin['feature_mechanisms'].mech.name
        say('TLS', self.tls_version() or 'none')
        say('MECHANISM', self.mechanism)

    def _on_failed_auth(self, stanza):
        condition = stanza['condition'] or 'unknown'
        say('TLS', self.tls_version() or 'none')
        say('TRIED', self.plugin['feature_mechanisms'].mech.name)
        say('FAILURE', condition, stanza['text'] or '')
        self.fail(EXIT_AUTH, condition, stanza['text'])
        # Do not let slixmpp go on with the next mechanism: one refusal is the answer.
        self.abort()

    def _on_failed_all_auth(self, _event):
        self.fail(EXIT_AUTH, 'no-acceptable-mechanism')

    def _on_connection_failed(self, error):
        self.fail(EXIT_ERROR, 'connection-failed', str(error))
        self.cancel_connection_attempt()

    def _on_stream_error(self, error):
        condition = error['condition'] or 'unknown'
        other = error['see_other_host'] if condition == 'see-other-host' else ''
        if other and self.follow_redirect and not self.redirecting:
            # RFC 6120 4.9.3.19: the address is host:port (an IPv6 host in brackets).
            host, _, port = other.rpartition(':')
            host = host.strip('[]') or other
            self.custom_address = (host, int(port) if port.isdigit() else 5222)
            self.redirecting = True
            say('REDIRECTED', other)
            return
        say('FAILURE', 'stream-error', condition, error['text'] or '')
        self.fail(EXIT_ERROR, 'stream-error ' + condition, error['text'])

    def _on_disconnected(self, reason):
        if self.redirecting:
            # slixmpp connects again, to `custom_address`.
            self.redirecting = False
            return
        self.fail(EXIT_ERROR, 'disconnected', str(reason))
        if not self.gone.done():
            self.gone.set_result(True)

    async def _on_session_start(self, _event):
        say('BOUND', self.boundjid.full)
        self.send_presence(pshow=self.show, pstatus=self.status, ppriority=self.priority)
        # Barrier: the server handles a stream in order, so once this IQ is answered (result
        # or error, either will do) it has seen the presence above.
        try:
            await self.get_roster(timeout=5)
        except IqError as e:
            logging.info('roster get answered with error %s', e.iq['error']['condition'])
        except IqTimeout:
            logging.warning('roster get not answered within 5 s; going on')
        say('READY', self.boundjid.full)
        if not self.ready.done():
            self.ready.set_result(True)

    def _on_message(self, msg):
        self._remember('message', msg)
        if msg['type'] == 'error':
            say('MESSAGE-ERROR', self.boundjid.full, msg['from'].full,
                msg['error']['condition'] or 'unknown')
            return
        if msg['type'] in ('chat', 'normal') and msg['body']:
            body = ' '.join(msg['body'].split())
            say('RECEIVED', self.boundjid.full, msg['from'].full, body)
            delay = msg.xml.find('{urn:xmpp:delay}delay')
            if delay is not None:
                raw = delay.get('stamp', '')
                stamp = parse_stamp(raw)
                epoch = age = '-'
                if stamp is not None:
                    now = datetime.datetime.now(datetime.timezone.utc)
                    epoch = '%.3f' % stamp.timestamp()
                    age = '%.3f' % (now - stamp).total_seconds()
                say('DELAYED', self.boundjid.full, msg['from'].full, raw or '-', epoch, age, body)
            self.messages.put_nowait((msg['from'].full, msg['body']))

    def _on_presence(self, pres):
        self._remember('presence', pres)
        fields = [self.boundjid.full, pres['from'].full, pres.xml.get('type', 'available')]
        if pres['show']:
            fields.append('show=' + pres['show'])
        if pres['status']:
            fields.append('status=' + ' '.join(pres['status'].split()))
        if pres.xml.find('{jabber:client}priority') is not None:
            fields.append('priority=%s' % pres['priority'])
        say('PRESENCE', *fields)

    def _on_roster_update(self, iq):
        # Fired for roster results and for pushes (iq type set) alike; slixmpp has already
        # refused pushes from anyone but our own account (RFC 6121 2.1.6).
        if iq['type'] != 'set':
            return
        self._remember('push', iq)
        for jid, item in iq['roster']['items'].items():
            say('PUSH', self.boundjid.full, iq['from'].full or '-', describe_item(jid, item))

    def _remember(self, kind, stanza):
        self.seen[kind].append(stanza)
        self._seen_changed.set()

    # -- use -------------------------------------------------------------------------------

    async def start(self):
        """Connect and wait until READY (raises ClientFailure otherwise)."""
        self.connect(*self.target)
        await self.ready

    async def linger(self, seconds):
        """Stays online until the server goes away (prints DISCONNECTED, returns True) or
        `seconds` pass (returns False); losing the connection then is no failure."""
        if seconds <= 0:
            return False
        try:
            await asyncio.wait_for(asyncio.shield(self.gone), seconds)
        except asyncio.TimeoutError:
            return False
        say('DISCONNECTED')
        return True

    async def close(self):
        try:
            await asyncio.wait_for(self.disconnect(wait=1.0), 3)
        except Exception:  # closing is best effort
            self.abort()

    async def expect(self, kind, what, pred=lambda _s: True, timeout=5.0):
        """The first received stanza of `kind` (see `seen`) for which `pred` holds, waiting
        up to `timeout` seconds for it; it is consumed, so it never matches twice.
        AssertionError naming `what` when none comes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, stanza in enumerate(self.seen[kind]):
                if pred(stanza):
                    del self.seen[kind][i]
                    return stanza
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError('%s got no %s within %ss' % (self.boundjid.full, what, timeout))
            self._seen_changed.clear()
            try:
                await asyncio.wait_for(self._seen_changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    def unexpected(self, kind, what, pred=lambda _s: True):
        """AssertionError if a stanza of `kind` for which `pred` holds has arrived (and not
        been consumed by `expect`)."""
        for stanza in self.seen[kind]:
            if pred(stanza):
                raise AssertionError('%s got %s, which it must not: %s'
                                     % (self.boundjid.full, what, stanza))

    async def barrier(self, timeout=5.0):
        """One IQ round trip to our server (a XEP-0199 ping; an error answer will do): the
        server handles a stream in order, so afterwards it has seen everything sent before."""
        iq = self.make_iq_get(ito=self.boundjid.domain)
        iq.xml.append(ET.Element('{urn:xmpp:ping}ping'))
        try:
            await iq.send(timeout=timeout)
        except IqError:
            pass

    async def roster_query(self, ver=None, timeout=5.0):
        """A roster get (with `ver` when not None), as it is sent; returns the result IQ."""
        iq = self.make_iq_get()
        iq.enable('roster')
        if ver is not None:
            iq['roster']['ver'] = ver
        return await iq.send(timeout=timeout)


def parse_stamp(raw):
    """An XEP-0082 DateTime as an aware datetime, or None when it does not parse."""
    if not raw:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(raw.replace('Z', '+00:00'))
    except ValueError:
        return None
    if stamp.tzinfo is None:  # XEP-0082 requires a zone; treat a missing one as unparsable
        return None
    return stamp


def describe_item(jid, item):
    """`<jid> subscription=.. [ask=..] [name=..] [groups=a,b]` of a roster item."""
    fields = [str(jid), 'subscription=%s' % (item['subscription'] or 'none')]
    if item['ask']:
        fields.append('ask=%s' % item['ask'])
    if item['name']:
        fields.append('name=%s' % item['name'].replace(' ', '_'))
    if item['groups']:
        fields.append('groups=%s' % ','.join(sorted(item['groups'])))
    return ' '.join(fields)


def roster_items(iq):
    """{bare jid: item} of a roster result or push; {} for an empty result (no <query/>)."""
    if iq.xml.find('{jabber:iq:roster}query') is None:
        return {}
    return {str(jid): item for jid, item in iq['roster']['items'].items()}


def step(what):
    say('STEP', what)


def run(main, args):
    """Run `main()` under the overall deadline; print RESULT and exit with the right code."""
    async def guarded():
        try:
            await asyncio.wait_for(main(), args.timeout)
            return EXIT_OK, None
        except ClientFailure as e:
            return e.code, e.condition
        except asyncio.TimeoutError:
            return EXIT_ERROR, 'timeout after %ss' % args.timeout
        except AssertionError as e:
            return EXIT_ERROR, 'assertion: %s' % e
        except IqError as e:
            error = e.iq['error']
            say('FAILURE', 'iq-error', error['condition'] or 'unknown', error['text'] or '')
            return EXIT_ERROR, 'iq error %s from %s: %s' % (
                error['condition'], e.iq['from'], ' '.join(str(e.iq).split()))
        except IqTimeout as e:
            return EXIT_ERROR, 'iq not answered: %s' % ' '.join(str(e.iq).split())

    code, why = asyncio.run(guarded())
    say('RESULT ok' if code == EXIT_OK else 'RESULT fail %s' % why)
    sys.stdout.flush()
    sys.stderr.flush()
    # slixmpp may leave tasks behind: never let them keep the process alive.
    os._exit(code)
