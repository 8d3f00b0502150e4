"""OpenPGP keys and the X.509 "bridge" certificate of the Kontalk Android client, in plain Python
(only `cryptography` from PyPI; no OpenPGP library).

What is built here, and why (the numbers are sections of shared/KONTALK.md):

* The user key the way the client's PGP.store makes it (section 2 "Keys"): a v4 RSA-2048 primary
  (algorithm 1) with one user id "NAME <sha1hex(E.164)@DOMAIN>" and a 0x13 positive self-signature
  made with SHA-256 whose hashed subpackets are signature creation time, key flags 0x21
  (certify + authenticate) and primary user id, plus the issuer fingerprint; the issuer key id is
  unhashed, as Bouncy Castle writes it. Optional subkeys as the client makes them: ECDSA P-256
  (flags 0x02, binding signature with an embedded 0x19 back-signature) and ECDH P-256 (flags 0x04,
  KDF SHA-256/AES-128). The client's back-signature comes from BC's one-key
  `generateCertification(primary)`, so it hashes the primary key only (not primary + subkey as
  RFC 4880 wants); `subkeys='client'` reproduces that, `subkeys='rfc'` makes a standard one.
* Packets are framed the way BC's `getEncoded()` frames them: old-format headers with the shortest
  length field. A ring received from the server is re-framed the same way and its subkeys put in
  the client's order (signing subkey, then encryption subkey), because the client rebuilds the ring
  (PersonalKey.update / getEncodedPublicKeyRing) before it puts it in the certificate.
* The bridge certificate (section 2 "Certificate"), signed with sha1WithRSAEncryption by swapping
  the signature OID in a SHA-256 TBS and re-signing it (section 2 "Python recipe", step 3).
* The key rollover's "revoked" key (section 1 "Other forms"), as PGP.revokeKey and BC's
  PGPPublicKey.getEncoded make it: the primary key packet, its direct signatures then a 0x20 key
  revocation by the primary itself (SHA-256 over the primary key only; hashed: creation time,
  unhashed: issuer key id, what BC's PGPSignatureGenerator adds by itself), then the user ids with
  their signatures (the server's certification included); no subkeys (a PGPPublicKey, not a ring).
* The secret key ring the client keeps and uploads as its private key backup
  (PGPSecretKeyRing.getEncoded): secret key packets (tags 5 and 7) protected as the client's
  PGP.store protects them (S2K usage 254 = SHA-1 check, AES-256, iterated and salted SHA-1 S2K
  with BC's default count byte 0x60, CFB with a random IV), each followed by the signatures and user
  ids of its public key.
"""

import hashlib
import os
import struct
import time
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (decode_dss_signature,
                                                             encode_dss_signature)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
try:  # cryptography >= 47 keeps CFB among the "decrepit" modes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:
    from cryptography.hazmat.primitives.ciphers.modes import CFB
from cryptography.x509.oid import NameOID

# -- constants --------------------------------------------------------------------------------

TAG_SIGNATURE = 2
TAG_SECRET_KEY = 5
TAG_PUBLIC_KEY = 6
TAG_SECRET_SUBKEY = 7
TAG_TRUST = 12
TAG_USER_ID = 13
TAG_PUBLIC_SUBKEY = 14
TAG_USER_ATTRIBUTE = 17

ALGO_RSA = 1
ALGO_ECDH = 18
ALGO_ECDSA = 19
HASH_SHA1 = 2
HASH_SHA256 = 8
HASHES = {1: 'md5', 2: 'sha1', 3: 'ripemd160', 8: 'sha256', 9: 'sha384', 10: 'sha512', 11: 'sha224'}

SIG_POSITIVE = 0x13
SIG_SUBKEY_BINDING = 0x18
SIG_PRIMARY_BINDING = 0x19
SIG_KEY_REVOCATION = 0x20

SYM_AES256 = 9
S2K_ITERATED_SALTED = 3
S2K_USAGE_SHA1 = 254
S2K_COUNT_BC = 0x60   # BC's default for JcePBESecretKeyEncryptorBuilder: 65536 octets

SUB_CREATION_TIME = 2
SUB_KEY_EXPIRATION = 9
SUB_ISSUER = 16
SUB_PRIMARY_UID = 25
SUB_KEY_FLAGS = 27
SUB_EMBEDDED_SIG = 32
SUB_ISSUER_FPR = 33

FLAG_CERTIFY = 0x01
FLAG_SIGN = 0x02
FLAG_ENCRYPT_COMMS = 0x04
FLAG_ENCRYPT_STORAGE = 0x08
FLAG_AUTHENTICATE = 0x20

P256_OID = bytes.fromhex('2a8648ce3d030107')

