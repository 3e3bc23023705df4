"""End-to-end payload encryption with AES-256-GCM (the optional extra
`event-router[crypto]`, which installs `cryptography`).

Only the payload is encrypted. The envelope — `type`, `source`,
`priority`, `headers`, ids — stays readable, so the router routes and
filters on it; filters on `payload.*` fields cannot match an encrypted
event. The encrypted payload is `{"ciphertext": "<base64>", "nonce":
"<base64>"}`, with headers `encryption: aes-256-gcm` and
`encryption-key-id: <id>`; the event's `type` is bound in as associated
data, so a ciphertext moved to another topic does not decrypt.

Decrypting with the wrong key, an unknown key id, or a tampered payload
raises `DecryptionError`, never garbage.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from typing import Any

from ._event import JSON
from .errors import EventRouterError

ALGORITHM = "aes-256-gcm"
ALGORITHM_HEADER = "encryption"
KEY_ID_HEADER = "encryption-key-id"


class DecryptionError(EventRouterError):
    """An encrypted payload could not be decrypted: unknown key id
    (`unknown_key`), wrong key or tampered data (`decryption_failed`), or
    not an encrypted payload (`not_encrypted`)."""


def _aesgcm(key: bytes) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as e:  # pragma: no cover - depends on the install
        raise EventRouterError(
            "payload encryption needs the `cryptography` package: "
            "pip install 'event-router[crypto]'",
            code="missing_dependency",
        ) from e
    if len(key) != 32:
        raise ValueError("an AES-256-GCM key is 32 bytes")
    return AESGCM(key)


def generate_key() -> bytes:
    """A fresh random 256-bit key."""
    return os.urandom(32)


class PayloadCipher:
    """Encrypts payloads with the key `key_id` of `keys` and decrypts
    with whichever key an event names (so keys can be rotated: keep the
    old ones in `keys` while their events are still around)."""

    def __init__(self, keys: Mapping[str, bytes], key_id: str) -> None:
        if key_id not in keys:
            raise ValueError(f"key id {key_id!r} is not among the keys")
        self._ciphers = {kid: _aesgcm(bytes(k)) for kid, k in keys.items()}
        self.key_id = key_id

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PayloadCipher | None:
        """From the client's `encryption=` option: `{"enabled": True,
        "algorithm": "AES-256-GCM", "key": bytes, "key_id": "k1",
        "keys": {id: bytes}}` (`keys` optional, for decrypting old events).
        None when not enabled."""
        if not config.get("enabled", True):
            return None
        algorithm = str(config.get("algorithm", "AES-256-GCM")).lower()
        if algorithm != ALGORITHM:
            raise ValueError(f"unsupported encryption algorithm {algorithm!r}")
        key_id = str(config.get("key_id", "default"))
        keys = dict(config.get("keys") or {})
        if "key" in config:
            keys[key_id] = config["key"]
        return cls(keys, key_id)

    def seal(
        self, type: str, payload: JSON, headers: Mapping[str, str] | None
    ) -> tuple[JSON, dict[str, str]]:
        """The encrypted payload and the headers to send with it."""
        nonce = os.urandom(12)
        plain = json.dumps(payload, separators=(",", ":")).encode()
        sealed = self._ciphers[self.key_id].encrypt(nonce, plain, type.encode())
        out = dict(headers or {})
        out[ALGORITHM_HEADER] = ALGORITHM
        out[KEY_ID_HEADER] = self.key_id
        return {
            "ciphertext": base64.b64encode(sealed).decode(),
            "nonce": base64.b64encode(nonce).decode(),
        }, out

    def open(self, type: str, payload: JSON, headers: Mapping[str, str]) -> JSON:
        """The decrypted payload of an encrypted event.

        Raises:
            DecryptionError: see the class.
        """
        if headers.get(ALGORITHM_HEADER) != ALGORITHM or not isinstance(payload, dict):
            raise DecryptionError("the event is not encrypted", code="not_encrypted")
        key_id = headers.get(KEY_ID_HEADER, "")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(f"no key with id {key_id!r}", code="unknown_key")
        try:
            nonce = base64.b64decode(str(payload["nonce"]), validate=True)
            sealed = base64.b64decode(str(payload["ciphertext"]), validate=True)
            plain = cipher.decrypt(nonce, sealed, type.encode())
            result: JSON = json.loads(plain)
        except Exception as e:
            raise DecryptionError(
                f"payload of a {type!r} event does not decrypt with key {key_id!r} "
                "(wrong key or tampered data)",
                code="decryption_failed",
            ) from e
        return result


def is_encrypted(headers: Mapping[str, str]) -> bool:
    """Whether an event's headers say its payload is encrypted."""
    return headers.get(ALGORITHM_HEADER) == ALGORITHM
