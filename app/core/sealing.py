"""Values the fleet keeps in Redis, sealed: AES-GCM (`cryptography`) under a key every replica
derives from SHARED_STATE_SECRET (HKDF-SHA256, one key per purpose), bound to associated data
that says what the value is for. Whoever can read Redis learns nothing usable; whoever can write
it cannot make a replica accept a value made for anything else (another file, another
deployment), nor one of their own."""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_NONCE_BYTES = 12


class Unsealable(Exception):
    """Not a value sealed under this key for this associated data (tampered, truncated,
    foreign, or made for something else)."""


def length_prefixed(*parts: str) -> bytes:
    """`parts` as one unambiguous byte string: ("a", "bc") and ("ab", "c") differ."""
    return b"".join(struct.pack(">I", len(p)) + p for p in (part.encode() for part in parts))


class Sealer:
    def __init__(self, secret: bytes, purpose: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"orbit-exports shared state: " + purpose.encode(),
        ).derive(secret)
        self._aead = AESGCM(key)
        # Names the key without revealing it (a digest of the derived key): values sealed with
        # another secret live under other names.
        self.key_id = hashlib.sha256(b"key id:" + key).hexdigest()[:16]

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        if not isinstance(sealed, bytes) or sealed[:1] != _VERSION:
            raise Unsealable
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, associated)
        except (InvalidTag, ValueError):
            raise Unsealable from None