# The certificate's OpenPGP extension (UUID 24e844a0-6cbc-11e3-8997-0002a5d5c51b as a 2.25 OID).
PGP_EXT_OID = '2.25.49058212633447845622587297037800555803'
PGP_EXT_OID_DER = bytes.fromhex('0613' '69c9e8a2a88dcbe0c7c789cbc080aaaed78a1b')
NETSCAPE_CERT_TYPE_OID = '2.16.840.1.113730.1.1'
XMPP_ADDR_OID_DER = bytes.fromhex('0608' '2b06010505070805')
SHA256_RSA_OID_DER = bytes.fromhex('06092a864886f70d01010b')
SHA1_RSA_OID_DER = bytes.fromhex('06092a864886f70d010105')


class PGPError(Exception):
    pass


# -- low-level encoding -----------------------------------------------------------------------

def mpi(n):
    """An OpenPGP multiprecision integer: bit count (2 bytes) then the big-endian bytes."""
    if n == 0:
        return b'\x00\x00'
    bits = n.bit_length()
    return struct.pack('>H', bits) + n.to_bytes((bits + 7) // 8, 'big')


def read_mpi(data, pos):
    """(integer, new position) of the MPI at `pos`."""
    if pos + 2 > len(data):
        raise PGPError('truncated MPI')
    bits = struct.unpack_from('>H', data, pos)[0]
    size = (bits + 7) // 8
    if pos + 2 + size > len(data):
        raise PGPError('truncated MPI')
    return int.from_bytes(data[pos + 2:pos + 2 + size], 'big'), pos + 2 + size


def packet(tag, body):
    """A packet framed as Bouncy Castle frames it: old format with the shortest length field for
    tags below 16, new format (one-, two- or five-byte length) otherwise."""
    n = len(body)
    if tag < 16:
        hdr = 0x80 | (tag << 2)
        if n <= 0xff:
            return bytes([hdr, n]) + body
        if n <= 0xffff:
            return bytes([hdr | 1]) + struct.pack('>H', n) + body
        return bytes([hdr | 2]) + struct.pack('>I', n) + body
    return bytes([0xc0 | tag]) + new_length(n) + body


def new_length(n):
    if n < 192:
        return bytes([n])
    if n < 8384:
        n -= 192
        return bytes([(n >> 8) + 192, n & 0xff])
    return b'\xff' + struct.pack('>I', n)


def parse_packets(data):
    """[(tag, body)] of a binary OpenPGP packet sequence, old and new headers, partial lengths."""
    out = []
    pos = 0
    while pos < len(data):
        ctb = data[pos]
        pos += 1
        if not ctb & 0x80:
            raise PGPError('not an OpenPGP packet at offset %d (0x%02x)' % (pos - 1, ctb))
        if ctb & 0x40:  # new format
            tag = ctb & 0x3f
            body = b''
            while True:
                if pos >= len(data):
                    raise PGPError('truncated packet header')
                first = data[pos]
                if first < 192:
                    n, pos = first, pos + 1
                elif first < 224:
                    n, pos = ((first - 192) << 8) + data[pos + 1] + 192, pos + 2
                elif first == 255:
                    n, pos = struct.unpack_from('>I', data, pos + 1)[0], pos + 5
                else:  # partial body length
                    n = 1 << (first & 0x1f)
                    body += data[pos + 1:pos + 1 + n]
                    pos += 1 + n
                    continue
                body += data[pos:pos + n]
                pos += n
                break
        else:
            tag = (ctb >> 2) & 0x0f
            ltype = ctb & 3
            if ltype == 3:
                n = len(data) - pos
            else:
                size = (1, 2, 4)[ltype]
                n = int.from_bytes(data[pos:pos + size], 'big')
                pos += size
            body = data[pos:pos + n]
            pos += n
        if pos > len(data):
            raise PGPError('truncated packet (tag %d)' % tag)
        out.append((tag, bytes(body)))
    return out


def subpacket(kind, data, critical=False):
    body = bytes([kind | (0x80 if critical else 0)]) + data
    return new_length(len(body)) + body


def parse_subpackets(data):
    """[(type, critical, data)]."""
    out = []
    pos = 0
    while pos < len(data):
        first = data[pos]
        if first < 192:
            n, pos = first, pos + 1
        elif first < 255:
            n, pos = ((first - 192) << 8) + data[pos + 1] + 192, pos + 2
        else:
            n, pos = struct.unpack_from('>I', data, pos + 1)[0], pos + 5
        if n == 0 or pos + n > len(data):
            raise PGPError('bad subpacket length')
        out.append((data[pos] & 0x7f, bool(data[pos] & 0x80), data[pos + 1:pos + n]))
        pos += n
    return out


# -- keys -------------------------------------------------------------------------------------

class PublicKey:
    """A v4 public key or subkey packet body."""

    def __init__(self, body):
        self.body = body
        if len(body) < 6 or body[0] != 4:
            raise PGPError('unsupported key packet version %s' % (body[:1].hex() or 'none'))
        self.created = struct.unpack_from('>I', body, 1)[0]
        self.algo = body[5]
        self.rsa_n = self.rsa_e = None
        if self.algo in (1, 2, 3):
            self.rsa_n, pos = read_mpi(body, 6)
            self.rsa_e, pos = read_mpi(body, pos)
        self.fingerprint = hashlib.sha1(b'\x99' + struct.pack('>H', len(body)) + body).digest()

    @property
    def fpr(self):
        """Upper-case hex v4 fingerprint."""
        return self.fingerprint.hex().upper()

    @property
    def keyid(self):
        return self.fingerprint[-8:]

    def hash_prefix(self):
        return b'\x99' + struct.pack('>H', len(self.body)) + self.body

    def rsa_public(self):
        if self.rsa_n is None:
            raise PGPError('not an RSA key (algorithm %d)' % self.algo)
        return rsa.RSAPublicNumbers(self.rsa_e, self.rsa_n).public_key()

    def ec_public(self):
        """The P-256 public key of an ECDSA/ECDH key packet."""
        n = self.body[6]
        oid = self.body[7:7 + n]
        if oid != P256_OID:
            raise PGPError('unsupported curve %s' % oid.hex())
        point, _ = read_mpi(self.body, 7 + n)
        raw = point.to_bytes(65, 'big')
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)


