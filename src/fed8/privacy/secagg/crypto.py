"""The cryptographic primitives of secure aggregation, all from ``cryptography``.

* Key agreement: X25519 (Bernstein 2006); shared secrets go through HKDF-SHA256
  (RFC 5869) with a purpose label, so the encryption key and the mask seed of a pair
  of clients are independent.
* Authenticated encryption of the secret shares: AES-256-GCM.
* PRG: AES-128 in counter mode over a 16-byte seed, i.e. the keystream read as
  little-endian uint32 words; each word is reduced modulo ``2^k`` by the caller.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["KeyPair", "aead_decrypt", "aead_encrypt", "derive", "prg_words"]


def _c():
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import x25519
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return hashes, serialization, x25519, Cipher, algorithms, modes, AESGCM, HKDF


class KeyPair:
    """An X25519 key pair; ``public`` is the 32-byte raw public key."""

    def __init__(self, private: bytes | None = None) -> None:
        _, ser, x25519, *_ = _c()
        self._sk = (x25519.X25519PrivateKey.from_private_bytes(private) if private is not None
                    else x25519.X25519PrivateKey.generate())
        self.public = self._sk.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)

    @property
    def private_bytes(self) -> bytes:
        _, ser, *_ = _c()
        return self._sk.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())

    def agree(self, peer_public: bytes, label: bytes) -> bytes:
        """32 bytes shared with the holder of ``peer_public``, bound to ``label``."""
        _, _, x25519, *_ = _c()
        shared = self._sk.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        return derive(shared, label)


def derive(secret: bytes, label: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256(secret, info=label)."""
    hashes, *_, HKDF = _c()
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(secret)


def aead_encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """nonce (12 bytes) || AES-256-GCM(plaintext) with its 16-byte tag."""
    *_, AESGCM, _ = _c()
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def aead_decrypt(key: bytes, message: bytes, associated: bytes) -> bytes:
    """Inverse of :func:`aead_encrypt`; raises ``cryptography.exceptions.InvalidTag`` on tampering."""
    *_, AESGCM, _ = _c()
    return AESGCM(key).decrypt(message[:12], message[12:], associated)


def prg_words(seed: bytes, count: int) -> np.ndarray:
    """``count`` pseudorandom uint32 words from a seed (AES-128-CTR keystream, first 16 bytes as key)."""
    _, _, _, Cipher, algorithms, modes, *_ = _c()
    enc = Cipher(algorithms.AES(seed[:16]), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(enc.update(bytes(4 * count)), dtype="<u4")
