"""The VNC-password security type (RFC 6143 7.2.2): the server sends 16 random bytes, the client returns them
encrypted with DES (ECB, two blocks) under a key made of the password's first 8 bytes (NUL-padded) with the bit
order of each byte reversed — the historical quirk every VNC implementation shares.

DES comes from the `cryptography` package (its "decrepit" TripleDES with the key given three times, which is
single DES: E(K, D(K, E(K, x))) = E(K, x)). A password is 1..8 bytes of Latin-1, as every viewer sends it.
"""
from __future__ import annotations

import hmac
import os

CHALLENGE_SIZE = 16
MAX_PASSWORD = 8


def _des_key(password: str) -> bytes:
    raw = password.encode("latin-1")[:MAX_PASSWORD].ljust(MAX_PASSWORD, b"\0")
    return bytes(int(f"{b:08b}"[::-1], 2) for b in raw)


def encrypt_challenge(password: str, challenge: bytes) -> bytes:
    """What a client answers to `challenge` knowing `password`."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = _des_key(password)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def new_challenge() -> bytes:
    return os.urandom(CHALLENGE_SIZE)


def check_response(password: str, challenge: bytes, response: bytes) -> bool:
    return hmac.compare_digest(encrypt_challenge(password, challenge), response)


def check_password(password: str) -> None:
    """ValueError (one line) when `password` cannot be a VNC password."""
    if not password:
        raise ValueError("the VNC password is empty: give 1 to 8 characters")
    try:
        password.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("the VNC password has characters VNC viewers cannot send: use Latin-1 (e.g. ASCII) "
                         "characters") from None
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"the VNC password is {len(password)} characters long: VNC uses only the first "
                         f"{MAX_PASSWORD}, give at most {MAX_PASSWORD}")
