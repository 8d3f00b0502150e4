#!/usr/bin/env python3
"""HTTP file upload (XEP-0363) with slixmpp's xep_0363 plugin (aiohttp underneath): A finds the
service among the domain's disco items, uploads a file over HTTPS, and sends its URL to B in a
jabber:x:oob message; B downloads it whole, by a range and by HEAD, checking its bytes and type.
Then the refusals: a file over the advertised limit gets no slot, and PUTs that differ from
their slot (size, type, a second PUT, a forged token) get their HTTP error.

    upload.py --port 5222 --jid-a alice@localhost --password-a pa --jid-b bob@localhost \\
        --password-b pb --ca data/tls/cert.pem --size 300000

--ca: the server's certificate, which aiohttp checks the HTTPS listener against.

Prints the lines of xmpptest.py (STEP ..., RESULT ...), and UPLOADED <url>, DOWNLOADED <bytes>,
REFUSED <what> <status or condition>.
"""

import asyncio
import hashlib
import os
import ssl
import tempfile
import uuid

import aiohttp
from slixmpp.exceptions import IqError

from xmpptest import TestClient, pair_parser, run, say, setup_logging, step, until


def main():
    p = pair_parser(__doc__)
    p.add_argument('--ca', required=True)
    p.add_argument('--size', type=int, default=300000)
    args = p.parse_args()
    setup_logging(args)
    tls = ssl.create_default_context(cafile=args.ca)

    async def http(method, url, data=None, headers=None):
        async with aiohttp.ClientSession() as session:
            async with session.request(method, url, data=data, headers=headers or {},
                                       ssl=tls) as resp:
                return resp.status, resp.headers, await resp.read()

    async def flow():
        a = TestClient(args.jid_a, args.password_a, args, plugins=['xep_0363', 'xep_0066'])
        b = TestClient(args.jid_b, args.password_b, args, plugins=['xep_0066'])
        await asyncio.gather(a.start(), b.start())
        data = os.urandom(args.size)
        upload = a.plugin['xep_0363']

        step('A uploads a file with xep_0363 (the service found by disco)')
        with tempfile.NamedTemporaryFile(suffix='.png') as f:
            f.write(data)
            f.flush()
            url = await upload.upload_file(f.name, content_type='image/png', timeout=30)
        say('UPLOADED', url)
        assert str(upload.upload_service) == 'media.' + a.boundjid.domain, upload.upload_service
        assert url.startswith('https://'), url

        step('A sends the URL in jabber:x:oob; B receives it')
        tag = uuid.uuid4().hex[:8]
        msg = a.make_message(mto=args.jid_b, mbody=url, mtype='chat')
        msg['oob']['url'] = url
        msg['oob']['desc'] = 'photo %s' % tag
        msg.send()
        got = await b.expect('message', 'the URL', lambda m: m['oob']['url'] == url)
        assert got['body'] == url, got

        step('B downloads it: whole, a range, its headers')
        status, headers, body = await http('GET', url)
        assert status == 200, status
        assert body == data, 'downloaded %d bytes, not the %d uploaded' % (len(body), len(data))
        assert headers['Content-Type'] == 'image/png', headers
        say('DOWNLOADED', len(body), hashlib.sha256(body).hexdigest())
        status, headers, body = await http('GET', url, headers={'Range': 'bytes=1000-1999'})
        assert status == 206 and body == data[1000:2000], (status, len(body))
        assert headers['Content-Range'] == 'bytes 1000-1999/%d' % len(data), headers
        status, headers, body = await http('HEAD', url)
        assert status == 200 and int(headers['Content-Length']) == len(data), (status, headers)
        assert body == b'', body

        step('a file over the limit gets no slot')
        info = await a.plugin['xep_0030'].get_info(upload.upload_service)
        limit = None
        for form in info['disco_info'].iterables:
            values = form['values']
            if values['FORM_TYPE'] == ['urn:xmpp:http:upload:0']:
                limit = int(values['max-file-size'])
        assert limit is not None, 'no max-file-size advertised'
        try:
            await upload.request_slot(upload.upload_service, 'big.bin', limit + 1,
                                      'application/octet-stream', timeout=10)
            raise AssertionError('a slot for %d bytes over a limit of %d' % (limit + 1, limit))
        except IqError as e:
            condition = e.iq['error']['condition']
            assert condition == 'not-acceptable', condition
            too_large = e.iq['error'].xml.find('{urn:xmpp:http:upload:0}file-too-large')
            assert too_large is not None, str(e.iq)
            say('REFUSED', 'too-large', condition)

        step('PUTs that differ from their slot are refused, and nothing is served')
        slot = await upload.request_slot(upload.upload_service, 'note.txt', 10, 'text/plain',
                                         timeout=10)
        put = slot['http_upload_slot']['put']['url']
        get = slot['http_upload_slot']['get']['url']
        for what, body, ctype, want in [
            ('longer', b'x' * 11, 'text/plain', 413),
            ('shorter', b'x' * 9, 'text/plain', 400),
            ('other-type', b'x' * 10, 'image/png', 415),
        ]:
            status, _h, _b = await http('PUT', put, data=body, headers={'Content-Type': ctype})
            assert status == want, '%s: %d, not %d' % (what, status, want)
            say('REFUSED', what, status)
        status, _h, _b = await http('GET', get)
        assert status == 404, 'nothing uploaded yet: %d' % status
        token = put.split('/upload/')[1].split('/')[0]
        forged = put.replace(token, ('0' if token[0] != '0' else '1') + token[1:])
        status, _h, _b = await http('PUT', forged, data=b'x' * 10,
                                    headers={'Content-Type': 'text/plain'})
        assert status == 403, 'forged token: %d' % status
        say('REFUSED', 'forged', status)
        status, _h, _b = await http('PUT', put, data=b'0123456789',
                                    headers={'Content-Type': 'text/plain'})
        assert status == 201, 'the right PUT after the wrong ones: %d' % status
        status, _h, _b = await http('PUT', put, data=b'0123456789',
                                    headers={'Content-Type': 'text/plain'})
        assert status == 409, 'a second PUT: %d' % status
        say('REFUSED', 'again', status)
        status, _h, body = await http('GET', get)
        assert status == 200 and body == b'0123456789', (status, body)
        await asyncio.gather(a.close(), b.close())

    run(flow, args)


if __name__ == '__main__':
    main()