def rsa_key_body(created, key):
    nums = key.public_key().public_numbers()
    return bytes([4]) + struct.pack('>I', created) + bytes([ALGO_RSA]) + mpi(nums.n) + mpi(nums.e)


def ec_key_body(created, algo, key):
    point = key.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    body = bytes([4]) + struct.pack('>I', created) + bytes([algo])
    body += bytes([len(P256_OID)]) + P256_OID + mpi(int.from_bytes(point, 'big'))
    if algo == ALGO_ECDH:
        body += bytes([3, 1, HASH_SHA256, 7])  # KDF: SHA-256, AES-128 (BC's default for P-256)
    return body


# -- signatures -------------------------------------------------------------------------------

class Signature:
    """A v4 signature packet body, parsed."""

    def __init__(self, body):
        self.body = body
        if len(body) < 6 or body[0] != 4:
            raise PGPError('unsupported signature version %s' % (body[:1].hex() or 'none'))
        self.type = body[1]
        self.pubalgo = body[2]
        self.hashalgo = body[3]
        hlen = struct.unpack_from('>H', body, 4)[0]
        self.hashed_raw = body[6:6 + hlen]
        pos = 6 + hlen
        ulen = struct.unpack_from('>H', body, pos)[0]
        self.unhashed_raw = body[pos + 2:pos + 2 + ulen]
        pos += 2 + ulen
        self.left16 = body[pos:pos + 2]
        self.mpis = []
        pos += 2
        while pos < len(body):
            value, pos = read_mpi(body, pos)
            self.mpis.append(value)
        self.hashed = parse_subpackets(self.hashed_raw)
        self.unhashed = parse_subpackets(self.unhashed_raw)

    def sub(self, kind, hashed_only=False):
        for k, _c, data in self.hashed + ([] if hashed_only else self.unhashed):
            if k == kind:
                return data
        return None

    @property
    def issuer(self):
        """Issuer key id (bytes), from the issuer or the issuer-fingerprint subpacket."""
        data = self.sub(SUB_ISSUER)
        if data is not None:
            return data
        fpr = self.sub(SUB_ISSUER_FPR)
        if fpr is not None and len(fpr) == 21:
            return fpr[-8:]
        return None

    @property
    def created(self):
        data = self.sub(SUB_CREATION_TIME, hashed_only=True)
        return struct.unpack('>I', data)[0] if data and len(data) == 4 else None

    @property
    def key_flags(self):
        data = self.sub(SUB_KEY_FLAGS, hashed_only=True)
        return data[0] if data else None

    @property
    def key_expiration(self):
        data = self.sub(SUB_KEY_EXPIRATION, hashed_only=True)
        return struct.unpack('>I', data)[0] if data and len(data) == 4 else None

    def trailer(self):
        """What the signature hashes after the signed data (RFC 4880 5.2.4)."""
        head = self.body[:6 + len(self.hashed_raw)]
        return head + b'\x04\xff' + struct.pack('>I', len(head))

    def verify(self, signer, data):
        """True if the signature over `data` (the key/uid prefix) verifies with `signer`
        (a PublicKey). RSA and ECDSA P-256."""
        name = HASHES.get(self.hashalgo)
        if name is None:
            return False
        full = data + self.trailer()
        digest = hashlib.new(name, full).digest()
        if digest[:2] != self.left16:
            return False
        algo = {'sha1': hashes.SHA1(), 'sha256': hashes.SHA256(), 'sha384': hashes.SHA384(),
                'sha512': hashes.SHA512(), 'sha224': hashes.SHA224()}.get(name)
        if algo is None:
            return False
        try:
            if signer.algo in (1, 2, 3):
                size = (signer.rsa_n.bit_length() + 7) // 8
                sig = self.mpis[0].to_bytes(size, 'big')
                signer.rsa_public().verify(sig, full, padding.PKCS1v15(), algo)
            elif signer.algo == ALGO_ECDSA:
                sig = encode_dss_signature(self.mpis[0], self.mpis[1])
                signer.ec_public().verify(sig, full, ec.ECDSA(algo))
            else:
                return False
        except Exception:  # InvalidSignature and malformed values alike
            return False
        return True


