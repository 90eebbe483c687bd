"""Who may call the app: an API key read from a file, and one log line per request.

    pneumoscan serve runs/default --api-key-file /etc/pneumoscan/key

The file holds one key (surrounding whitespace ignored; at least 16 characters). Every
``/api/*`` request must send ``Authorization: Bearer <key>``; the comparison takes the same
time whatever the key sent, so timing reveals nothing of the key. ``/health`` and the page
stay open (the page asks for the key once and sends it with each request).
"""
from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

MIN_KEY_LENGTH = 16
# One line per request: method, path, status, duration, model id, number of files; never an image or a file name.
request_log = logging.getLogger("pneumoscan.requests")


@dataclass(frozen=True)
class ApiKey:
    key: bytes

    @classmethod
    def from_file(cls, path: str | Path) -> "ApiKey":
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the API key file ({exc})") from None
        if len(text) < MIN_KEY_LENGTH or any(c.isspace() for c in text):
            raise ConfigError(f"{path}: the API key must be one line of at least {MIN_KEY_LENGTH} characters "
                              "without spaces (for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return cls(text.encode("utf-8"))

    def allows(self, headers) -> bool:
        """``headers``: the request's headers (any mapping with ``get``)."""
        scheme, _, sent = headers.get("authorization", "").partition(" ")
        # compare_digest runs in time independent of where the two differ.
        return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode("utf-8"), self.key)
