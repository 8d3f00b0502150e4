#!/usr/bin/env python3
"""An emulator of the Kontalk Android client (kontalk/androidclient with Smack 4.3.4), for the
server's tests. It writes the bytes the real client writes (plain sockets, the `ssl` module and an
incremental XML reader; no XMPP library), from the notes in shared/KONTALK.md part 1.

    kontalk_client.py [GLOBAL OPTIONS] COMMAND [OPTIONS] [COMMAND [OPTIONS] ...]

Global options (before the first command):
    --host 127.0.0.1  --port P  --domain localhost  --state DIR  (keys and account between runs)
    --timeout 60      overall deadline of the run in seconds
    --tamper WHAT     negative cases, repeatable (also an option of register and login, for
                      that command only):
                        cert-key      the certificate's RSA key (SPKI, and the signer) is another
                                      key than the PGP primary in its extension (register + login)
                        unsigned-key  log in with the certificate of the unsigned key
                        wrong-code    register with a code that is not the one the server sent
                        no-cert       present no client certificate at all (register + login)
    --script FILE     more commands, one per line (shell quoting, # comments), after argv's
    --quiet           no XML log on stderr

Commands run in order on one connection: the first one that needs a session logs in (as `login`
does) if no `login` came before, and everything after it shares that session. `register` and
`selftest` open their own connections (none for selftest), so they come first or alone; `restore`
opens its own connection too, wherever it stands, and needs no session (nor --state).
    register --phone +15555215554 (--code-file PATH | --code CODE) [--name NAME] [--force]
             [--reuse-key] [--uid-domain D] [--subkeys client|rfc|none] [--fallback]
             [--code-wait 10]
        The three registration steps (KONTALK.md 1 A, B, C), each on a new TCP+STARTTLS
        connection that never authenticates; C presents the certificate of the new, unsigned key.
        The server's test provider appends "<E.164> <code>" lines to PATH; the last line for this
        number written after step B is used.
    login [--expect-fail] [--resource HEX16] [--status TEXT] [--show away]
        STARTTLS with the certificate of the signed key, EXTERNAL, bind, SM, roster, presence,
        disco#info of the domain, the server key. --expect-fail: a SASL failure is the success.
    chat --to JID|+PHONE --body TEXT [--id ID] [--wait-receipt] [--receipt-timeout 10]
    upload --size N [--filename IMG_0001.jpg] [--content-type image/jpeg] [--to JID|+PHONE]
           [--put-size N] [--put-type T] [--expect-status CODE] [--expect-error COND]
        A photo: the upload service found among the domain's disco items, a slot of XEP-0363
        0.2, the PUT (only 200 counts), and with --to a message with the URL in jabber:x:oob.
        --put-size, --put-type: a PUT that differs from the slot, answered --expect-status.
    listen --count N [--wait 10] [--accept-subscriptions] [--no-receipts] [--download]
        --download: fetches the URL of every jabber:x:oob message (DOWNLOADED status type
        length sha256).
        A subscription request from the network (a JID of --domain) is approved at once, as the
        client does (AC PresenceListener.canAutoAcceptSubscription: "subscribed", then APPROVED);
        --accept-subscriptions accepts any other by hand too ("subscribed", then "subscribe").
    subscribe --to JID|+PHONE [--wait-subscribed] [--wait 10]
    pubkey --of JID|+PHONE [--expect-error CONDITION]
    match --jids a,b,+PHONE [--expect-error CONDITION]       (roster match at probe@DOMAIN)
    serverlist [--expect-error CONDITION]                    (ad-hoc command at network@DOMAIN)
    group --to a,b --body TEXT [--group-id ID] [--owner JID] [--create [--subject S]]
    wait --seconds N         stay online (answers <r/>, pings), printing what arrives
    rollover [--subkeys client|rfc|none] [--revocation good|none|bad|foreign]
             [--expect-error CONDITION]
        Key rollover (RegisterKeyPairListener): a new key with the same uid, the old signed key
        with a 0x20 revocation (KONTALK.md 1 "Other forms"). The certified key that comes back
        becomes the state's key: the next login presents it; the old one is kept as
        revoked-key.pem, revoked-public.pgp. The client restarts its connection then; here the
        session goes on with the old key, and the new one is used from the next run's login.
        --revocation (negative cases; the state is kept):
        none = the old key without a revocation, bad = a revocation that does not verify,
        foreign = another key, properly revoked.
    backup [--format pgp|pem] [--passphrase P] [--expect-error CONDITION]
        Private key upload (PrivateKeyUploadListener). pgp: the secret key ring the client keeps
        (kontalk_pgp.secret_ring; the primary, and the subkeys if subkeys.pem has them),
        protected with P or else the account's stored passphrase; pem: key.pem as it is.
    restore --token T [--expect-error CONDITION]
        Private key retrieval (RegistrationService.onRetrieveKeyRequest) on a fresh TCP+STARTTLS
        connection that never authenticates and presents no certificate. With --state, the
        bytes are kept there as restored-private.bin and restored-public.pgp.
    selftest                 offline checks of keys, certificate and bytes (needs gpg, openssl)
    bench-keys --out DIR --count N [--first-phone +15555210000]
        Offline, alone: N identities for the load generator's Kontalk scenarios (kontalkd-load
        kontalk-register, kontalk-login), each in DIR/<i>/ as the client makes it: `phone`
        (E.164, the numbers from --first-phone on), `key.der` (the RSA primary, PKCS#8 DER) and
        `unsigned.der` (the bridge certificate of the new, unsigned key).
    bench-certs --dir DIR
        Offline, alone: for each DIR/<i>/signed.pgp (the certified key the generator got back
        from the code step), its bridge certificate `signed.der`, the one the client logs in with.
  e.g.  kontalk_client.py --port 5222 --state /tmp/a register --phone +15555215554 --code-file F
        kontalk_client.py --port 5222 --state /tmp/a login chat --to +15555215555 --body hi
        kontalk_client.py --port 5222 --state /tmp/a backup        (prints TOKEN T)
        kontalk_client.py --port 5222 --state /tmp/a restore --token T
        kontalk_client.py --port 5222 --state /tmp/a rollover      (then login uses the new key)
        kontalk_client.py --port 5222 restore --token 0000 --expect-error item-not-found

Output on stdout, one machine-checkable fact per line (stderr has the XML, SEND/RECV):
    STEP <what>                       progress; the last one is where a failure happened
    TERMS <url> / SENDER <from> / CHALLENGE <type> / CODE <code>     registration steps A-C
    KEYFLAGS <0xNN>  UID <uid>  REGISTERED <jid>  FINGERPRINT <FPR>        the returned key:
                 KEYFLAGS as the client reads them (first signature on the primary; 0x21 needed)
    UIDSIG <n> <0xTYPE> <issuer key id> self|other      signatures on its uid n, in order
    TLS <version>  MECHANISMS <m1,m2>  TRIED EXTERNAL  BOUND <full jid>  SM enabled
    ROSTER <jid> subscription=.. [ask=..]   FEATURE <var>   PUSH <jid> subscription=..
    SERVERKEY <FPR> | SERVERKEY length=<n> | SERVERKEY error <condition>
    CERTIFIED-BY-SERVER <0xTYPE> valid|invalid | CERTIFIED-BY-SERVER none
    READY <full jid>
    SENT <id>  ACKED <id>  RECEIPT <from> <id>
    RECEIVED <from> <body>  E2E <from> <bytes>  DELAYED <from> <stamp>  GROUP <from> <id> <owner>
    MESSAGE-ERROR <from> <condition>
    PRESENCE <from> <type> [show=..] [print=FPR] [key=FPR]      (key= only with a <key/>)
    SUBSCRIBED <from>
    PUBKEY <jid> <FPR> | PUBKEY <jid> length=<n>
    MATCH <jid>  MATCHED <n>   SERVER <host> <fingerprint|->  SERVERS <n>
    REVOKING <old FPR>  ROLLEDOVER <new FPR>      rollover (with KEYFLAGS, UID, UIDSIG, and
                                                  CERTIFIED-BY-SERVER of the new key)
    BACKUP private=<sha256 hex> length=<n>  TOKEN <token>                  backup
    RESTORED private=<sha256 hex> public=<FPR>|public=length=<n>           restore, then:
    RESTORED-SECRET <FPR>      when the private bytes are an OpenPGP secret key ring
    SAME-AS-BACKUP yes|no      when --state holds the backup made with this token
    IQ-ERROR <condition> <type>        then FAILURE <condition> [text] unless it was expected
    EXPECTED-ERROR <condition>
    CHECK <what>                       selftest checks that passed
    BENCH-KEYS <n> <dir>  BENCH-CERTS <n> <dir>            identities and certificates written
    FAILURE <condition> [text]         the server refused something (SASL, registration, stream)
    RESULT ok | RESULT fail <why>      last line
Exit codes: 0 ok, 1 any other failure (an IQ error to rollover, backup or restore included),
2 SASL failure, 3 registration refused.

Needs `cryptography` (PyPI) beside kontalk_pgp.py. OpenSSL 3 refuses the client's certificate in
load_cert_chain (the non-standard SAN makes X509v3 flag it invalid, and the chain-file loader
fails on the queued error); the tool then gives it to OpenSSL with SSL_CTX_use_certificate_ASN1
through ctypes on the SSL_CTX of the same `ssl.SSLContext`, and the handshake sends it as is.
"""

import argparse
import base64
import ctypes
import datetime
import hashlib
import json
import os
import random
import re
import shlex
import signal
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import time
from xml.etree import ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kontalk_pgp as kp  # noqa: E402

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_AUTH = 2
EXIT_REFUSED = 3

NS_STREAM = 'http://etherx.jabber.org/streams'
NS_CLIENT = 'jabber:client'
NS_TLS = 'urn:ietf:params:xml:ns:xmpp-tls'
NS_SASL = 'urn:ietf:params:xml:ns:xmpp-sasl'
NS_BIND = 'urn:ietf:params:xml:ns:xmpp-bind'
NS_SESSION = 'urn:ietf:params:xml:ns:xmpp-session'
NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas'
NS_SM = 'urn:xmpp:sm:3'
NS_ROSTER = 'jabber:iq:roster'
NS_ROSTERVER = 'urn:xmpp:features:rosterver'
NS_REGISTER = 'jabber:iq:register'
NS_DATA = 'jabber:x:data'
NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info'
NS_PUBKEY = 'urn:xmpp:pubkey:2'
NS_RECEIPTS = 'urn:xmpp:receipts'
NS_CHATSTATES = 'http://jabber.org/protocol/chatstates'
NS_CAPS = 'http://jabber.org/protocol/caps'
NS_KROSTER = 'http://kontalk.org/extensions/roster'
NS_COMMANDS = 'http://jabber.org/protocol/commands'
NS_SERVERLIST = 'http://kontalk.org/extensions/serverlist'
NS_GROUP = 'http://kontalk.org/extensions/message#group'
NS_ADDRESS = 'http://jabber.org/protocol/address'
NS_PING = 'urn:xmpp:ping'
NS_VERSION = 'jabber:iq:version'
NS_LAST = 'jabber:iq:last'
NS_DELAY = 'urn:xmpp:delay'
NS_E2E = 'urn:ietf:params:xml:ns:xmpp-e2e'
NS_DISCO_ITEMS = 'http://jabber.org/protocol/disco#items'
NS_UPLOAD = 'urn:xmpp:http:upload'
NS_OOB = 'jabber:x:oob'

FORM_REGISTER = 'jabber:iq:register'
FORM_CODE = 'http://kontalk.org/protocol/register#code'
FORM_KEY = 'http://kontalk.org/protocol/register#key'
FORM_PRIVATEKEY = 'http://kontalk.org/protocol/register#privatekey'
NS_ACCOUNT = 'http://kontalk.org/protocol/register#account'

TAMPERS = ('cert-key', 'unsigned-key', 'wrong-code', 'no-cert')

QUIET = False


def say(*fields):
    print(*fields, flush=True)


def log(label, what, data):
    if QUIET:
        return
    stamp = datetime.datetime.now().strftime('%H:%M:%S.%f')[:-3]
    sys.stderr.write('%s %s %s %s\n' % (stamp, label, what, data))
    sys.stderr.flush()


def one_line(text):
    return ' '.join((text or '').split())


class Failure(Exception):
    """Ends the run: `RESULT fail <why>` and exit `code`."""

    def __init__(self, why, code=EXIT_ERROR):
        super().__init__(why)
        self.why = why
        self.code = code


class IqError(Exception):
    def __init__(self, iq):
        self.iq = iq
        err = iq.find('{%s}error' % NS_CLIENT)
        self.type = err.get('type', '-') if err is not None else '-'
        self.code = err.get('code') if err is not None else None
        self.condition = 'unknown'
        self.text = ''
        if err is not None:
            for child in err:
                if child.tag == '{%s}text' % NS_STANZAS:
                    self.text = one_line(child.text)
                elif child.tag.startswith('{%s}' % NS_STANZAS):
                    self.condition = child.tag.split('}', 1)[1]
        super().__init__('%s (%s) %s' % (self.condition, self.type, self.text))

    def report(self):
        """IQ-ERROR and FAILURE lines."""
        say('IQ-ERROR', self.condition, self.type, *(['code=%s' % self.code] if self.code else []))
        say('FAILURE', self.condition, *([self.text] if self.text else []))


# -- what Smack writes ------------------------------------------------------------------------

def attr(value):
    """An attribute value as Smack escapes it inside '…' (forAttributeApos)."""
    return value.replace('&', '&amp;').replace('<', '&lt;').replace("'", '&apos;')


def text(value):
    """Element text as Smack escapes it (StringUtils.escapeForXml, mode safe)."""
    return (value.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')
            .replace('"', '&quot;').replace("'", '&apos;'))


def attrs(*pairs):
    """` name='value'` for each (name, value) whose value is not None, in the given order."""
    return ''.join(" %s='%s'" % (n, attr(v)) for n, v in pairs if v is not None)


RANDOM = random.SystemRandom()
LETTERS = string.digits + string.ascii_lowercase + string.ascii_uppercase


def random_string(n):
    """Smack's StringUtils.randomString: digits and letters."""
    return ''.join(RANDOM.choice(LETTERS) for _ in range(n))


class StanzaIds:
    """Smack's StanzaIdUtil: a 5-character random prefix, '-', a counter from 1."""

    def __init__(self):
        self.prefix = random_string(5) + '-'
        self.n = 0

    def __call__(self):
        self.n += 1
        return '%s%d' % (self.prefix, self.n)