def make_signature(sig_type, signer_key, signer_pub, data, hashed_subs, unhashed_subs):
    """A v4 signature packet body over `data` (the key/uid prefix), SHA-256, by `signer_key`
    (a cryptography RSA or EC private key; `signer_pub` its PublicKey)."""
    hashed = b''.join(hashed_subs)
    unhashed = b''.join(unhashed_subs)
    algo = ALGO_RSA if isinstance(signer_key, rsa.RSAPrivateKey) else ALGO_ECDSA
    head = bytes([4, sig_type, algo, HASH_SHA256]) + struct.pack('>H', len(hashed)) + hashed
    full = data + head + b'\x04\xff' + struct.pack('>I', len(head))
    digest = hashlib.sha256(full).digest()
    if algo == ALGO_RSA:
        sig = signer_key.sign(full, padding.PKCS1v15(), hashes.SHA256())
        values = mpi(int.from_bytes(sig, 'big'))
    else:
        r, s = decode_dss_signature(signer_key.sign(full, ec.ECDSA(hashes.SHA256())))
        values = mpi(r) + mpi(s)
    return head + struct.pack('>H', len(unhashed)) + unhashed + digest[:2] + values


def uid_prefix(uid_bytes):
    return b'\xb4' + struct.pack('>I', len(uid_bytes)) + uid_bytes


# -- key rings --------------------------------------------------------------------------------

class Ring:
    """A transferable public key: primary, its direct signatures, user ids with their
    signatures, subkeys with their signatures."""

    def __init__(self, data):
        self.raw = bytes(data)
        packets = [(t, b) for t, b in parse_packets(data) if t != TAG_TRUST and t != 10]
        if not packets or packets[0][0] != TAG_PUBLIC_KEY:
            raise PGPError('a key ring must start with a public key packet')
        self.primary = PublicKey(packets[0][1])
        self.direct = []          # [Signature]
        self.uids = []            # [(tag, bytes, [Signature])]
        self.subkeys = []         # [(PublicKey, [Signature])]
        current = self.direct
        for tag, body in packets[1:]:
            if tag == TAG_SIGNATURE:
                current.append(Signature(body))
            elif tag in (TAG_USER_ID, TAG_USER_ATTRIBUTE):
                self.uids.append((tag, body, []))
                current = self.uids[-1][2]
            elif tag == TAG_PUBLIC_SUBKEY:
                self.subkeys.append((PublicKey(body), []))
                current = self.subkeys[-1][1]
            elif tag == TAG_PUBLIC_KEY:
                raise PGPError('more than one key in the ring')
            else:
                pass  # BC skips what it does not know too

    @property
    def fpr(self):
        return self.primary.fpr

    def user_ids(self):
        """The primary key's user ids (text), in order, as BC's getUserIDs() lists them."""
        return [b.decode('utf-8', 'replace') for t, b, _ in self.uids if t == TAG_USER_ID]

    def emails(self):
        """The e-mail part of each user id, as the client's PGPUserID.parse finds it."""
        out = []
        for uid in self.user_ids():
            email = uid_email(uid)
            if email is not None:
                out.append(email)
        return out

    def uid_signatures(self):
        """[(uid text, [Signature])] for the user id packets."""
        return [(b.decode('utf-8', 'replace'), sigs) for t, b, sigs in self.uids
                if t == TAG_USER_ID]

    def verify_uid_sig(self, uid, sig, signer):
        return sig.verify(signer, self.primary.hash_prefix() + uid_prefix(uid.encode('utf-8')))

    def first_signature_flags(self):
        """Key flags as the client's PGP.getKeyFlags reads them for the primary: those of the first
        signature BC lists for it (direct signatures, then each user id's), 0 without any."""
        sigs = self.direct + [s for _t, _b, ss in self.uids for s in ss]
        if not sigs:
            return 0
        return sigs[0].key_flags or 0

    def revocations(self):
        """The 0x20 key revocations among the primary's direct signatures that verify with the
        primary itself."""
        return [sig for sig in self.direct if sig.type == SIG_KEY_REVOCATION and
                sig.verify(self.primary, self.primary.hash_prefix())]

    def subkey_flags(self, index):
        flags = 0
        for sig in self.subkeys[index][1]:
            if sig.type == SIG_SUBKEY_BINDING and sig.key_flags is not None:
                flags |= sig.key_flags
        return flags

    def encode_bc(self):
        """The ring as the client re-encodes it (PersonalKey.update + getEncodedPublicKeyRing):
        primary (with its signatures and user ids), the signing subkey, the encryption subkey,
        each packet re-framed BC style. Subkeys that are neither come last."""
        out = packet(TAG_PUBLIC_KEY, self.primary.body)
        for sig in self.direct:
            out += packet(TAG_SIGNATURE, sig.body)
        for tag, body, sigs in self.uids:
            out += packet(tag, body)
            for sig in sigs:
                out += packet(TAG_SIGNATURE, sig.body)
        order = sorted(range(len(self.subkeys)), key=lambda i: (
            0 if self.subkey_flags(i) & FLAG_SIGN else
            1 if self.subkey_flags(i) & (FLAG_ENCRYPT_COMMS | FLAG_ENCRYPT_STORAGE) else 2, i))
        for i in order:
            key, sigs = self.subkeys[i]
            out += packet(TAG_PUBLIC_SUBKEY, key.body)
            for sig in sigs:
                out += packet(TAG_SIGNATURE, sig.body)
        return out


