"""WireGuard keys: X25519 key pairs and preshared keys, base64 as wg prints them."""

import base64
import binascii
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


def _b64(raw):
    return base64.b64encode(raw).decode("ascii")


def decode_key(text):
    """The 32 raw bytes of a base64 key, or ValueError."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError):
        raise ValueError("not a base64 WireGuard key") from None
    if len(raw) != 32:
        raise ValueError("a WireGuard key is 32 bytes of base64 (44 characters)")
    return raw


def generate_private_key():
    key = X25519PrivateKey.generate()
    return _b64(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption()))


def public_key(private_b64):
    key = X25519PrivateKey.from_private_bytes(decode_key(private_b64))
    return _b64(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def generate_preshared_key():
    return _b64(os.urandom(32))


def generate_keypair():
    private = generate_private_key()
    return private, public_key(private)