def stream_open(domain, stream_id=None):
    """Smack's StreamOpen: no `from`; `id` echoes the server's on restarts."""
    return ("<stream:stream xmlns='jabber:client'" + attrs(('to', domain)) +
            " xmlns:stream='http://etherx.jabber.org/streams' version='1.0'" +
            attrs(('id', stream_id)) + " xml:lang='en'>")


STARTTLS = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'></starttls>"
AUTH_EXTERNAL = "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>"
SM_ENABLE = "<enable xmlns='urn:xmpp:sm:3'/>"
SM_REQUEST = "<r xmlns='urn:xmpp:sm:3'/>"
STREAM_CLOSE = '</stream:stream>'


def sm_answer(h):
    return "<a xmlns='urn:xmpp:sm:3' h='%d'/>" % h


def iq_xml(iq_type, iq_id, child, to=None, frm=None):
    """Smack's IQ.toXML: to, from, id, then type; never self-closing."""
    return '<iq' + attrs(('to', to), ('from', frm), ('id', iq_id), ('type', iq_type)) + '>' + \
        child + '</iq>'


def field_xml(var, ftype, values=(), label=None):
    """Smack's FormField.toXML: label, var, type."""
    return '<field' + attrs(('label', label), ('var', var), ('type', ftype)) + '>' + \
        ''.join('<value>%s</value>' % text(v) for v in values) + '</field>'


def register_query(form_fields):
    return ("<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>" +
            ''.join(form_fields) + '</x></query>')


def instructions_request(domain, iq_id):
    """Step A."""
    return iq_xml('get', iq_id, "<query xmlns='jabber:iq:register'></query>", to=domain)


def phone_request(domain, iq_id, phone, accept_terms=False, force=False, fallback=False,
                  challenge='pin'):
    """Step B (RegistrationService.createRegistrationForm)."""
    fields = [field_xml('FORM_TYPE', 'hidden', [FORM_REGISTER]),
              field_xml('phone', 'text-single', [phone])]
    if accept_terms:
        fields.append(field_xml('accept-terms', 'boolean', ['true']))
    if force:
        fields.append(field_xml('force', 'boolean', ['true']))
    if fallback:
        fields.append(field_xml('fallback', 'boolean', ['true']))
    else:
        fields.append(field_xml('challenge', 'text-single', [challenge]))
    return iq_xml('set', iq_id, register_query(fields), to=domain)


def code_request(domain, iq_id, code):
    """Step C (RegistrationService.createChallengeForm)."""
    fields = [field_xml('FORM_TYPE', 'hidden', [FORM_CODE]),
              field_xml('code', 'text-single', [code], label='Validation code')]
    return iq_xml('set', iq_id, register_query(fields), to=domain)


def rollover_request(domain, iq_id, public_b64, revoked_b64):
    """RegisterKeyPairListener.prepareKeyPacket: FORM_TYPE, the new unsigned ring, the old key
    with its revocation (left out by the client when it has no old key)."""
    fields = [field_xml('FORM_TYPE', 'hidden', [FORM_KEY]),
              field_xml('publickey', 'text-single', [public_b64], label='Public key')]
    if revoked_b64 is not None:
        fields.append(field_xml('revoked', 'text-single', [revoked_b64],
                                label='Revoked public key'))
    return iq_xml('set', iq_id, register_query(fields), to=domain)


def backup_request(domain, iq_id, private_b64):
    """PrivateKeyUploadListener.prepareKeyPacket."""
    fields = [field_xml('FORM_TYPE', 'hidden', [FORM_PRIVATEKEY]),
              field_xml('privatekey', 'text-single', [private_b64], label='Private key')]
    return iq_xml('set', iq_id, register_query(fields), to=domain)


def restore_request(domain, iq_id, token):
    """RegistrationService.createPrivateKeyRequest: a Registration IQ of type get with CC's
    Account extension (XmlStringBuilder prelude, openElement, element, closeElement)."""
    return iq_xml('get', iq_id, "<query xmlns='jabber:iq:register'><account xmlns='%s'>"
                  "<privatekey><token>%s</token></privatekey></account></query>"
                  % (NS_ACCOUNT, text(token)), to=domain)


def b64(data):
    """android.util.Base64 NO_WRAP: standard alphabet, padded, one line."""
    return base64.b64encode(data).decode('ascii')


def presence_xml(pid, to=None, ptype=None, status=None, show=None, caps=False):
    """Smack's Presence.toXML: to, id, type; status, show, extensions."""
    body = ''
    if status:
        body += '<status>%s</status>' % text(status)
    if show:
        body += '<show>%s</show>' % text(show)
    if caps:
        body += ("<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
                 "node='http://www.kontalk.org/' ver='none'/>")
    return '<presence' + attrs(('to', to), ('id', pid), ('type', ptype)) + '>' + body + \
        '</presence>'


def chat_message_xml(to, mid, body):
    """MessageCenterService.sendMessage for a plain-text chat message: the body, the active chat
    state, the receipt request."""
    return ('<message' + attrs(('to', to), ('id', mid), ('type', 'chat')) + '>' +
            '<body>%s</body>' % text(body) +
            "<active xmlns='http://jabber.org/protocol/chatstates'/>"
            "<request xmlns='urn:xmpp:receipts'/></message>")


def receipt_xml(to, mid, orig_id):
    """MessageListener.sendReceipt."""
    return ('<message' + attrs(('to', to), ('id', mid), ('type', 'chat')) + '>' +
            "<received xmlns='urn:xmpp:receipts'" + attrs(('id', orig_id)) + '/></message>')


def group_message_xml(domain, mid, group_id, owner, members, body, create=False, subject=None):
    """KontalkGroupController: the group extension, the body, the chat state, then the XEP-0033
    addresses; to multicast@DOMAIN; no receipt request for groups."""
    group = "<group xmlns='http://kontalk.org/extensions/message#group'" + \
        attrs(('id', group_id), ('owner', owner), ('type', 'create' if create else None))
    if create:
        group += '>'
        if subject:
            group += '<subject>%s</subject>' % text(subject)
        group += ''.join('<member%s/>' % attrs(('jid', m)) for m in members) + '</group>'
    else:
        group += '/>'
    addresses = "<addresses xmlns='http://jabber.org/protocol/address'>" + \
        ''.join('<address%s/>' % attrs(('type', 'to'), ('jid', m)) for m in members) + \
        '</addresses>'
    return ('<message' + attrs(('to', 'multicast@' + domain), ('id', mid), ('type', 'chat')) +
            '>' + group + '<body>%s</body>' % text(body) +
            "<active xmlns='http://jabber.org/protocol/chatstates'/>" + addresses + '</message>')


def upload_request(service, iq_id, filename, size, content_type):
    """XEP-0363 version 0.2 as the client asks for a slot [V AC upload/HTTPFileUpload.java]."""
    return iq_xml('get', iq_id, "<request xmlns='%s'><filename>%s</filename><size>%d</size>"
                  "<content-type>%s</content-type></request>"
                  % (NS_UPLOAD, text(filename), size, text(content_type)), to=service)


def oob_message_xml(to, mid, url, content_type, length):
    """A media message: the URL as body and in jabber:x:oob with type and length (the URL is
    not escaped beyond XML) [V AC MessageCenterService, KONTALK.md part 1 section 5]."""
    return ("<message to='%s' id='%s' type='chat'><body>%s</body>"
            "<request xmlns='urn:xmpp:receipts'/>"
            "<x xmlns='%s'><url type='%s' length='%d'>%s</url></x></message>"
            % (attr(to), mid, text(url), NS_OOB, attr(content_type), length, text(url)))


def http_request(method, url, body=None, headers=None):
    """(status, headers, body) of one HTTP(S) request. The client trusts the system's
    authorities; the test server's certificate is self-signed, so none is checked here."""
    import http.client
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    if u.scheme == 'https':
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=30)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        path = u.path + ('?' + u.query if u.query else '')
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def pubkey_request(to, iq_id):
    return iq_xml('get', iq_id, "<pubkey xmlns='urn:xmpp:pubkey:2'/>", to=to)


def match_request(domain, iq_id, jids):
    """CC RosterMatch, to probe@DOMAIN."""
    items = ''.join('<item%s/>' % attrs(('jid', j)) for j in jids)
    child = ("<query xmlns='http://kontalk.org/extensions/roster'>" + items + '</query>'
             if jids else "<query xmlns='http://kontalk.org/extensions/roster'/>")
    return iq_xml('get', iq_id, child, to='probe@' + domain)


def serverlist_request(domain, iq_id):
    """CC ServerlistCommand: Smack writes the namespace, then the command adds it again."""
    return iq_xml('set', iq_id,
                  "<command xmlns='http://jabber.org/protocol/commands' "
                  "xmlns='http://jabber.org/protocol/commands' node='serverlist' "
                  "action='execute'/>", to='network@' + domain)


# -- identities -------------------------------------------------------------------------------

def e164(phone):
    """Normalized E.164 as the client has it: digits after '+', '00' prefix becomes '+'."""
    p = re.sub(r'[\s\-().]', '', phone.strip())
    if p.startswith('00'):
        p = '+' + p[2:]
    if not re.fullmatch(r'\+[0-9]{4,16}', p):
        raise Failure('not an E.164 phone number: %r' % phone)
    return p


def phone_localpart(phone):
    return hashlib.sha1(e164(phone).encode('ascii')).hexdigest()


def to_jid(value, domain):
    """A JID, or +PHONE / 00PHONE turned into sha1hex(E.164)@domain."""
    v = value.strip()
    if v.startswith('+') or (v.startswith('00') and '@' not in v):
        return '%s@%s' % (phone_localpart(v), domain)
    return v


def bare(jid):
    return (jid or '').split('/', 1)[0]


def jid_norm(jid):
    """For comparing JIDs as jxmpp does: localpart and domain case-folded, resource kept."""
    if jid is None:
        return None
    b, _, res = jid.partition('/')
    b = b.lower()
    return b + ('/' + res if res else '')


# -- state ------------------------------------------------------------------------------------

class State:
    """The state dir: account.json, key.pem (RSA primary), subkeys.pem (the EC subkeys' private
    keys, signing then encryption, when they were made), public-unsigned.pgp (as generated),
    public.pgp (what the server returned), server.pgp (the server key, once fetched); after a
    rollover revoked-key.pem, revoked-subkeys.pem, revoked-public.pgp (the old key, as it was
    sent with its revocation: revoked-public-sent.pgp); after a restore with --state,
    restored-private.bin and restored-public.pgp."""

    def __init__(self, path):
        if not path:
            raise Failure('--state DIR is needed')
        self.path = path
        os.makedirs(path, exist_ok=True)

    def file(self, name):
        return os.path.join(self.path, name)

    def read(self, name):
        try:
            with open(self.file(name), 'rb') as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, name, data):
        tmp = self.file(name + '.tmp')
        with open(tmp, 'wb') as f:
            f.write(data)
        os.replace(tmp, self.file(name))

    def account(self):
        data = self.read('account.json')
        return json.loads(data) if data else {}

    def save_account(self, acct):
        self.write('account.json', json.dumps(acct, indent=2, sort_keys=True).encode())

    def rsa_key(self):
        from cryptography.hazmat.primitives import serialization
        pem = self.read('key.pem')
        if pem is None:
            raise Failure('no key in %s: register first' % self.path)
        return serialization.load_pem_private_key(pem, password=None)

    def remove(self, name):
        try:
            os.remove(self.file(name))
        except FileNotFoundError:
            pass

    def sub_keys(self):
        """The EC private keys of subkeys.pem ([] without it)."""
        from cryptography.hazmat.primitives import serialization
        pem = self.read('subkeys.pem') or b''
        end = b'-----END PRIVATE KEY-----'
        return [serialization.load_pem_private_key(part + end, password=None)
                for part in pem.split(end) if part.strip()]

    def save_sub_keys(self, keys):
        from cryptography.hazmat.primitives import serialization
        if not keys:
            self.remove('subkeys.pem')
            return
        self.write('subkeys.pem', b''.join(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()) for k in keys))

    def passphrase(self, acct):
        """The account's key passphrase (40 random characters, as the client makes one), made
        and saved on first use."""
        if not acct.get('passphrase'):
            acct['passphrase'] = random_string(40)
            self.save_account(acct)
        return acct['passphrase']


# -- TLS with the client's certificate --------------------------------------------------------

class _CtxLib:
    lib = None

    @classmethod
    def get(cls):
        if cls.lib is None:
            import _ssl
            lib = ctypes.CDLL(_ssl.__file__)  # the libssl this `ssl` module uses
            lib.SSL_CTX_use_certificate_ASN1.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                                         ctypes.c_char_p]
            lib.SSL_CTX_use_PrivateKey_ASN1.argtypes = [ctypes.c_int, ctypes.c_void_p,
                                                        ctypes.c_char_p, ctypes.c_long]
            lib.SSL_CTX_check_private_key.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_security_level.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_options.restype = ctypes.c_uint64
            cls.lib = lib
        return cls.lib


def ssl_ctx_pointer(ctx):
    """The SSL_CTX* of an ssl.SSLContext (the first field after PyObject_HEAD), checked against
    two values Python can read itself."""
    lib = _CtxLib.get()
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr or lib.SSL_CTX_get_security_level(ptr) != ctx.security_level or \
            lib.SSL_CTX_get_options(ptr) != int(ctx.options):
        raise Failure('cannot find the SSL_CTX of this Python ssl module')
    return ptr