def uid_email(uid):
    """The client's PGPUserID.parse: "name (comment) <email>" or "name <email>"."""
    import re
    m = re.match(r'^(.*) \((.*)\) <(.*)>$', uid, re.S) or re.match(r'^(.*) <(.*)>$', uid, re.S)
    if not m:
        return None
    return m.groups()[-1]


class UserKey:
    """The secret side of a generated user key plus its public ring."""

    def __init__(self, rsa_key, created, ring_bytes, sub_keys=()):
        self.rsa = rsa_key
        self.created = created
        self.ring_bytes = ring_bytes
        self.sub_keys = list(sub_keys)  # cryptography EC private keys (unused after creation)
        self.ring = Ring(ring_bytes)

    @property
    def fpr(self):
        return self.ring.fpr

    def private_pem(self):
        return self.rsa.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def generate_user_key(name, email, created=None, subkeys='client', bits=2048):
    """A new key the way the client's PGP.create + PGP.store make it (see the module docstring).
    `subkeys`: 'client' (ECDSA + ECDH, the client's primary-only back-signature), 'rfc' (the same
    with an RFC 4880 back-signature) or 'none'."""
    if created is None:
        created = int(time.time())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    primary_body = rsa_key_body(created, rsa_key)
    primary = PublicKey(primary_body)
    uid = ('%s <%s>' % (name, email)).encode('utf-8')

    ctime = subpacket(SUB_CREATION_TIME, struct.pack('>I', created))
    issuer = subpacket(SUB_ISSUER, primary.keyid)
    issuer_fpr = subpacket(SUB_ISSUER_FPR, b'\x04' + primary.fingerprint)
    selfsig = make_signature(
        SIG_POSITIVE, rsa_key, primary, primary.hash_prefix() + uid_prefix(uid),
        [ctime, subpacket(SUB_KEY_FLAGS, bytes([FLAG_CERTIFY | FLAG_AUTHENTICATE])),
         subpacket(SUB_PRIMARY_UID, b'\x01'), issuer_fpr],
        [issuer])
    ring = packet(TAG_PUBLIC_KEY, primary_body) + packet(TAG_USER_ID, uid) + \
        packet(TAG_SIGNATURE, selfsig)

    ec_keys = []
    if subkeys in ('client', 'rfc'):
        sign_key = ec.generate_private_key(ec.SECP256R1())
        enc_key = ec.generate_private_key(ec.SECP256R1())
        ec_keys = [sign_key, enc_key]
        sign_body = ec_key_body(created, ALGO_ECDSA, sign_key)
        sign_pub = PublicKey(sign_body)
        binding_data = primary.hash_prefix() + sign_pub.hash_prefix()
        back_data = primary.hash_prefix() if subkeys == 'client' else binding_data
        backsig = make_signature(SIG_PRIMARY_BINDING, sign_key, sign_pub, back_data,
                                 [ctime], [subpacket(SUB_ISSUER, sign_pub.keyid)])
        binding = make_signature(
            SIG_SUBKEY_BINDING, rsa_key, primary, binding_data,
            [ctime, subpacket(SUB_KEY_FLAGS, bytes([FLAG_SIGN])),
             subpacket(SUB_EMBEDDED_SIG, backsig), issuer_fpr],
            [issuer])
        ring += packet(TAG_PUBLIC_SUBKEY, sign_body) + packet(TAG_SIGNATURE, binding)

        enc_body = ec_key_body(created, ALGO_ECDH, enc_key)
        enc_pub = PublicKey(enc_body)
        binding = make_signature(
            SIG_SUBKEY_BINDING, rsa_key, primary, primary.hash_prefix() + enc_pub.hash_prefix(),
            [ctime, subpacket(SUB_KEY_FLAGS, bytes([FLAG_ENCRYPT_COMMS])), issuer_fpr],
            [issuer])
        ring += packet(TAG_PUBLIC_SUBKEY, enc_body) + packet(TAG_SIGNATURE, binding)
    elif subkeys != 'none':
        raise ValueError('subkeys must be client, rfc or none')
    return UserKey(rsa_key, created, ring, ec_keys)


# -- key revocation (the rollover's "revoked" key) --------------------------------------------

def revocation_signature(rsa_key, primary, created=None):
    """A 0x20 key revocation of `primary` (PublicKey) by its own `rsa_key`, as PGP.revokeKey makes
    it with BC: SHA-256 over the primary key alone, hashed creation time, unhashed issuer."""
    if created is None:
        created = int(time.time())
    return make_signature(SIG_KEY_REVOCATION, rsa_key, primary, primary.hash_prefix(),
                          [subpacket(SUB_CREATION_TIME, struct.pack('>I', created))],
                          [subpacket(SUB_ISSUER, primary.keyid)])


def revoked_key(ring, rsa_key, created=None, signature=None):
    """The bytes the client sends as "revoked" (PGPPublicKey.addCertification(key, revocation)
    then getEncoded()): the primary, its direct signatures, the revocation after them, then each
    user id with its signatures, BC framing, no subkeys. `signature` (tampering) replaces the
    revocation's body; b'' leaves it out."""
    if signature is None:
        if rsa_key.public_key().public_numbers() != ring.primary.rsa_public().public_numbers():
            raise PGPError('the RSA key is not the primary of this ring')
        signature = revocation_signature(rsa_key, ring.primary, created)
    out = packet(TAG_PUBLIC_KEY, ring.primary.body)
    for sig in ring.direct:
        out += packet(TAG_SIGNATURE, sig.body)
    if signature:
        out += packet(TAG_SIGNATURE, signature)
    for tag, body, sigs in ring.uids:
        out += packet(tag, body)
        for sig in sigs:
            out += packet(TAG_SIGNATURE, sig.body)
    return out


# -- secret keys (the private key backup) -----------------------------------------------------

def public_part_length(body):
    """How many octets of a secret key packet body are its public key (RSA, ECDSA, ECDH)."""
    algo = body[5]
    if algo in (1, 2, 3):
        _n, pos = read_mpi(body, 6)
        _e, pos = read_mpi(body, pos)
        return pos
    if algo in (ALGO_ECDSA, ALGO_ECDH):
        pos = 7 + body[6]
        _q, pos = read_mpi(body, pos)
        if algo == ALGO_ECDH:
            pos += 1 + body[pos]
        return pos
    raise PGPError('unsupported secret key algorithm %d' % algo)


def s2k_count(c):
    """RFC 4880 3.7.1.3: the octet count coded in `c`."""
    return (16 + (c & 15)) << ((c >> 4) + 6)


def s2k_iterated_sha1(passphrase, salt, count_byte, size):
    """Iterated and salted S2K with SHA-1: `size` key octets."""
    data = salt + passphrase
    count = max(s2k_count(count_byte), len(data))
    full, rest = divmod(count, len(data))
    out = b''
    n = 0
    while len(out) < size:
        h = hashlib.sha1(b'\x00' * n)
        for _ in range(full):
            h.update(data)
        h.update(data[:rest])
        out += h.digest()
        n += 1
    return out[:size]


def secret_material(key):
    """The secret MPIs of a cryptography RSA (d, p, q, u with p < q, u = p^-1 mod q) or EC (d)
    private key."""
    if isinstance(key, rsa.RSAPrivateKey):
        nums = key.private_numbers()
        p, q = sorted((nums.p, nums.q))
        return mpi(nums.d) + mpi(p) + mpi(q) + mpi(pow(p, -1, q))
    return mpi(key.private_numbers().private_value)