def load_client_certificate(ctx, cert_der, rsa_key):
    """Makes `ctx` present `cert_der` with `rsa_key`. Returns how: 'load_cert_chain' (temp files,
    when OpenSSL takes it) or 'SSL_CTX_use_certificate_ASN1' (the client's certificate, which
    load_cert_chain refuses with X509V3 INVALID_CERTIFICATE)."""
    from cryptography.hazmat.primitives import serialization
    with tempfile.TemporaryDirectory(prefix='kontalk-cert-') as d:
        cert_path = os.path.join(d, 'cert.pem')
        key_path = os.path.join(d, 'key.pem')
        with open(cert_path, 'wb') as f:
            f.write(kp.der_to_pem(cert_der))
        with open(key_path, 'wb') as f:
            f.write(rsa_key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        try:
            ctx.load_cert_chain(cert_path, key_path)
            return 'load_cert_chain'
        except ssl.SSLError as e:
            refused = str(e)
    lib = _CtxLib.get()
    ptr = ssl_ctx_pointer(ctx)
    key_der = rsa_key.private_bytes(serialization.Encoding.DER,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    ok = (lib.SSL_CTX_use_certificate_ASN1(ptr, len(cert_der), cert_der) == 1 and
          lib.SSL_CTX_use_PrivateKey_ASN1(6, ptr, key_der, len(key_der)) == 1 and  # EVP_PKEY_RSA
          lib.SSL_CTX_check_private_key(ptr) == 1)
    lib.ERR_clear_error()
    if not ok:
        raise Failure('OpenSSL takes the client certificate neither way (load_cert_chain: %s)'
                      % refused)
    return 'SSL_CTX_use_certificate_ASN1'


def client_tls_context(cert_der=None, rsa_key=None):
    """TLS as the client has it: platform defaults, no server verification (test server with a
    self-signed certificate; the client can be set to accept any)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert_der is not None:
        how = load_client_certificate(ctx, cert_der, rsa_key)
        log('tls', 'client-certificate', 'loaded with %s (%d bytes DER)' % (how, len(cert_der)))
    return ctx


# -- the XML stream ---------------------------------------------------------------------------

class Stream:
    """One TCP connection: writes strings as given, reads top-level elements with an incremental
    parser (a new one for each stream restart)."""

    def __init__(self, args, label):
        self.args = args
        self.label = label
        self.sock = None
        self.parser = None
        self.depth = 0
        self.root = None
        self.header = None
        self.elements = []
        self.closed = False

    def connect(self):
        try:
            self.sock = socket.create_connection((self.args.host, self.args.port), timeout=10)
        except OSError as e:
            raise Failure('connect to %s:%s: %s' % (self.args.host, self.args.port, e))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log(self.label, 'connected', '%s:%s' % (self.args.host, self.args.port))

    def send(self, data):
        log(self.label, 'SEND', data)
        try:
            self.sock.sendall(data.encode('utf-8'))
        except OSError as e:
            raise Failure('%s: send failed: %s' % (self.label, e))

    def reset_parser(self):
        self.parser = ET.XMLPullParser(events=('start', 'end'))
        self.depth = 0
        self.root = None
        self.header = None
        self.elements = []

    def open(self, stream_id=None):
        """Sends the stream header, reads the server's, then its features."""
        self.reset_parser()
        self.send(stream_open(self.args.domain, stream_id))
        deadline = time.monotonic() + 10
        while self.header is None:
            self._pump(deadline, 'the stream header')
        features = self.next(deadline - time.monotonic(), 'stream features')
        if features.tag != '{%s}features' % NS_STREAM:
            raise Failure('%s: expected <stream:features>, got %s' % (self.label, features.tag))
        return features

    def _pump(self, deadline, what):
        """Reads once (at most a second); a Failure once `deadline` has passed."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failure('%s: no %s within the time allowed' % (self.label, what))
        self.recv_once(min(left, 1.0), what)

    def recv_once(self, timeout, what='anything'):
        """Reads what the server sent within `timeout` seconds into `elements`."""
        if self.closed:
            raise Failure('%s: the server closed the stream while waiting for %s'
                          % (self.label, what))
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        except ssl.SSLError as e:
            raise Failure('%s: TLS error while waiting for %s: %s' % (self.label, what, e))
        except OSError as e:
            raise Failure('%s: connection error while waiting for %s: %s' % (self.label, what, e))
        if not data:
            self.closed = True
            raise Failure('%s: the server closed the connection while waiting for %s'
                          % (self.label, what))
        log(self.label, 'RECV', data.decode('utf-8', 'replace'))
        try:
            self.parser.feed(data)
            for event, el in self.parser.read_events():
                if event == 'start':
                    if self.depth == 0:
                        self.root = el
                        self.header = dict(el.attrib)
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.elements.append(el)
                        self.root.remove(el)
                    elif self.depth == 0:
                        self.closed = True
        except ET.ParseError as e:
            raise Failure('%s: the server sent bad XML: %s' % (self.label, e))

    def next(self, timeout, what='an element'):
        """The next complete top-level element; a stream error is a Failure."""
        deadline = time.monotonic() + max(timeout, 0)
        while not self.elements:
            self._pump(deadline, what)
        el = self.elements.pop(0)
        if el.tag == '{%s}error' % NS_STREAM:
            cond = '-'
            txt = ''
            for child in el:
                if child.tag.endswith('}text'):
                    txt = one_line(child.text)
                else:
                    cond = child.tag.split('}', 1)[-1]
            say('FAILURE', 'stream-error', cond, *([txt] if txt else []))
            raise Failure('stream error %s %s' % (cond, txt))
        return el

    def starttls(self, features, ctx):
        if features.find('{%s}starttls' % NS_TLS) is None:
            raise Failure('%s: no STARTTLS offered (the client requires it)' % self.label)
        self.send(STARTTLS)
        answer = self.next(10, 'the STARTTLS answer')
        if answer.tag != '{%s}proceed' % NS_TLS:
            raise Failure('%s: STARTTLS refused: %s' % (self.label, answer.tag))
        try:
            self.sock.settimeout(10)
            self.sock = ctx.wrap_socket(self.sock, server_hostname=self.args.domain)
        except (ssl.SSLError, OSError) as e:
            raise Failure('%s: TLS handshake failed: %s' % (self.label, e))
        log(self.label, 'tls', '%s %s' % (self.sock.version(), self.sock.cipher()))

    def secure(self, ctx):
        """Stream, STARTTLS, the stream again; returns the post-TLS features."""
        self.connect()
        features = self.open()
        stream_id = self.header.get('id')
        self.starttls(features, ctx)
        return self.open(stream_id)

    def close(self):
        if self.sock is None:
            return
        try:
            if not self.closed:
                try:
                    self.send(STREAM_CLOSE)
                except Failure:
                    return
                deadline = time.monotonic() + 2
                while not self.closed and time.monotonic() < deadline:
                    try:
                        self._pump(deadline, 'the stream close')
                    except Failure:
                        break
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def has_mechanisms(features):
    mechs = features.find('{%s}mechanisms' % NS_SASL)
    if mechs is None:
        return None
    return [one_line(m.text) for m in mechs.findall('{%s}mechanism' % NS_SASL)]


def form_fields(x):
    """{var: (type, [values])} of a data form."""
    out = {}
    if x is None:
        return out
    for f in x.findall('{%s}field' % NS_DATA):
        out[f.get('var')] = (f.get('type'), [v.text or '' for v in f.findall('{%s}value' % NS_DATA)])
    return out


# -- registration -----------------------------------------------------------------------------

class Registration:
    def __init__(self, args, state):
        self.args = args
        self.state = state
        self.ids = StanzaIds()

    def connection(self, label, cert=None, key=None):
        """A fresh TCP+STARTTLS connection that never authenticates (RegistrationService)."""
        stream = Stream(self.args, label)
        features = stream.secure(client_tls_context(cert, key))
        if has_mechanisms(features) is None:
            stream.close()
            raise Failure('%s: no <mechanisms/> in the post-TLS features (Smack waits for it and '
                          'gives up after 15 s)' % label)
        return stream

    def ask(self, stream, request, iq_id):
        """Sends `request` and returns the reply with the same id (StanzaIdFilter)."""
        stream.send(request)
        deadline = time.monotonic() + 15
        while True:
            el = stream.next(deadline - time.monotonic(), 'the reply to %s' % iq_id)
            if el.tag == '{%s}iq' % NS_CLIENT and el.get('id') == iq_id and \
                    el.get('type') in ('result', 'error'):
                if el.get('type') == 'error':
                    raise IqError(el)
                return el

    def refused(self, e, step):
        e.report()
        raise Failure('%s refused: %s' % (step, e), EXIT_REFUSED)

    def run(self, a):
        args = self.args
        tamper = tampers(args, a)
        domain = args.domain
        phone = e164(a.phone)
        local = phone_localpart(phone)
        jid = '%s@%s' % (local, domain)
        uid_domain = a.uid_domain or domain

        acct = self.state.account()
        if a.reuse_key and self.state.read('key.pem') and self.state.read('public-unsigned.pgp'):
            rsa_key = self.state.rsa_key()
            user = kp.UserKey(rsa_key, None, self.state.read('public-unsigned.pgp'))
            step('key reused %s' % user.fpr)
        else:
            step('key generation')
            user = kp.generate_user_key(a.name, '%s@%s' % (local, uid_domain),
                                        subkeys=a.subkeys)
            self.state.write('key.pem', user.private_pem())
            self.state.save_sub_keys(user.sub_keys)
            self.state.write('public-unsigned.pgp', user.ring_bytes)
            for stale in ('public.pgp',):
                try:
                    os.remove(self.state.file(stale))
                except FileNotFoundError:
                    pass
        acct.pop('roster_ver', None)  # a new account starts with an empty roster
        acct.update({'phone': phone, 'jid': jid, 'name': a.name, 'domain': domain,
                     'fingerprint': user.fpr, 'registered': False})
        acct.setdefault('resource', '%016x' % RANDOM.getrandbits(64))
        self.state.save_account(acct)

        # A. instructions
        step('register instructions')
        stream = self.connection('reg-A')
        try:
            iq_id = self.ids()
            try:
                reply = self.ask(stream, instructions_request(domain, iq_id), iq_id)
            except IqError as e:
                self.refused(e, 'the instructions request')
        finally:
            stream.close()
        query = reply.find('{%s}query' % NS_REGISTER)
        fields = form_fields(query.find('{%s}x' % NS_DATA) if query is not None else None)
        accept_terms = False
        if 'accept-terms' in fields and 'terms' in fields:
            say('TERMS', (fields['terms'][1] or ['-'])[0])
            accept_terms = True

        # B. phone number
        step('register phone')
        code_offset = 0
        if a.code_file:
            try:
                code_offset = os.path.getsize(a.code_file)
            except OSError:
                code_offset = 0
        stream = self.connection('reg-B')
        try:
            iq_id = self.ids()
            try:
                reply = self.ask(stream, phone_request(domain, iq_id, phone, accept_terms,
                                                       a.force, a.fallback, a.challenge), iq_id)
            except IqError as e:
                self.refused(e, 'the phone number')
        finally:
            stream.close()
        query = reply.find('{%s}query' % NS_REGISTER)
        x = query.find('{%s}x' % NS_DATA) if query is not None else None
        fields = form_fields(x)
        if 'from' not in fields:
            raise Failure('the phone-number reply has no "from" field: the client reports '
                          '"Invalid response"')
        say('SENDER', (fields['from'][1] or [''])[0] or '-')
        if 'challenge' in fields:
            say('CHALLENGE', (fields['challenge'][1] or [''])[0] or '-')

        # the code
        code = a.code
        if code is None and a.code_file:
            step('verification code')
            code = read_code(a.code_file, code_offset, phone, a.code_wait)
            if code is None and 'wrong-code' not in tamper:
                raise Failure('no code for %s appeared in %s within %ss'
                              % (phone, a.code_file, a.code_wait))
        if 'wrong-code' in tamper:
            code = '111111' if code == '000000' else '000000'
        if code is None:
            raise Failure('register needs --code-file or --code')
        say('CODE', code)

        # C. code, with the certificate of the unsigned key
        step('register code')
        cert = key = None
        if 'no-cert' not in tamper:
            cert, key = certificate_for(user.ring, user.rsa, tamper)
        stream = self.connection('reg-C', cert, key)
        try:
            iq_id = self.ids()
            try:
                reply = self.ask(stream, code_request(domain, iq_id, code), iq_id)
            except IqError as e:
                self.refused(e, 'the code')
        finally:
            stream.close()
        signed, ring = returned_publickey(reply, 'the code reply',
                                          'the client reports "Invalid response"')
        self.state.write('public.pgp', signed)
        check_returned_key(ring, user.ring)
        acct.update({'registered': True, 'fingerprint': ring.fpr})
        self.state.save_account(acct)
        say('REGISTERED', jid)
        say('FINGERPRINT', ring.fpr)


def reply_form(reply):
    """The data form of a registration reply: <x/> in the query, else anywhere (Smack finds the
    form among the IQ's extensions)."""
    x = None
    query = reply.find('{%s}query' % NS_REGISTER)
    if query is not None:
        x = query.find('{%s}x' % NS_DATA)
    if x is None:
        x = reply.find('.//{%s}x' % NS_DATA)
    return x


def returned_publickey(reply, what, consequence):
    """(bytes, Ring) of the `publickey` field of a code or rollover reply."""
    values = form_fields(reply_form(reply)).get('publickey', (None, []))[1]
    if not values or not values[0].strip():
        raise Failure('%s has no publickey field: %s' % (what, consequence))
    try:
        signed = base64.b64decode(''.join(values[0].split()), validate=True)
        ring = kp.Ring(signed)
    except (ValueError, kp.PGPError) as e:
        raise Failure('the returned publickey does not parse: %s' % e)
    return signed, ring


def check_returned_key(ring, user_ring):
    """KEYFLAGS, UID, UIDSIG of the certified key `ring`, and what the client needs of it:
    our key (`user_ring`, as we sent it), an authentication key, both subkeys."""
    if ring.fpr != user_ring.fpr:
        raise Failure('the returned key is another key: %s, ours is %s'
                      % (ring.fpr, user_ring.fpr))
    flags = ring.first_signature_flags()
    say('KEYFLAGS', '0x%02x' % flags)
    report_uids(ring)
    if not flags & kp.FLAG_AUTHENTICATE:
        raise Failure('the client finds no authentication key in the returned ring: the first '
                      'signature on the primary has key flags 0x%02x (the self-signature must '
                      'come before the server\'s certification)' % flags)
    kinds = [ring.subkey_flags(i) for i in range(len(ring.subkeys))]
    if user_ring.subkeys and not (any(f & kp.FLAG_SIGN for f in kinds) and
                                  any(f & kp.FLAG_ENCRYPT_COMMS for f in kinds)):
        raise Failure('the returned ring lacks the signing or the encryption subkey '
                      '(the client rebuilds the ring from both)')


def read_code(path, offset, phone, wait):
    """The code of the last "<E.164> <code>" line for `phone` written after `offset`."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except FileNotFoundError:
            data = b''
        if len(data) < offset:  # truncated or replaced: read it all
            offset = 0
        code = None
        for line in data[offset:].decode('utf-8', 'replace').splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].lstrip('+') == phone.lstrip('+'):
                code = parts[1]
        if code is not None:
            return code
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def report_uids(ring):
    for uid, sigs in ring.uid_signatures():
        say('UID', uid)
    for n, (uid, sigs) in enumerate(ring.uid_signatures(), 1):
        for sig in sigs:
            issuer = sig.issuer.hex().upper() if sig.issuer else '-'
            who = 'self' if sig.issuer == ring.primary.keyid else 'other'
            say('UIDSIG', n, '0x%02x' % sig.type, issuer, who)


def tampers(args, a):
    """The --tamper values of the run and of command `a`."""
    return set(args.tamper) | set(getattr(a, 'tamper', None) or [])


def certificate_for(ring, rsa_key, tamper):
    """(certificate DER, private key) for the handshake; `cert-key` swaps in another RSA key."""
    if 'cert-key' in tamper:
        from cryptography.hazmat.primitives.asymmetric import rsa
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return kp.bridge_certificate(ring, rsa_key, cert_key=other), other
    return kp.bridge_certificate(ring, rsa_key), rsa_key


def step(what):
    say('STEP', what)


# -- the logged-in session --------------------------------------------------------------------

class Session:
    def __init__(self, args, state):
        self.args = args
        self.state = state
        self.domain = args.domain
        self.ids = StanzaIds()
        self.stream = None
        self.jid = None
        self.sm = False       # <enable/> sent: count what we send
        self.sm_in = False    # <enabled/> received: count what we receive
        self.handled = 0      # h: stanzas received since <enabled/>
        self.sent = 0         # stanzas sent since <enable/>
        self.acked = 0        # the server's last <a h/>
        self.inbox = []       # messages and presences not consumed yet
        self.replies = []     # iq results/errors
        self.server_ring = None

    # sending -----------------------------------------------------------------------------

    def send_stanza(self, data):
        self.stream.send(data)
        if self.sm:
            self.sent = (self.sent + 1) & 0xffffffff

    def send_nonza(self, data):
        self.stream.send(data)

    # receiving ---------------------------------------------------------------------------

    def pump(self, timeout):
        """Reads and handles one element (or returns after `timeout` without one)."""
        s = self.stream
        if not s.elements:
            if timeout > 0:
                s.recv_once(min(timeout, 1.0))
            if not s.elements:
                return
        el = s.next(0)
        tag = el.tag
        if tag == '{%s}r' % NS_SM:
            self.send_nonza(sm_answer(self.handled))
        elif tag == '{%s}a' % NS_SM:
            try:
                self.acked = int(el.get('h', '0'))
            except ValueError:
                raise Failure('bad <a h=%r/>' % el.get('h'))
        elif tag in ('{%s}message' % NS_CLIENT, '{%s}presence' % NS_CLIENT,
                     '{%s}iq' % NS_CLIENT):
            if self.sm_in:
                self.handled = (self.handled + 1) & 0xffffffff
            if tag.endswith('}iq'):
                if el.get('type') in ('get', 'set'):
                    self.answer_iq(el)
                else:
                    self.replies.append(el)
            else:
                self.inbox.append(el)
        else:
            log('session', 'ignored', tag)

    def wait_for(self, what, pred, timeout):
        """The first inbox stanza for which `pred` holds (consumed), waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for i, el in enumerate(self.inbox):
                if pred(el):
                    return self.inbox.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure('no %s within %ss' % (what, timeout))
            self.pump(left)

    def answer_iq(self, iq):
        """What Smack and the client answer by themselves."""
        child = iq[0] if len(iq) else None
        frm, to, iq_id = iq.get('from'), iq.get('to'), iq.get('id')
        ns = child.tag.split('}')[0][1:] if child is not None and '}' in child.tag else ''
        if ns == NS_PING:
            self.send_stanza(iq_xml('result', iq_id, '', to=frm, frm=to))
        elif ns == NS_ROSTER and iq.get('type') == 'set':
            if frm is None or jid_norm(bare(frm)) == jid_norm(bare(self.jid)):
                for item in child.findall('{%s}item' % NS_ROSTER):
                    say('PUSH', describe_item(item))
            self.send_stanza(iq_xml('result', iq_id, '', to=frm, frm=to))
        elif ns == NS_VERSION and iq.get('type') == 'get':
            self.send_stanza(iq_xml('result', iq_id,
                                    "<query xmlns='jabber:iq:version'><name>Kontalk</name>"
                                    "<version>emulator</version></query>", to=frm, frm=to))
        elif ns == NS_LAST and iq.get('type') == 'get':
            self.send_stanza(iq_xml('result', iq_id,
                                    "<query xmlns='jabber:iq:last' seconds='0'></query>",
                                    to=frm, frm=to))
        elif ns == NS_DISCO_INFO and iq.get('type') == 'get':
            feats = [NS_DISCO_INFO, NS_CAPS, NS_CHATSTATES, NS_RECEIPTS, NS_PING, NS_VERSION,
                     NS_LAST]
            self.send_stanza(iq_xml(
                'result', iq_id, "<query xmlns='http://jabber.org/protocol/disco#info'>"
                "<identity category='client' name='Kontalk' type='phone'/>" +
                ''.join("<feature var='%s'/>" % f for f in feats) + '</query>', to=frm, frm=to))
        else:
            self.send_stanza(iq_xml('error', iq_id, "<error type='cancel'><feature-not-implemented"
                                    " xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
                                    to=frm, frm=to))

    def iq(self, request, iq_id, to, match='reply', timeout=15):
        """Sends an IQ request and returns its result; IqError for an error. `match`: 'reply'
        (Smack's IQReplyFilter: the reply must come from `to`) or 'id' (StanzaIdFilter)."""
        self.send_stanza(request)
        deadline = time.monotonic() + timeout
        rejected = []
        while True:
            for i, el in enumerate(self.replies):
                if el.get('id') != iq_id:
                    continue
                self.replies.pop(i)
                if match == 'reply' and not self.reply_from_ok(to, el.get('from')):
                    rejected.append(el.get('from'))
                    log('session', 'dropped', 'reply to %s from %r: IQReplyFilter wants %r'
                        % (iq_id, el.get('from'), to))
                    break
                if el.get('type') == 'error':
                    raise IqError(el)
                return el
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    if rejected:
                        raise Failure('the reply to %s came from %s, but Smack only takes one '
                                      'from %s (IQReplyFilter)' % (iq_id, rejected[0], to))
                    raise Failure('no reply to iq %s within %ss' % (iq_id, timeout))
                self.pump(left)

    def reply_from_ok(self, to, frm):
        """IQReplyFilter of Smack 4.3.4."""
        if jid_norm(frm) == jid_norm(to):
            return True
        if to is None:
            return (frm is not None and jid_norm(bare(frm)) == jid_norm(bare(self.jid))) or \
                jid_norm(frm) == jid_norm(self.domain)
        if jid_norm(to) == jid_norm(bare(self.jid)):
            return frm is None
        return False

    # login -------------------------------------------------------------------------------

    def login(self, a):
        args = self.args
        tamper = tampers(args, a)
        acct = self.state.account()
        if not acct:
            raise Failure('no account in %s: register first' % self.state.path)
        rsa_key = self.state.rsa_key()
        if 'unsigned-key' in tamper:
            ring_bytes = self.state.read('public-unsigned.pgp')
        else:
            ring_bytes = self.state.read('public.pgp')
            if ring_bytes is None:
                raise Failure('no signed key in %s: registration did not finish' % self.state.path)
        ring = kp.Ring(ring_bytes)
        cert = key = None
        if 'no-cert' not in tamper:
            cert, key = certificate_for(ring, rsa_key, tamper)

        step('login')
        self.stream = Stream(args, 'login')
        features = self.stream.secure(client_tls_context(cert, key))
        say('TLS', self.stream.sock.version())
        mechs = has_mechanisms(features)
        if mechs is None:
            raise Failure('no <mechanisms/> in the post-TLS features')
        say('MECHANISMS', ','.join(mechs) or '-')
        if mechs != ['EXTERNAL'] and not a.expect_fail:
            raise Failure('the server offers %s: the client would pick %s and fail (offer '
                          'EXTERNAL only)' % (','.join(mechs), pick_mechanism(mechs)))
        stream_id = self.stream.header.get('id')
        step('sasl external')
        self.stream.send(AUTH_EXTERNAL)
        answer = self.stream.next(15, 'the SASL answer')
        if answer.tag == '{%s}failure' % NS_SASL:
            cond = '-'
            txt = ''
            for child in answer:
                if child.tag == '{%s}text' % NS_SASL:
                    txt = one_line(child.text)
                else:
                    cond = child.tag.split('}', 1)[-1]
            say('TRIED', 'EXTERNAL')
            say('FAILURE', cond, *([txt] if txt else []))
            if a.expect_fail:
                self.stream.close()
                self.stream = None
                return 'expected-failure'
            raise Failure('SASL EXTERNAL refused: %s %s' % (cond, txt), EXIT_AUTH)
        if answer.tag != '{%s}success' % NS_SASL:
            raise Failure('unexpected answer to <auth/>: %s' % answer.tag)
        if a.expect_fail:
            raise Failure('SASL EXTERNAL succeeded, but a failure was expected')
        features = self.stream.open(stream_id)

        step('bind')
        resource = a.resource or acct.get('resource') or '%016x' % RANDOM.getrandbits(64)
        if features.find('{%s}bind' % NS_BIND) is None:
            raise Failure('no bind feature after SASL')
        iq_id = self.ids()
        self.stream.send(iq_xml('set', iq_id, "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                                "<resource>%s</resource></bind>" % text(resource)))
        reply = self.wait_reply_by_id(iq_id)
        jid_el = reply.find('{%s}bind/{%s}jid' % (NS_BIND, NS_BIND))
        if jid_el is None or not (jid_el.text or '').strip():
            raise Failure('bind result without a jid')
        self.jid = jid_el.text.strip()
        say('BOUND', self.jid)
        session = features.find('{%s}session' % NS_SESSION)
        if session is not None and session.find('{%s}optional' % NS_SESSION) is None:
            iq_id = self.ids()
            self.stream.send(iq_xml('set', iq_id,
                                    "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>"))
            self.wait_reply_by_id(iq_id)

        step('stream management')
        if features.find('{%s}sm' % NS_SM) is None:
            raise Failure('no <sm xmlns="urn:xmpp:sm:3"/> feature: the client sends no message '
                          'without stream management')
        self.stream.send(SM_ENABLE)
        self.sm = True  # the server counts what we send from here, we count from <enabled/> on
        while True:
            el = self.stream.next(15, '<enabled/>')
            if el.tag == '{%s}enabled' % NS_SM:
                self.sm_in = True
                self.handled = 0
                break
            if el.tag == '{%s}failed' % NS_SM:
                raise Failure('<enable/> answered with <failed/>')
            self.stream.elements.insert(0, el)
            self.pump(0)
        say('SM', 'enabled')

        step('roster')
        ver = None
        if features.find('{%s}ver' % NS_ROSTERVER) is not None:
            ver = acct.get('roster_ver', '')
        iq_id = self.ids()
        reply = self.iq(iq_xml('get', iq_id, "<query xmlns='jabber:iq:roster'%s></query>"
                               % attrs(('ver', ver))), iq_id, None)
        query = reply.find('{%s}query' % NS_ROSTER)
        if query is not None:
            for item in query.findall('{%s}item' % NS_ROSTER):
                say('ROSTER', describe_item(item))
            if query.get('ver') is not None:
                acct['roster_ver'] = query.get('ver')
                self.state.save_account(acct)

        step('presence')
        self.send_stanza(presence_xml(self.ids(), status=a.status, show=a.show, caps=True))

        step('disco')
        iq_id = self.ids()
        try:
            reply = self.iq(iq_xml('get', iq_id, "<query xmlns='http://jabber.org/protocol/"
                                   "disco#info'></query>", to=self.domain), iq_id, self.domain)
            for feat in reply.iter('{%s}feature' % NS_DISCO_INFO):
                say('FEATURE', feat.get('var'))
        except IqError as e:
            say('IQ-ERROR', e.condition, e.type)

        step('server key')
        iq_id = self.ids()
        try:
            reply = self.iq(pubkey_request(self.domain, iq_id), iq_id, self.domain)
            ring_bytes, parsed = pubkey_of(reply)
            if parsed is not None:
                self.server_ring = parsed
                self.state.write('server.pgp', ring_bytes)
                say('SERVERKEY', parsed.fpr)
                self.report_server_certification(ring)
            else:
                say('SERVERKEY', 'length=%d' % len(ring_bytes or b''))
        except IqError as e:
            say('SERVERKEY', 'error', e.condition)
        say('READY', self.jid)
        return 'ok'

    def report_server_certification(self, ring):
        srv = self.server_ring.primary
        found = False
        for uid, sigs in ring.uid_signatures():
            for sig in sigs:
                if sig.issuer == srv.keyid:
                    found = True
                    say('CERTIFIED-BY-SERVER', '0x%02x' % sig.type,
                        'valid' if ring.verify_uid_sig(uid, sig, srv) else 'invalid')
        if not found:
            say('CERTIFIED-BY-SERVER', 'none')

    def wait_reply_by_id(self, iq_id, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            for i, el in enumerate(self.replies):
                if el.get('id') == iq_id:
                    self.replies.pop(i)
                    if el.get('type') == 'error':
                        e = IqError(el)
                        e.report()
                        raise Failure('iq %s refused: %s' % (iq_id, e))
                    return el
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure('no reply to iq %s within %ss' % (iq_id, timeout))
            self.pump(left)

    def close(self):
        if self.stream is not None:
            try:
                # What was received is acknowledged before the stream ends
                # (XEP-0198 4): else the server delivers it again next time.
                if getattr(self, 'sm_in', False):
                    self.stream.send(sm_answer(self.handled))
                self.stream.send(presence_xml(self.ids(), ptype='unavailable'))
            except Failure:
                pass
            self.stream.close()
            self.stream = None

    # commands ----------------------------------------------------------------------------

    def chat(self, a):
        to = to_jid(a.to, self.domain)
        mid = a.id or random_string(30)
        step('chat %s' % mid)
        self.send_stanza(chat_message_xml(to, mid, a.body))
        say('SENT', mid)
        self.request_ack(mid)
        if a.wait_receipt:
            el = self.wait_for('receipt for %s' % mid, lambda m: receipt_id(m) == mid,
                               a.receipt_timeout)
            say('RECEIPT', el.get('from'), mid)

    def request_ack(self, what, timeout=15):
        """<r/> and wait for the server's <a h/> to cover what was sent."""
        want = self.sent
        self.send_nonza(SM_REQUEST)
        deadline = time.monotonic() + timeout
        while ((self.acked - want) & 0xffffffff) >= 0x80000000:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure('no <a h=%d/> for %s within %ss (last h=%d)'
                              % (want, what, timeout, self.acked))
            self.pump(left)
        say('ACKED', what)

    def listen(self, a):
        step('listen %d' % a.count)
        got = 0
        deadline = time.monotonic() + a.wait
        while got < a.count:
            if not self.inbox:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failure('%d of %d messages within %ss' % (got, a.count, a.wait))
                self.pump(left)
                continue
            el = self.inbox.pop(0)
            if self.handle(el, a):
                got += 1

    def handle(self, el, a):
        """Reports one stanza of the inbox; True for a message with a body."""
        frm = el.get('from') or '-'
        if el.tag == '{%s}presence' % NS_CLIENT:
            self.report_presence(el, getattr(a, 'accept_subscriptions', False))
            return False
        if el.get('type') == 'error':
            err = el.find('{%s}error' % NS_CLIENT)
            cond = '-'
            if err is not None:
                for child in err:
                    if child.tag.startswith('{%s}' % NS_STANZAS) and not child.tag.endswith('}text'):
                        cond = child.tag.split('}', 1)[1]
            say('MESSAGE-ERROR', frm, cond)
            return False
        rid = receipt_id(el)
        if rid is not None:
            say('RECEIPT', frm, rid)
        body = el.find('{%s}body' % NS_CLIENT)
        if body is None:
            return False
        say('RECEIVED', frm, one_line(body.text))
        e2e = el.find('{%s}e2e' % NS_E2E)
        if e2e is not None:
            try:
                n = len(base64.b64decode(''.join((e2e.text or '').split())))
            except ValueError:
                n = -1
            say('E2E', frm, n)
        delay = el.find('{%s}delay' % NS_DELAY)
        if delay is not None:
            say('DELAYED', frm, delay.get('stamp', '-'))
        group = el.find('{%s}group' % NS_GROUP)
        if group is not None:
            say('GROUP', frm, group.get('id', '-'), group.get('owner', '-'))
        url = el.find('{%s}x/{%s}url' % (NS_OOB, NS_OOB))
        if url is not None:
            say('OOB', frm, url.get('type', '-'), url.get('length', '-'), url.text)
            if getattr(a, 'download', False):
                status, headers, data = http_request('GET', url.text)
                say('DOWNLOADED', status, headers.get('Content-Type', '-'), len(data),
                    hashlib.sha256(data).hexdigest())
        if el.find('{%s}request' % NS_RECEIPTS) is not None and el.get('id') and \
                not getattr(a, 'no_receipts', False):
            self.send_stanza(receipt_xml(frm, self.ids(), el.get('id')))
            self.send_nonza(SM_REQUEST)
        return True

    def report_presence(self, el, accept=False):
        frm = el.get('from') or '-'
        ptype = el.get('type', 'available')
        fields = [frm, ptype]
        show = el.find('{%s}show' % NS_CLIENT)
        if show is not None and show.text:
            fields.append('show=' + show.text.strip())
        pk = el.find('{%s}pubkey' % NS_PUBKEY)
        if pk is not None:
            pr = pk.find('{%s}print' % NS_PUBKEY)
            if pr is not None and pr.text:
                fields.append('print=' + pr.text.strip().upper())
            key = pk.find('{%s}key' % NS_PUBKEY)
            if key is not None and key.text:
                try:
                    fields.append('key=' + kp.Ring(base64.b64decode(''.join(key.text.split()))).fpr)
                except (ValueError, kp.PGPError):
                    fields.append('key=unparsable')
        say('PRESENCE', *fields)
        if ptype == 'subscribed':
            say('SUBSCRIBED', frm)
        if ptype == 'subscribe' and bare(frm).rpartition('@')[2] == self.domain:
            # the client approves users of its network itself: subscribed only
            self.send_stanza(presence_xml(self.ids(), to=bare(frm), ptype='subscribed'))
            say('APPROVED', bare(frm))
        elif ptype == 'subscribe' and accept:
            # a manual accept: subscribed, then subscribe
            self.send_stanza(presence_xml(self.ids(), to=bare(frm), ptype='subscribed'))
            self.send_stanza(presence_xml(self.ids(), to=bare(frm), ptype='subscribe'))

    def subscribe(self, a):
        to = bare(to_jid(a.to, self.domain))
        step('subscribe %s' % to)
        self.send_stanza(presence_xml(self.ids(), to=to, ptype='subscribe'))
        if a.wait_subscribed:
            deadline = time.monotonic() + a.wait
            while True:
                for i, el in enumerate(self.inbox):
                    if el.tag == '{%s}presence' % NS_CLIENT and \
                            jid_norm(bare(el.get('from'))) == jid_norm(to) and \
                            el.get('type') in ('subscribed', 'unsubscribed', 'error'):
                        self.inbox.pop(i)
                        self.report_presence(el)
                        if el.get('type') != 'subscribed':
                            raise Failure('subscription to %s answered %s' % (to, el.get('type')))
                        return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failure('no subscribed from %s within %ss' % (to, a.wait))
                self.pump(left)
        else:
            self.request_ack('subscribe')

    def expectable(self, e, a):
        """True if the IQ error was expected (EXPECTED-ERROR); else reports and fails."""
        return expectable(e, a)

    def upload_service(self):
        """DiscoverItemsListener: disco#info of every item of the domain; the one with
        urn:xmpp:http:upload is the service."""
        iq_id = self.ids()
        reply = self.iq(iq_xml('get', iq_id, "<query xmlns='%s'/>" % NS_DISCO_ITEMS,
                               to=self.domain), iq_id, self.domain)
        for item in reply.iter('{%s}item' % NS_DISCO_ITEMS):
            jid = item.get('jid')
            iq_id = self.ids()
            try:
                info = self.iq(iq_xml('get', iq_id, "<query xmlns='%s'/>" % NS_DISCO_INFO,
                                      to=jid), iq_id, jid)
            except IqError:
                continue
            if any(f.get('var') == NS_UPLOAD for f in info.iter('{%s}feature' % NS_DISCO_INFO)):
                say('UPLOAD-SERVICE', jid)
                return jid
        raise Failure('no disco item of %s has %s' % (self.domain, NS_UPLOAD))

    def upload(self, a):
        """A photo as the client sends one: a 0.2 slot from the service, the PUT (only 200 counts),
        then a chat message with the GET URL in jabber:x:oob."""
        step('upload %d bytes' % a.size)
        service = self.upload_service()
        data = bytes(RANDOM.getrandbits(8) for _ in range(a.size))
        iq_id = self.ids()
        try:
            reply = self.iq(upload_request(service, iq_id, a.filename, a.size, a.content_type),
                            iq_id, service)
        except IqError as e:
            self.expectable(e, a)
            return
        if a.expect_error:
            raise Failure('the slot was given, %s was expected' % a.expect_error)
        slot = reply.find('{%s}slot' % NS_UPLOAD)
        if slot is None:
            raise Failure('no <slot/> in %s' % one_line(ET.tostring(reply, 'unicode')))
        put, get = slot.findtext('{%s}put' % NS_UPLOAD), slot.findtext('{%s}get' % NS_UPLOAD)
        say('SLOT', put, get)
        body = data if a.put_size is None else data[:a.put_size] + b'x' * (a.put_size - len(data))
        status, _h, _b = http_request('PUT', put, body, {
            'Content-Type': a.put_type or a.content_type,
            'Content-Length': str(len(body))})
        say('PUT', status)
        if a.expect_status is not None:
            if status != a.expect_status:
                raise Failure('the PUT got %d, %d was expected' % (status, a.expect_status))
            return
        # [V AC upload/HTTPFileUpload.java]: anything but 200 is a failed upload.
        if status != 200:
            raise Failure('the PUT got %d; the client counts only 200 as success' % status)
        say('UPLOADED', get, hashlib.sha256(data).hexdigest())
        if a.to:
            to = to_jid(a.to, self.domain)
            mid = random_string(30)
            self.send_stanza(oob_message_xml(to, mid, get, a.content_type, a.size))
            say('SENT', mid)
            self.request_ack(mid)

    def pubkey(self, a):
        to = to_jid(a.of, self.domain)
        step('pubkey %s' % to)
        iq_id = self.ids()
        try:
            reply = self.iq(pubkey_request(to, iq_id), iq_id, to)
        except IqError as e:
            self.expectable(e, a)
            return
        if a.expect_error:
            raise Failure('pubkey of %s answered, %s was expected' % (to, a.expect_error))
        raw, ring = pubkey_of(reply)
        say('PUBKEY', to, ring.fpr if ring is not None else 'length=%d' % len(raw or b''))

    def match(self, a):
        jids = [to_jid(j, self.domain) for j in a.jids.split(',') if j.strip()]
        step('match %d' % len(jids))
        iq_id = self.ids()
        to = 'probe@' + self.domain
        try:
            reply = self.iq(match_request(self.domain, iq_id, jids), iq_id, to, timeout=a.wait)
        except IqError as e:
            self.expectable(e, a)
            return
        items = reply.findall('{%s}query/{%s}item' % (NS_KROSTER, NS_KROSTER))
        for item in items:
            say('MATCH', item.get('jid'))
        say('MATCHED', len(items))

    def serverlist(self, a):
        step('serverlist')
        iq_id = self.ids()
        try:
            reply = self.iq(serverlist_request(self.domain, iq_id), iq_id,
                            'network@' + self.domain, match='id')
        except IqError as e:
            self.expectable(e, a)
            return
        items = reply.findall('{%s}command/{%s}serverlist/{%s}item'
                              % (NS_COMMANDS, NS_SERVERLIST, NS_SERVERLIST))
        for item in items:
            say('SERVER', item.get('node') or '-', item.get('fingerprint') or '-')
        say('SERVERS', len(items))

    def group(self, a):
        members = [to_jid(j, self.domain) for j in a.to.split(',') if j.strip()]
        mid = random_string(30)
        gid = a.group_id or random_string(30)
        owner = a.owner or bare(self.jid)
        step('group %s' % gid)
        self.send_stanza(group_message_xml(self.domain, mid, gid, owner, members, a.body,
                                           create=a.create, subject=a.subject))
        say('SENT', mid)
        self.request_ack(mid)

    def rollover(self, a):
        """RegenerateKeyPairListener + RegisterKeyPairListener: revoke the current key, send a new
        one with the same uid, take the certified key that comes back as the account's key."""
        acct = self.state.account()
        old_rsa = self.state.rsa_key()
        old_bytes = self.state.read('public.pgp')
        if old_bytes is None:
            raise Failure('no signed key in %s: registration did not finish' % self.state.path)
        old = kp.Ring(old_bytes)
        uids = old.user_ids()
        email = (old.emails() or [bare(self.jid)])[0]
        name = uids[0].rsplit(' <', 1)[0] if uids and ' <' in uids[0] else \
            acct.get('name') or 'Kontalk Test'
        step('rollover key generation')
        new = kp.generate_user_key(name, email, subkeys=a.subkeys)
        step('rollover revocation %s' % a.revocation)
        revoked = rollover_revoked(old, old_rsa, a.revocation)
        say('REVOKING', kp.Ring(revoked).fpr)
        iq_id = self.ids()
        try:
            reply = self.iq(rollover_request(self.domain, iq_id, b64(new.ring_bytes),
                                             b64(revoked) if revoked is not None else None),
                            iq_id, self.domain, match='id')
        except IqError as e:
            self.expectable(e, a)
            return
        if a.expect_error:
            raise Failure('the rollover was answered with a result, %s was expected'
                          % a.expect_error)
        signed, ring = returned_publickey(reply, 'the rollover reply', 'the client does nothing '
                                          'with it and keeps the old key (RegisterKeyPairListener)')
        check_returned_key(ring, new.ring)
        if self.server_ring is not None:
            self.report_server_certification(ring)
        # the old key is kept aside, then the new one becomes the account's
        self.state.write('revoked-key.pem', self.state.read('key.pem'))
        if self.state.read('subkeys.pem') is not None:
            self.state.write('revoked-subkeys.pem', self.state.read('subkeys.pem'))
        else:
            self.state.remove('revoked-subkeys.pem')
        self.state.write('revoked-public.pgp', old_bytes)
        self.state.write('revoked-public-sent.pgp', revoked)
        self.state.write('key.pem', new.private_pem())
        self.state.save_sub_keys(new.sub_keys)
        self.state.write('public-unsigned.pgp', new.ring_bytes)
        self.state.write('public.pgp', signed)
        acct = self.state.account()
        acct.update({'fingerprint': ring.fpr, 'revoked_fingerprint': old.fpr})
        self.state.save_account(acct)
        say('ROLLEDOVER', ring.fpr)

    def backup(self, a):
        """PrivateKeyUploadListener: the private key goes up, a token comes back."""
        acct = self.state.account()
        if a.format == 'pem':
            data = self.state.read('key.pem')
            if data is None:
                raise Failure('no key in %s: register first' % self.state.path)
        else:
            unsigned = self.state.read('public-unsigned.pgp')
            if unsigned is None:
                raise Failure('no key in %s: register first' % self.state.path)
            passphrase = a.passphrase if a.passphrase is not None else \
                self.state.passphrase(acct)
            try:
                data = kp.secret_ring(kp.Ring(unsigned), [self.state.rsa_key()] +
                                      self.state.sub_keys(), passphrase)
            except kp.PGPError as e:
                raise Failure('cannot build the secret key ring: %s' % e)
        digest = hashlib.sha256(data).hexdigest()
        step('backup %s' % a.format)
        say('BACKUP', 'private=%s' % digest, 'length=%d' % len(data))
        iq_id = self.ids()
        try:
            reply = self.iq(backup_request(self.domain, iq_id, b64(data)), iq_id, self.domain,
                            match='id')
        except IqError as e:
            self.expectable(e, a)
            return
        if a.expect_error:
            raise Failure('the backup was answered with a result, %s was expected'
                          % a.expect_error)
        x = reply.find('.//{%s}x' % NS_DATA)
        if x is None:
            raise Failure('the backup reply has no data form: the client reports '
                          'internal-server-error')
        values = form_fields(x).get('token', (None, []))[1]
        if not values:
            raise Failure('the backup reply has no token field: the client gets no token')
        token = values[0]
        say('TOKEN', token)
        acct = self.state.account()
        acct.update({'backup_token': token, 'backup_sha256': digest})
        self.state.save_account(acct)
        if not re.fullmatch(r'[0-9]{40}', token):
            raise Failure('the token %r is not 40 digits' % token)

    def wait(self, a):
        step('wait %s' % a.seconds)
        deadline = time.monotonic() + a.seconds
        while True:
            while self.inbox:
                self.handle(self.inbox.pop(0), a)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.pump(min(left, 1.0))


def expectable(e, a):
    """True if the IQ error was expected (EXPECTED-ERROR); else reports and fails."""
    if a.expect_error and e.condition == a.expect_error:
        say('IQ-ERROR', e.condition, e.type)
        say('EXPECTED-ERROR', e.condition)
        return True
    e.report()
    raise Failure('iq refused: %s' % e)


def rollover_revoked(old, old_rsa, how):
    """The "revoked" bytes of a rollover: `how` is good (what the client sends), none (no
    revocation), bad (a revocation whose signature does not verify) or foreign (a good
    revocation, of another key than the account's)."""
    if how == 'good':
        return kp.revoked_key(old, old_rsa)
    if how == 'none':
        return kp.revoked_key(old, old_rsa, signature=b'')
    if how == 'bad':
        sig = kp.Signature(kp.revocation_signature(old_rsa, old.primary))
        body = bytearray(sig.body)
        body[-1] ^= 0x01  # the last octet of the RSA signature (left16 stays right)
        return kp.revoked_key(old, old_rsa, signature=bytes(body))
    if how == 'foreign':
        other = kp.generate_user_key('Someone Else', (old.emails() or ['x@x'])[0],
                                     subkeys='none')
        return kp.revoked_key(other.ring, other.rsa)
    raise Failure('unknown --revocation %s' % how)


def restore_reply(reply):
    """(private, public) bytes of a retrieval reply, read the way CC's Account.Provider reads
    them: the <account/> extension in its namespace, then <privatekey>, <private>, <public> by
    local name; None where the client finds nothing (it then reports "Server did not reply with
    key.")."""
    account = reply.find('.//{%s}account' % NS_ACCOUNT)
    if account is None:
        return None

    def local(el):
        return el.tag.split('}', 1)[-1]
    for pk in account:
        if local(pk) != 'privatekey':
            continue
        got = {}
        for child in pk:
            if local(child) in ('private', 'public'):
                got[local(child)] = child.text or ''
        if 'private' not in got or 'public' not in got:
            return None
        try:
            private = base64.b64decode(''.join(got['private'].split()), validate=True)
            public = base64.b64decode(''.join(got['public'].split()), validate=True)
        except ValueError:
            return None
        if not private or not public:
            return None
        return private, public
    return None


def restore(args, state, a):
    """Private key retrieval on a connection of its own that never authenticates."""
    step('restore')
    reg = Registration(args, state)
    stream = reg.connection('restore')
    try:
        iq_id = reg.ids()
        try:
            reply = reg.ask(stream, restore_request(args.domain, iq_id, a.token), iq_id)
        except IqError as e:
            expectable(e, a)
            return
    finally:
        stream.close()
    if a.expect_error:
        raise Failure('the retrieval was answered with a result, %s was expected'
                      % a.expect_error)
    got = restore_reply(reply)
    if got is None:
        raise Failure('the retrieval reply has no <account><privatekey> with <private> and '
                      '<public>: the client reports "Server did not reply with key."')
    private, public = got
    digest = hashlib.sha256(private).hexdigest()
    try:
        pub = kp.Ring(public).fpr
    except kp.PGPError:
        pub = 'length=%d' % len(public)
    say('RESTORED', 'private=%s' % digest, 'public=%s' % pub)
    try:
        say('RESTORED-SECRET', kp.public_of_secret_ring(private).fpr)
    except (kp.PGPError, IndexError, ValueError):
        pass
    if state is not None:
        state.write('restored-private.bin', private)
        state.write('restored-public.pgp', public)
        acct = state.account()
        if acct.get('backup_token') == a.token and acct.get('backup_sha256'):
            say('SAME-AS-BACKUP', 'yes' if acct['backup_sha256'] == digest else 'no')


def pick_mechanism(mechs):
    """Smack's choice with PLAIN blacklisted: the lowest priority number."""
    prio = {'SCRAM-SHA-1-PLUS': 100, 'SCRAM-SHA-1': 110, 'DIGEST-MD5': 210, 'ANONYMOUS': 500,
            'EXTERNAL': 510}
    known = [m for m in mechs if m in prio]
    return min(known, key=prio.get) if known else 'none'


def receipt_id(el):
    rec = el.find('{%s}received' % NS_RECEIPTS)
    return rec.get('id') if rec is not None else None


def pubkey_of(reply):
    """(bytes, Ring or None) of a pubkey IQ result."""
    pk = reply.find('{%s}pubkey' % NS_PUBKEY)
    if pk is None or not (pk.text or '').strip():
        return None, None
    try:
        raw = base64.b64decode(''.join(pk.text.split()))
    except ValueError:
        return pk.text.encode(), None
    try:
        return raw, kp.Ring(raw)
    except kp.PGPError:
        return raw, None


def describe_item(item):
    fields = [item.get('jid', '-'), 'subscription=%s' % (item.get('subscription') or 'none')]
    if item.get('ask'):
        fields.append('ask=%s' % item.get('ask'))
    return ' '.join(fields)


# -- identities for the load generator -------------------------------------------------------

def bench_dirs(root):
    """The identity directories DIR/<i>, in the order of i."""
    try:
        names = [n for n in os.listdir(root) if n.isdigit()]
    except OSError as e:
        raise Failure('%s: %s' % (root, e))
    return [os.path.join(root, n) for n in sorted(names, key=int)]


def write_file(path, data):
    with open(path, 'wb') as f:
        f.write(data)


def bench_keys(args, a):
    """`bench-keys`: keys and unsigned certificates, as the client makes them at registration."""
    from cryptography.hazmat.primitives import serialization
    if not 1 <= a.count <= 10000:
        raise Failure('bench-keys: --count 1..10000')
    first = int(e164(a.first_phone)[1:])
    os.makedirs(a.out, exist_ok=True)
    for i in range(a.count):
        phone = '+%d' % (first + i)
        user = kp.generate_user_key('Bench %d' % i, '%s@%s' % (phone_localpart(phone),
                                                               args.domain))
        d = os.path.join(a.out, str(i))
        os.makedirs(d, exist_ok=True)
        write_file(os.path.join(d, 'phone'), phone.encode('ascii'))
        write_file(os.path.join(d, 'key.der'), user.rsa.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        write_file(os.path.join(d, 'unsigned.der'), kp.bridge_certificate(user.ring, user.rsa))
        for stale in ('signed.pgp', 'signed.der'):
            try:
                os.remove(os.path.join(d, stale))
            except FileNotFoundError:
                pass
    say('BENCH-KEYS', a.count, a.out)


def bench_certs(args, a):
    """`bench-certs`: the login certificate of each certified key the generator kept."""
    from cryptography.hazmat.primitives import serialization
    n = 0
    for d in bench_dirs(a.dir):
        try:
            with open(os.path.join(d, 'signed.pgp'), 'rb') as f:
                signed = f.read()
        except FileNotFoundError:
            continue
        with open(os.path.join(d, 'key.der'), 'rb') as f:
            rsa_key = serialization.load_der_private_key(f.read(), password=None)
        try:
            ring = kp.Ring(signed)
        except kp.PGPError as e:
            raise Failure('%s/signed.pgp does not parse: %s' % (d, e))
        write_file(os.path.join(d, 'signed.der'), kp.bridge_certificate(ring, rsa_key))
        n += 1
    if n == 0:
        raise Failure('bench-certs: no DIR/<i>/signed.pgp in %s (run kontalkd-load '
                      'kontalk-register first)' % a.dir)
    say('BENCH-CERTS', n, a.dir)


# -- selftest ---------------------------------------------------------------------------------

def check(what, cond, detail=''):
    if not cond:
        raise Failure('selftest: %s %s' % (what, detail))
    say('CHECK', what)


def selftest(args):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    domain = 'localhost'
    phone = '+15555215554'
    local = phone_localpart(phone)
    check('sha1(+15555215554) = 4bdd4f929f3a1062253e4e496bafba0bdfb5db75',
          local == '4bdd4f929f3a1062253e4e496bafba0bdfb5db75', local)
    jid = '%s@%s' % (local, domain)
    name = 'Selftest User'
    uid = '%s <%s>' % (name, jid)

    step('key generation')
    user = kp.generate_user_key(name, jid)
    ring = user.ring
    check('key ring parses back, BC framing unchanged', ring.encode_bc() == user.ring_bytes)
    check('uid and e-mail', ring.user_ids() == [uid] and ring.emails() == [jid])
    selfsig = ring.uid_signatures()[0][1][0]
    check('0x13 self-signature, SHA-256, key flags 0x21, creation time, issuer',
          selfsig.type == 0x13 and selfsig.hashalgo == 8 and selfsig.key_flags == 0x21 and
          selfsig.created == user.created and selfsig.issuer == ring.primary.keyid)
    check('self-signature verifies', ring.verify_uid_sig(uid, selfsig, ring.primary))
    sign_sub, enc_sub = ring.subkeys
    binding = sign_sub[1][0]
    check('ECDSA subkey binding verifies, flags 0x02',
          binding.verify(ring.primary, ring.primary.hash_prefix() + sign_sub[0].hash_prefix())
          and binding.key_flags == 0x02)
    back = kp.Signature(binding.sub(kp.SUB_EMBEDDED_SIG))
    check('embedded 0x19 back-signature over the primary key only, as the client makes it',
          back.type == 0x19 and back.verify(sign_sub[0], ring.primary.hash_prefix()))
    check('ECDH subkey binding verifies, flags 0x04',
          enc_sub[1][0].verify(ring.primary, ring.primary.hash_prefix() +
                               enc_sub[0].hash_prefix()) and enc_sub[1][0].key_flags == 0x04)
    rfc = kp.generate_user_key(name, jid, subkeys='rfc')
    rs = rfc.ring.subkeys[0]
    rback = kp.Signature(rs[1][0].sub(kp.SUB_EMBEDDED_SIG))
    check('subkeys=rfc: back-signature over primary + subkey',
          rback.verify(rs[0], rfc.ring.primary.hash_prefix() + rs[0].hash_prefix()))

    gpg_dir = tempfile.mkdtemp(prefix='kontalk-gnupg-')
    work = tempfile.mkdtemp(prefix='kontalk-selftest-')
    homes = []
    try:
        env = dict(os.environ, GNUPGHOME=gpg_dir, LC_ALL='C')

        def gpg(*argv, data=None):
            p = subprocess.run(['gpg', '--batch', '--no-tty', '--yes'] + list(argv),
                               input=data, capture_output=True, env=env, timeout=60)
            out = p.stdout.decode('utf-8', 'replace') + p.stderr.decode('utf-8', 'replace')
            log('gpg', ' '.join(argv), out)
            return p.returncode, out

        step('gpg')
        rc, out = gpg('--list-packets', data=user.ring_bytes)
        check('gpg --list-packets: v4 RSA 2048 primary',
              rc == 0 and 'version 4, algo 1' in out and 'pkey[0]: [2048 bits]' in out, out)
        check('gpg --list-packets: the uid', ':user ID packet: "%s"' % uid in out, out)
        check('gpg --list-packets: 0x13 self-signature with SHA-256 and key flags 21',
              'sigclass 0x13' in out and 'digest algo 8' in out and 'key flags: 21' in out, out)
        check('gpg --list-packets: ECDSA and ECDH subkeys with binding signatures',
              out.count(':public sub key packet:') == 2 and out.count('sigclass 0x18') == 2 and
              'algo 19' in out and 'algo 18' in out, out)
        rc, out = gpg('--import', data=user.ring_bytes)
        check('gpg --import', rc == 0 and 'imported: 1' in out, out)
        rc, out = gpg('--check-signatures', user.fpr)
        check('gpg --check-signatures: 3 good signatures, none bad',
              rc == 0 and '3 good signatures' in out and 'bad signature' not in out and
              'sig!3' in out, out)

        step('certificate')
        cert = kp.bridge_certificate(ring, user.rsa)
        with open(os.path.join(work, 'bridge.der'), 'wb') as f:
            f.write(cert)
        ring_der = kp.der(0x03, b'\x00' + user.ring_bytes)
        ext_bytes = kp.PGP_EXT_OID_DER + kp.der(0x04, ring_der)
        check('DER has 06 13 69c9e8a2a88dcbe0c7c789cbc080aaaed78a1b then OCTET STRING { BIT '
              'STRING 00 <key ring> }', ext_bytes in cert)
        check('signatureAlgorithm is sha1WithRSAEncryption (06 09 2a 86 48 86 f7 0d 01 01 05)',
              kp.cert_signature_algorithm(cert) == kp.SHA1_RSA_OID_DER and
              kp.SHA256_RSA_OID_DER not in cert)
        exts = kp.cert_extensions(cert)
        oids = [o.hex() for o, _c, _v in exts]
        want = ['0603551d13', '0603551d0f', '06096086480186f8420101', '0603551d0e',
                '0603551d23', '0603551d11', kp.PGP_EXT_OID_DER.hex()]
        check('extension order: basicConstraints, keyUsage, netscape-cert-type, SKI, AKI, SAN, '
              'PGP', oids == want, str(oids))
        vals = {o.hex(): (c, v) for o, c, v in exts}
        check('basicConstraints critical 30 03 01 01 ff',
              vals['0603551d13'] == (True, bytes.fromhex('30030101ff')))
        check('keyUsage critical 03 02 02 ec', vals['0603551d0f'] == (True, bytes.fromhex('030202ec')))
        check('netscape-cert-type 03 02 05 a0',
              vals['06096086480186f8420101'] == (False, bytes.fromhex('030205a0')))
        san = kp.der(0x30, kp.der(0xa0, kp.XMPP_ADDR_OID_DER + kp.der(0x0c, jid.encode())))
        check('SAN: A0 L 06 08 2b06010505070805 0C L <jid>, no [0] EXPLICIT',
              vals['0603551d11'] == (False, san), vals['0603551d11'][1].hex())
        ski = vals['0603551d0e'][1]
        check('AKI is keyIdentifier only, equal to the SKI',
              vals['0603551d23'][1] == kp.der(0x30, kp.der(0x80, ski[2:])))
        check('PGP extension not critical, holds the ring',
              not vals[kp.PGP_EXT_OID_DER.hex()][0] and kp.ring_from_certificate(cert) ==
              user.ring_bytes)
        c = x509.load_der_x509_certificate(cert)
        check('v3, serial 1', c.version == x509.Version.v3 and c.serial_number == 1)
        created = datetime.datetime.fromtimestamp(user.created, datetime.timezone.utc)
        check('notBefore = notAfter = key creation time',
              c.not_valid_before_utc == created and c.not_valid_after_utc == created)
        subject = c.subject.rdns
        check('subject = issuer = O=OpenPGP to X.509 Bridge, CN=<uid> (UTF8String)',
              c.subject == c.issuer and len(subject) == 2 and
              subject[0].get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value ==
              'OpenPGP to X.509 Bridge' and
              subject[1].get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == uid and
              b'\x0c\x17OpenPGP to X.509 Bridge' in cert)
        spki = user.rsa.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        check('SPKI = the PGP primary key as JCA encodes it',
              c.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) ==
              spki and ring.primary.rsa_public().public_numbers() ==
              user.rsa.public_key().public_numbers())
        user.rsa.public_key().verify(c.signature, c.tbs_certificate_bytes, padding.PKCS1v15(),
                                     hashes.SHA1())
        check('SHA-1 signature verifies over the TBS (whose inner algorithm is SHA-1 too)',
              kp.SHA1_RSA_OID_DER in c.tbs_certificate_bytes)

        step('tls loading')
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        with open(os.path.join(work, 'c.pem'), 'wb') as f:
            f.write(kp.der_to_pem(cert))
        with open(os.path.join(work, 'k.pem'), 'wb') as f:
            f.write(user.private_pem())
        try:
            ctx.load_cert_chain(os.path.join(work, 'c.pem'), os.path.join(work, 'k.pem'))
            refused = None
        except ssl.SSLError as e:
            refused = str(e)
        check('load_cert_chain on %s: %s' % (ssl.OPENSSL_VERSION,
                                              'accepted' if refused is None else
                                              'refused (%s)' % refused), True)
        how = load_client_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, user.rsa)
        check('client certificate loaded with %s' % how, True)
        plain_ring = kp.Ring(user.ring_bytes)
        plain_ring.uids = [(kp.TAG_USER_ID, name.encode(), plain_ring.uids[0][2])]
        plain = kp.bridge_certificate(plain_ring, user.rsa)
        with open(os.path.join(work, 'p.pem'), 'wb') as f:
            f.write(kp.der_to_pem(plain))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(os.path.join(work, 'p.pem'), os.path.join(work, 'k.pem'))
        check('the same certificate without the SAN (uid without e-mail) loads with '
              'load_cert_chain: the SAN is what OpenSSL refuses', True)
        for version in ('1.3', '1.2'):
            got = tls_handshake_check(cert, user.rsa, version, work)
            check('TLS %s handshake to openssl s_server -verify: it received this certificate '
                  'byte for byte' % version, got == cert)

        step('server signature')
        rc, out = gpg('--passphrase', '', '--pinentry-mode', 'loopback', '--quick-generate-key',
                      'Selftest Server <server@localhost>', 'rsa2048', 'cert,sign', 'never')
        check('gpg server key', rc == 0, out)
        rc, out = gpg('--with-colons', '--list-secret-keys')
        server_fpr = [ln.split(':')[9] for ln in out.splitlines() if ln.startswith('fpr:')][0]
        rc, out = gpg('--pinentry-mode', 'loopback', '--passphrase', '', '-u', server_fpr,
                      '--ignore-time-conflict', '--edit-key', user.fpr, 'uid', '1', 'sign', 'save')
        check('gpg signs the uid as TE does (--edit-key uid 1 sign save)', rc == 0, out)
        p = subprocess.run(['gpg', '--batch', '--export', user.fpr], capture_output=True, env=env)
        signed = kp.Ring(p.stdout)
        p = subprocess.run(['gpg', '--batch', '--export', server_fpr], capture_output=True, env=env)
        server = kp.Ring(p.stdout)
        sigs = signed.uid_signatures()[0][1]
        check('signed ring: self-signature first, then a 0x10 by the server key that verifies',
              sigs[0].type == 0x13 and sigs[0].issuer == signed.primary.keyid and
              any(s.type == 0x10 and s.issuer == server.primary.keyid and
                  signed.verify_uid_sig(uid, s, server.primary) for s in sigs[1:]))
        bc = signed.encode_bc()
        exported = [(t, b) for t, b in kp.parse_packets(signed.raw) if t != kp.TAG_TRUST]
        check('BC re-framing: old-format headers only, the same packets in the same order',
              kp.parse_packets(bc) == exported and all_old_format(bc))
        cert2 = kp.bridge_certificate(kp.Ring(bc), user.rsa)
        check('login certificate carries the re-framed signed ring',
              kp.ring_from_certificate(cert2) == bc)
        gpg_dir2 = tempfile.mkdtemp(prefix='kontalk-gnupg-')
        env2 = dict(env, GNUPGHOME=gpg_dir2)
        p = subprocess.run(['gpg', '--batch', '--import'], input=server.raw, capture_output=True,
                           env=env2)
        p = subprocess.run(['gpg', '--batch', '--import'], input=bc, capture_output=True, env=env2)
        p = subprocess.run(['gpg', '--batch', '--check-signatures', user.fpr],
                           capture_output=True, env=env2)
        out = (p.stdout + p.stderr).decode('utf-8', 'replace')
        log('gpg', 'check re-framed', out)
        check('gpg --check-signatures on the re-framed signed ring: 4 good',
              '4 good signatures' in out and 'bad signature' not in out, out)
        subprocess.run(['rm', '-rf', gpg_dir2])

        def fresh_gpg():
            home = tempfile.mkdtemp(prefix='kontalk-gnupg-')
            homes.append(home)
            henv = dict(env, GNUPGHOME=home)

            def run(*argv, data=None):
                p = subprocess.run(['gpg', '--batch', '--no-tty', '--yes'] + list(argv),
                                   input=data, capture_output=True, env=henv, timeout=60)
                out = p.stdout.decode('utf-8', 'replace') + p.stderr.decode('utf-8', 'replace')
                log('gpg', ' '.join(argv), out)
                return p.returncode, out
            return run

        step('rollover')
        revoked = kp.revoked_key(signed, user.rsa)
        rv = kp.Ring(revoked)
        rsig = rv.direct[0] if rv.direct else None
        check('revoked key: primary, 0x20, uid, its signatures (0x13, 0x10 of the server), no '
              'subkeys, BC framing',
              [t for t, _b in kp.parse_packets(revoked)] == [6, 2, 13] + [2] * len(sigs) and
              rv.subkeys == [] and all_old_format(revoked) and rsig is not None and
              [sg.body for sg in rv.uid_signatures()[0][1]] == [sg.body for sg in sigs])
        check('0x20 by the primary, SHA-256, hashed creation time only, unhashed issuer only, '
              'verifies over the primary key alone',
              rsig.type == 0x20 and rsig.hashalgo == 8 and rsig.pubalgo == 1 and
              [k for k, _c, _d in rsig.hashed] == [kp.SUB_CREATION_TIME] and
              [k for k, _c, _d in rsig.unhashed] == [kp.SUB_ISSUER] and
              rsig.issuer == rv.primary.keyid and rv.revocations() == [rsig])
        run = fresh_gpg()
        rc, out = run('--import', data=revoked)
        check('gpg --import of the revoked key', rc == 0 and 'imported: 1' in out, out)
        rc, out = run('--with-colons', '--list-keys', user.fpr)
        check('gpg --list-keys: the key is revoked (pub:r)',
              rc == 0 and any(ln.startswith('pub:r:') for ln in out.splitlines()), out)
        rc, out = run('--list-keys', user.fpr)
        check('gpg --list-keys: [revoked: ...]', '[revoked: ' in out, out)
        for how in ('bad', 'none'):
            run = fresh_gpg()
            tampered = rollover_revoked(signed, user.rsa, how)
            run('--import', data=tampered)
            rc, out = run('--with-colons', '--list-keys', user.fpr)
            check('--revocation %s: gpg does not see the key revoked, nor does the parser' % how,
                  rc == 0 and any(ln.startswith('pub:') and not ln.startswith('pub:r:')
                                  for ln in out.splitlines()) and
                  not kp.Ring(tampered).revocations(), out)
        foreign = kp.Ring(rollover_revoked(signed, user.rsa, 'foreign'))
        check('--revocation foreign: another key, revoked',
              foreign.fpr != user.fpr and len(foreign.revocations()) == 1)
        new_key = kp.generate_user_key(name, jid)
        req = rollover_request('DOMAIN', 'ab12C-3', b64(new_key.ring_bytes), b64(revoked))
        check('rollover request as RegisterKeyPairListener writes it', req ==
              "<iq to='DOMAIN' id='ab12C-3' type='set'><query xmlns='jabber:iq:register'><x "
              "xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>"
              "http://kontalk.org/protocol/register#key</value></field><field label='Public key' "
              "var='publickey' type='text-single'><value>%s</value></field><field "
              "label='Revoked public key' var='revoked' type='text-single'><value>%s</value>"
              "</field></x></query></iq>" % (base64.b64encode(new_key.ring_bytes).decode(),
                                             base64.b64encode(revoked).decode()))
        parsed = form_fields(ET.fromstring(req).find('.//{%s}x' % NS_DATA))
        check('rollover request: one-line Base64 of the new unsigned ring and of the revoked '
              'key, the new uid is the old one',
              base64.b64decode(parsed['publickey'][1][0], validate=True) ==
              new_key.ring_bytes and base64.b64decode(parsed['revoked'][1][0], validate=True)
              == revoked and '\n' not in req and new_key.ring.user_ids() == signed.user_ids())

        step('backup')
        phrase = random_string(40)
        sec = kp.secret_ring(user.ring, [user.rsa] + user.sub_keys, phrase)
        spk = kp.parse_packets(sec)
        head = spk[0][1][kp.public_part_length(spk[0][1]):]
        check('secret ring: 5 uid 0x13 7 0x18 7 0x18, BC framing, public part = the ring',
              [t for t, _b in spk] == [5, 13, 2, 7, 2, 7, 2] and all_old_format(sec) and
              kp.public_of_secret_ring(sec).encode_bc() == user.ring_bytes)
        check('secret key protection: usage 254, AES-256, iterated+salted SHA-1 S2K, count 0x60',
              head[:4] == bytes([254, 9, 3, 2]) and head[12] == 0x60 and
              kp.s2k_count(0x60) == 65536)
        clear = kp.parse_packets(kp.secret_ring(user.ring, [user.rsa], None))
        check('without passphrase: usage 0 and the two-octet checksum, the primary only',
              [t for t, _b in clear] == [5, 13, 2] and
              clear[0][1][kp.public_part_length(clear[0][1])] == 0)
        run = fresh_gpg()
        rc, out = run('--import', data=sec)
        check('gpg --import of the secret ring', rc == 0 and 'secret keys imported: 1' in out, out)
        rc, out = run('--with-colons', '--list-secret-keys', user.fpr)
        check('gpg --list-secret-keys: sec and two ssb',
              rc == 0 and sum(ln.startswith('sec:') for ln in out.splitlines()) == 1 and
              sum(ln.startswith('ssb:') for ln in out.splitlines()) == 2, out)
        rc, out = run('--pinentry-mode', 'loopback', '--passphrase', 'wrong', '--quick-add-uid',
                      user.fpr, 'Backup Check <check@localhost>')
        check('a wrong passphrase does not unlock the primary (--quick-add-uid fails)',
              rc != 0, out)
        rc, out = run('--pinentry-mode', 'loopback', '--passphrase', phrase, '--quick-add-uid',
                      user.fpr, 'Backup Check <check@localhost>')
        rc2, out2 = run('--check-signatures', user.fpr)
        check('gpg decrypts the RSA primary with the passphrase: it certifies a new uid (the '
              'primary may certify, not sign), and the self-signature is good',
              rc == 0 and rc2 == 0 and 'Backup Check' in out2 and 'bad signature' not in out2
              and '4 good signatures' in out2, out + out2)
        rc, out = run('--pinentry-mode', 'loopback', '--passphrase', phrase, '--trust-model',
                      'always', '-r', user.fpr, '--output', os.path.join(work, 'enc.gpg'),
                      '--encrypt', data=b'backup')
        rc2, out2 = run('--pinentry-mode', 'loopback', '--passphrase', phrase, '--output', '-',
                        '--decrypt', os.path.join(work, 'enc.gpg'))
        check('gpg decrypts the ECDH subkey with the passphrase',
              rc == 0 and rc2 == 0 and 'backup' in out2, out + out2)
        check('backup request as PrivateKeyUploadListener writes it',
              backup_request('DOMAIN', 'ab12C-4', 'UFJJVg==') ==
              "<iq to='DOMAIN' id='ab12C-4' type='set'><query xmlns='jabber:iq:register'><x "
              "xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>"
              "http://kontalk.org/protocol/register#privatekey</value></field><field "
              "label='Private key' var='privatekey' type='text-single'><value>UFJJVg==</value>"
              "</field></x></query></iq>")

        step('restore')
        check('restore request as RegistrationService.createPrivateKeyRequest writes it',
              restore_request('DOMAIN', 'ab12C-7', '0123456789012345678901234567890123456789')
              == "<iq to='DOMAIN' id='ab12C-7' type='get'><query xmlns='jabber:iq:register'>"
              "<account xmlns='http://kontalk.org/protocol/register#account'><privatekey><token>"
              "0123456789012345678901234567890123456789</token></privatekey></account></query>"
              "</iq>")
        sample = ("<iq xmlns='jabber:client' to='prime.kontalk.net' type='result' id='a'>"
                  "<query xmlns='jabber:iq:register'><account xmlns='%s'><privatekey>"
                  "<private>Y2lhbw==</private><public>emlv</public></privatekey></account>"
                  "</query></iq>" % NS_ACCOUNT)
        check('restore reply read as CC AccountTest.testFromXml reads it',
              restore_reply(ET.fromstring(sample)) == (b'ciao', b'zio'))
        check('restore reply without <public/>: nothing (the client reports "Server did not '
              'reply with key.")', restore_reply(ET.fromstring(
                  sample.replace('<public>emlv</public>', ''))) is None)
        check('RESTORED-SECRET: the public ring of the secret ring',
              kp.public_of_secret_ring(sec).fpr == user.fpr)

        step('tampering')
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        bad = kp.bridge_certificate(ring, user.rsa, cert_key=other)
        cb = x509.load_der_x509_certificate(bad)
        check('cert-key: SPKI differs from the PGP key, the extension keeps the ring',
              cb.public_key().public_numbers() != user.rsa.public_key().public_numbers() and
              kp.ring_from_certificate(bad) == user.ring_bytes)

        step('bytes')
        check('stream open', stream_open('localhost') ==
              "<stream:stream xmlns='jabber:client' to='localhost' xmlns:stream="
              "'http://etherx.jabber.org/streams' version='1.0' xml:lang='en'>")
        check('step A', instructions_request('beta.kontalk.net', 'ab12C-1') ==
              "<iq to='beta.kontalk.net' id='ab12C-1' type='get'><query "
              "xmlns='jabber:iq:register'></query></iq>")
        check('step B as in KONTALK.md', phone_request('beta.kontalk.net', 'ab12C-5', phone, True,
                                                       True) ==
              "<iq to='beta.kontalk.net' id='ab12C-5' type='set'><query xmlns='jabber:iq:register'>"
              "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>"
              "jabber:iq:register</value></field><field var='phone' type='text-single'><value>"
              "+15555215554</value></field><field var='accept-terms' type='boolean'><value>true"
              "</value></field><field var='force' type='boolean'><value>true</value></field>"
              "<field var='challenge' type='text-single'><value>pin</value></field></x></query>"
              "</iq>")
        check('step C as in KONTALK.md', code_request('DOMAIN', 'ab12C-9', '123456') ==
              "<iq to='DOMAIN' id='ab12C-9' type='set'><query xmlns='jabber:iq:register'><x "
              "xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>"
              "http://kontalk.org/protocol/register#code</value></field><field label='Validation "
              "code' var='code' type='text-single'><value>123456</value></field></x></query></iq>")
        check('serverlist with the duplicated xmlns', serverlist_request('DOMAIN', 'x1') ==
              "<iq to='network@DOMAIN' id='x1' type='set'><command xmlns='http://jabber.org/"
              "protocol/commands' xmlns='http://jabber.org/protocol/commands' node='serverlist' "
              "action='execute'/></iq>")
        check('presence', presence_xml('p-1', caps=True) ==
              "<presence id='p-1'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
              "node='http://www.kontalk.org/' ver='none'/></presence>")
        check('escaping', chat_message_xml("a'b@x", 'i', '<&>"\'') ==
              "<message to='a&apos;b@x' id='i' type='chat'><body>&lt;&amp;&gt;&quot;&apos;</body>"
              "<active xmlns='http://jabber.org/protocol/chatstates'/><request "
              "xmlns='urn:xmpp:receipts'/></message>")

        step('xml reader')
        s = Stream(argparse.Namespace(host='', port=0, domain='localhost'), 'selftest')
        s.reset_parser()
        feed = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream="
                "'http://etherx.jabber.org/streams' id='s1' from='localhost' version='1.0'>"
                "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>"
                "EXTERNAL</mechanism></mechanisms></stream:features><message from='a@b/c'><body>"
                "h\u00e9</body></message><r xmlns='urn:xmpp:sm:3'/></stream:stream>").encode()
        chunks = [feed[i:i + 7] for i in range(0, len(feed), 7)]

        class FakeSock:
            def settimeout(self, _t):
                pass

            def recv(self, _n):
                return chunks.pop(0) if chunks else b''
        s.sock = FakeSock()
        got = []
        while not s.closed:
            try:
                s._pump(time.monotonic() + 5, 'x')
            except Failure:
                break
            got.extend(s.elements)
            s.elements = []
        check('incremental reader: header, features, message, nonza, close',
              s.header and s.header.get('id') == 's1' and [g.tag for g in got] ==
              ['{%s}features' % NS_STREAM, '{jabber:client}message', '{urn:xmpp:sm:3}r'] and
              has_mechanisms(got[0]) == ['EXTERNAL'] and
              got[1].find('{jabber:client}body').text == 'h\u00e9' and s.closed)
    finally:
        for home in [gpg_dir] + homes:
            subprocess.run(['gpgconf', '--kill', 'all'], env=dict(os.environ, GNUPGHOME=home),
                           capture_output=True)
        subprocess.run(['rm', '-rf', gpg_dir, work] + homes)


def all_old_format(data):
    """True if every packet header in `data` is old-format (what BC writes)."""
    pos = 0
    while pos < len(data):
        ctb = data[pos]
        if ctb & 0x40:
            return False
        ltype = ctb & 3
        size = {0: 1, 1: 2, 2: 4}[ltype]
        pos += 1 + size + int.from_bytes(data[pos + 1:pos + 1 + size], 'big')
    return pos == len(data)


def tls_handshake_check(cert, rsa_key, version, work):
    """A TLS handshake presenting `cert` to `openssl s_server -verify 1` on a loopback port;
    returns the DER of the certificate the server printed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')])
    now = datetime.datetime.now(datetime.timezone.utc)
    srv = (x509.CertificateBuilder().subject_name(name).issuer_name(name).serial_number(2)
           .not_valid_before(now - datetime.timedelta(minutes=1))
           .not_valid_after(now + datetime.timedelta(hours=1)).public_key(key.public_key())
           .sign(key, hashes.SHA256()))
    cpath, kpath = os.path.join(work, 'srv.pem'), os.path.join(work, 'srvkey.pem')
    with open(cpath, 'wb') as f:
        f.write(srv.public_bytes(serialization.Encoding.PEM))
    with open(kpath, 'wb') as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    probe = socket.socket()
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen(['openssl', 's_server', '-accept', '127.0.0.1:%d' % port,
                             '-cert', cpath, '-key', kpath, '-verify', '1', '-naccept', '1',
                             '-tls1_3' if version == '1.3' else '-tls1_2'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        sock = None
        for _ in range(50):
            try:
                sock = socket.create_connection(('127.0.0.1', port), timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        if sock is None:
            raise Failure('selftest: openssl s_server did not start')
        ctx = client_tls_context(cert, rsa_key)
        tls = ctx.wrap_socket(sock, server_hostname='localhost')
        tls.sendall(b'Q\n')
        time.sleep(0.3)
        tls.close()
        out = proc.communicate(timeout=10)[0].decode('utf-8', 'replace')
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log('openssl', 's_server', out)
    m = re.search(r'-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----', out, re.S)
    if not m:
        raise Failure('selftest: s_server printed no client certificate: %s' % one_line(out))
    return base64.b64decode(''.join(m.group(1).split()))


# -- command line -----------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """Usage errors end the run like any failure: RESULT fail, exit 1 (argparse's exit 2 is
    this tool's SASL failure)."""

    def error(self, message):
        raise Failure('usage: %s: %s' % (self.prog, message))


def global_parser():
    p = Parser(prog='kontalk_client.py', add_help=True,
               description='Kontalk Android client emulator (see the docstring)')
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=None)
    p.add_argument('--domain', default='localhost')
    p.add_argument('--state', default=None)
    p.add_argument('--timeout', type=float, default=60.0)
    p.add_argument('--tamper', action='append', default=[], choices=TAMPERS)
    p.add_argument('--script', default=None)
    p.add_argument('--quiet', action='store_true')
    return p


def command_parsers():
    ps = {}

    def new(name):
        p = Parser(prog=name, add_help=False)
        ps[name] = p
        return p

    p = new('register')
    p.add_argument('--phone', required=True)
    p.add_argument('--code-file', default=None)
    p.add_argument('--code', default=None)
    p.add_argument('--code-wait', type=float, default=10.0)
    p.add_argument('--name', default='Kontalk Test')
    p.add_argument('--force', action='store_true')
    p.add_argument('--fallback', action='store_true')
    p.add_argument('--challenge', default='pin')
    p.add_argument('--reuse-key', action='store_true')
    p.add_argument('--uid-domain', default=None)
    p.add_argument('--subkeys', choices=('client', 'rfc', 'none'), default='client')
    p.add_argument('--tamper', action='append', default=[], choices=TAMPERS)
    p = new('login')
    p.add_argument('--expect-fail', action='store_true')
    p.add_argument('--tamper', action='append', default=[], choices=TAMPERS)
    p.add_argument('--resource', default=None)
    p.add_argument('--status', default=None)
    p.add_argument('--show', default=None)
    p = new('upload')
    p.add_argument('--size', type=int, required=True)
    p.add_argument('--filename', default='IMG_0001.jpg')
    p.add_argument('--content-type', default='image/jpeg')
    p.add_argument('--to', default=None)
    p.add_argument('--put-size', type=int, default=None)
    p.add_argument('--put-type', default=None)
    p.add_argument('--expect-status', type=int, default=None)
    p.add_argument('--expect-error', default=None)
    p = new('chat')
    p.add_argument('--to', required=True)
    p.add_argument('--body', required=True)
    p.add_argument('--id', default=None)
    p.add_argument('--wait-receipt', action='store_true')
    p.add_argument('--receipt-timeout', type=float, default=10.0)
    p = new('listen')
    p.add_argument('--count', type=int, required=True)
    p.add_argument('--wait', type=float, default=10.0)
    p.add_argument('--download', action='store_true')
    p.add_argument('--accept-subscriptions', action='store_true')
    p.add_argument('--no-receipts', action='store_true')
    p = new('subscribe')
    p.add_argument('--to', required=True)
    p.add_argument('--wait-subscribed', action='store_true')
    p.add_argument('--wait', type=float, default=10.0)
    p = new('pubkey')
    p.add_argument('--of', required=True)
    p.add_argument('--expect-error', default=None)
    p = new('match')
    p.add_argument('--jids', required=True)
    p.add_argument('--wait', type=float, default=20.0)
    p.add_argument('--expect-error', default=None)
    p = new('serverlist')
    p.add_argument('--expect-error', default=None)
    p = new('group')
    p.add_argument('--to', required=True)
    p.add_argument('--body', required=True)
    p.add_argument('--group-id', default=None)
    p.add_argument('--owner', default=None)
    p.add_argument('--create', action='store_true')
    p.add_argument('--subject', default=None)
    p = new('wait')
    p.add_argument('--seconds', type=float, required=True)
    p.add_argument('--accept-subscriptions', action='store_true')
    p.add_argument('--no-receipts', action='store_true')
    p = new('rollover')
    p.add_argument('--subkeys', choices=('client', 'rfc', 'none'), default='client')
    p.add_argument('--revocation', choices=('good', 'none', 'bad', 'foreign'), default='good')
    p.add_argument('--expect-error', default=None)
    p = new('backup')
    p.add_argument('--format', choices=('pgp', 'pem'), default='pgp')
    p.add_argument('--passphrase', default=None)
    p.add_argument('--expect-error', default=None)
    p = new('restore')
    p.add_argument('--token', required=True)
    p.add_argument('--expect-error', default=None)
    new('selftest')
    p = new('bench-keys')
    p.add_argument('--out', required=True)
    p.add_argument('--count', type=int, required=True)
    p.add_argument('--first-phone', default='+15555210000')
    p = new('bench-certs')
    p.add_argument('--dir', required=True)
    return ps


def takes_value(parser, token):
    """True if `token` is an option of `parser` that needs a value after it."""
    if not token.startswith('-') or '=' in token:
        return False
    action = parser._option_string_actions.get(token)
    return action is not None and action.nargs != 0


def split_commands(tokens, gparser, cparsers):
    """(global tokens, [(command, tokens)]): a command name starts a new segment unless it is the
    value of the option before it."""
    head, segments = [], []
    current, parser = head, gparser
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else ''
        if tok in cparsers and not takes_value(parser, prev):
            segments.append((tok, []))
            current, parser = segments[-1][1], cparsers[tok]
        else:
            current.append(tok)
    return head, segments


def parse(argv):
    gparser = global_parser()
    cparsers = command_parsers()
    head, segments = split_commands(argv, gparser, cparsers)
    args = gparser.parse_args(head)
    if args.script:
        with open(args.script) as f:
            extra = []
            for line in f:
                line = line.strip()
                if line and not line.startswith('#'):
                    extra.extend(shlex.split(line))
        _h, more = split_commands(extra, Parser(), cparsers)
        if _h:
            gparser.error('script lines must start with a command: %s' % _h)
        segments.extend(more)
    if not segments:
        gparser.error('no command (register, login, chat, listen, subscribe, pubkey, match, '
                      'serverlist, group, wait, rollover, backup, restore, selftest, '
                      'bench-keys, bench-certs)')
    commands = [(name, cparsers[name].parse_args(toks)) for name, toks in segments]
    return args, commands


def main(argv=None):
    global QUIET
    try:
        args, commands = parse(sys.argv[1:] if argv is None else argv)
    except Failure as e:
        say('RESULT fail %s' % one_line(e.why))
        return EXIT_ERROR
    QUIET = args.quiet
    code, why = EXIT_OK, None
    session = None

    def on_alarm(_sig, _frame):
        raise Failure('timeout after %ss' % args.timeout)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    try:
        names = [n for n, _ in commands]
        offline = {'selftest': selftest, 'bench-keys': bench_keys, 'bench-certs': bench_certs}
        if set(names) & set(offline):
            if len(names) != 1:
                raise Failure('%s runs alone' % next(n for n in names if n in offline))
            if names[0] == 'selftest':
                selftest(args)
            else:
                offline[names[0]](args, commands[0][1])
        else:
            if args.port is None:
                raise Failure('--port is needed')
            state = State(args.state) if args.state or set(names) != {'restore'} else None
            for name, a in commands:
                if name == 'restore':
                    restore(args, state, a)
                    continue
                if name == 'register':
                    if session is not None:
                        raise Failure('register must come before login')
                    Registration(args, state).run(a)
                    continue
                if session is None:
                    session = Session(args, state)
                    la = a if name == 'login' else command_parsers()['login'].parse_args([])
                    if session.login(la) == 'expected-failure':
                        session = None
                        if commands[-1][0] != 'login':
                            raise Failure('the login failed as expected; nothing more can run')
                        break
                    if name == 'login':
                        continue
                elif name == 'login':
                    raise Failure('already logged in')
                getattr(session, name)(a)
    except Failure as e:
        code, why = e.code, e.why
    except IqError as e:
        e.report()
        code, why = EXIT_ERROR, 'iq error %s' % e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if session is not None:
        try:
            session.close()
        except Failure:
            pass
        except Exception:
            pass
    say('RESULT ok' if code == EXIT_OK else 'RESULT fail %s' % one_line(why))
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == '__main__':
    sys.exit(main())