def secret_key_body(public_body, key, passphrase=None, count_byte=S2K_COUNT_BC):
    """A v4 secret key packet body: `public_body`, then the secret MPIs of `key`, protected with
    `passphrase` as the client protects them (see the module docstring), or in the clear with the
    two-octet checksum when `passphrase` is None."""
    clear = secret_material(key)
    if passphrase is None:
        return public_body + b'\x00' + clear + struct.pack('>H', sum(clear) & 0xffff)
    salt = os.urandom(8)
    iv = os.urandom(16)
    k = s2k_iterated_sha1(passphrase.encode('utf-8'), salt, count_byte, 32)
    enc = Cipher(algorithms.AES(k), CFB(iv)).encryptor()
    sealed = enc.update(clear + hashlib.sha1(clear).digest()) + enc.finalize()
    return (public_body + bytes([S2K_USAGE_SHA1, SYM_AES256, S2K_ITERATED_SALTED, HASH_SHA1]) +
            salt + bytes([count_byte]) + iv + sealed)


def _public_matches(pub, key):
    """True if PublicKey `pub` is the public half of cryptography private key `key`."""
    try:
        if isinstance(key, rsa.RSAPrivateKey):
            return pub.rsa_n is not None and \
                pub.rsa_public().public_numbers() == key.public_key().public_numbers()
        if pub.algo in (ALGO_ECDSA, ALGO_ECDH):
            return pub.ec_public().public_numbers() == key.public_key().public_numbers()
    except (PGPError, ValueError):
        return False
    return False


def secret_ring(ring, keys, passphrase=None):
    """PGPSecretKeyRing.getEncoded of `ring` (Ring, as generated: self-signatures only) with the
    private keys `keys` (cryptography keys; the primary's is required): the secret primary, its
    direct signatures, the user ids with their signatures, then each subkey whose private key is in
    `keys` as a secret subkey with its binding signatures. BC framing."""
    keys = list(keys)

    def private_of(pub):
        for k in keys:
            if _public_matches(pub, k):
                return k
        return None

    primary = private_of(ring.primary)
    if primary is None:
        raise PGPError('no private key for the primary %s' % ring.fpr)
    out = packet(TAG_SECRET_KEY, secret_key_body(ring.primary.body, primary, passphrase))
    for sig in ring.direct:
        out += packet(TAG_SIGNATURE, sig.body)
    for tag, body, sigs in ring.uids:
        out += packet(tag, body)
        for sig in sigs:
            out += packet(TAG_SIGNATURE, sig.body)
    for pub, sigs in ring.subkeys:
        k = private_of(pub)
        if k is None:
            continue
        out += packet(TAG_SECRET_SUBKEY, secret_key_body(pub.body, k, passphrase))
        for sig in sigs:
            out += packet(TAG_SIGNATURE, sig.body)
    return out


def public_of_secret_ring(data):
    """The public ring of a secret ring's bytes (secret parts cut off, tags 5/7 made 6/14), or
    raises PGPError if `data` is not an OpenPGP secret key ring."""
    packets = parse_packets(data)
    if not packets or packets[0][0] != TAG_SECRET_KEY:
        raise PGPError('not a secret key ring')
    out = b''
    for tag, body in packets:
        if tag in (TAG_SECRET_KEY, TAG_SECRET_SUBKEY):
            if len(body) < 6 or body[0] != 4:
                raise PGPError('unsupported secret key packet')
            tag = TAG_PUBLIC_KEY if tag == TAG_SECRET_KEY else TAG_PUBLIC_SUBKEY
            body = body[:public_part_length(body)]
        out += packet(tag, body)
    return Ring(out)


# -- the bridge certificate -------------------------------------------------------------------

def der_len(n):
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, 'big')
    return bytes([0x80 | len(raw)]) + raw


def der(tag, content):
    return bytes([tag]) + der_len(len(content)) + content


def san_value(emails):
    """The client's non-standard subjectAltName: each xmppAddr otherName is an IMPLICIT [0] of
    SEQUENCE { OID, UTF8String } (BC's GeneralName(otherName, DLSequence)), so the UTF8String has
    no [0] EXPLICIT around it."""
    names = b''.join(der(0xa0, XMPP_ADDR_OID_DER + der(0x0c, e.encode('utf-8'))) for e in emails)
    return der(0x30, names)


def bridge_certificate(ring, rsa_key, cert_key=None):
    """DER of the client's bridge certificate for `ring` (Ring; its bytes go in the extension as
    the client encodes them), signed by `rsa_key`. `cert_key` (tampering): put this other RSA key
    in the certificate's SPKI and sign with it, while the extension keeps `ring`."""
    signer = cert_key if cert_key is not None else rsa_key
    primary = ring.primary
    uids = ring.user_ids()
    ring_bytes = ring.encode_bc()
    # BC puts every user id in a CN of its own, UTF8String, whatever its length (a Kontalk uid is
    # longer than the 64 characters X.520 allows a CN, which cryptography only warns about here)
    utf8 = x509.name._ASN1Type.UTF8String
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'OpenPGP to X.509 Bridge', utf8)]
        attrs += [x509.NameAttribute(NameOID.COMMON_NAME, uid, utf8, _validate=False)
                  for uid in uids]
    name = x509.Name(attrs)
    import datetime
    start = datetime.datetime.fromtimestamp(primary.created, datetime.timezone.utc)
    expiry = None
    for _uid, sigs in ring.uid_signatures():
        for sig in sigs:
            if sig.issuer == primary.keyid and sig.key_expiration:
                expiry = sig.key_expiration
                break
    end = start if not expiry else start + datetime.timedelta(seconds=expiry)
    pub = signer.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(pub)
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(name)
               .serial_number(1)
               .not_valid_before(start).not_valid_after(end)
               .public_key(pub)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=True, key_encipherment=True,
                   data_encipherment=False, key_agreement=True, key_cert_sign=True,
                   crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.UnrecognizedExtension(
                   x509.ObjectIdentifier(NETSCAPE_CERT_TYPE_OID), b'\x03\x02\x05\xa0'),
                   critical=False)
               .add_extension(ski, critical=False)
               .add_extension(x509.AuthorityKeyIdentifier(ski.digest, None, None),
                              critical=False))
    emails = ring.emails()
    if emails:
        builder = builder.add_extension(x509.UnrecognizedExtension(
            x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san_value(emails)), critical=False)
    builder = builder.add_extension(x509.UnrecognizedExtension(
        x509.ObjectIdentifier(PGP_EXT_OID), der(0x03, b'\x00' + ring_bytes)), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    tbs = cert.tbs_certificate_bytes
    if tbs.count(SHA256_RSA_OID_DER) != 1:
        raise PGPError('sha256WithRSAEncryption appears %d times in the TBS'
                       % tbs.count(SHA256_RSA_OID_DER))
    tbs = tbs.replace(SHA256_RSA_OID_DER, SHA1_RSA_OID_DER)
    sig = signer.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    alg = der(0x30, SHA1_RSA_OID_DER + b'\x05\x00')
    return der(0x30, tbs + alg + der(0x03, b'\x00' + sig))


def der_to_pem(der_bytes, label='CERTIFICATE'):
    import base64
    b64 = base64.b64encode(der_bytes).decode('ascii')
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return ('-----BEGIN %s-----\n%s\n-----END %s-----\n' % (label, '\n'.join(lines), label)).encode()


def der_walk(data, pos=0):
    """(tag, content start, content end, element end) of the DER element at `pos`."""
    tag = data[pos]
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7f
        n = int.from_bytes(data[pos:pos + k], 'big')
        pos += k
    return tag, pos, pos + n, pos + n


def der_children(data, start, end):
    out = []
    pos = start
    while pos < end:
        tag, cs, ce, nxt = der_walk(data, pos)
        out.append((tag, cs, ce, pos))
        pos = nxt
    return out


def cert_extensions(cert_der):
    """[(oid DER bytes, critical, extnValue bytes)] of a certificate, in order, by hand (the
    client's SAN makes some parsers refuse the certificate)."""
    _t, cs, ce, _ = der_walk(cert_der, 0)
    tbs_tag, tcs, tce, _ = der_walk(cert_der, cs)
    out = []
    for tag, ecs, ece, _start in der_children(cert_der, tcs, tce):
        if tag != 0xa3:
            continue
        _t2, scs, sce, _ = der_walk(cert_der, ecs)
        for _t3, xcs, xce, _ in der_children(cert_der, scs, sce):
            parts = der_children(cert_der, xcs, xce)
            oid_start = parts[0][3]
            oid = cert_der[oid_start:parts[0][2]]
            critical = False
            value = parts[-1]
            if len(parts) == 3:
                critical = cert_der[parts[1][1]:parts[1][2]] == b'\xff'
            out.append((oid, critical, cert_der[value[1]:value[2]]))
    return out


def cert_signature_algorithm(cert_der):
    """DER of the outer signatureAlgorithm OID."""
    _t, cs, ce, _ = der_walk(cert_der, 0)
    kids = der_children(cert_der, cs, ce)
    _t, acs, ace, _ = der_walk(cert_der, kids[1][3])
    oid = der_children(cert_der, acs, ace)[0]
    return cert_der[oid[3]:oid[2]]


def ring_from_certificate(cert_der):
    """The key ring bytes in the certificate's OpenPGP extension (None without one)."""
    for oid, _c, value in cert_extensions(cert_der):
        if oid == PGP_EXT_OID_DER:
            if value[0] != 0x03:
                raise PGPError('PGP extension is not a BIT STRING')
            _t, cs, ce, _ = der_walk(value, 0)
            return value[cs + 1:ce]
    return None
