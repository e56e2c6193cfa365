"""Masking secrets before anything is stored.

Notifications must never carry tokens, passwords or CHAP secrets, but a bug
upstream could put one anywhere: in the payload, in the context, in a fault
message, in a publisher id. Every text the audit store keeps goes through exactly
one of :func:`mask` (structured data, stored as JSON) or :func:`mask_text` (any
other text): the contract masks the event columns, :func:`mask_row` the rows the
store builds itself (``rejected``). Once only: oslo.utils' patterns are not
idempotent (see :func:`mask_row`).

oslo.utils' ``strutils`` (``mask_dict_password`` for keys, ``mask_password`` for
text) knows the OpenStack key names and ``key=value`` forms;
the patterns here add what it misses: HTTP header forms (``X-Auth-Token: ...``),
bearer credentials, Keystone Fernet tokens by their shape, and JSON whose quotes
are escaped (a message body inside an envelope).
"""
import re
from typing import Any
from typing import Collection

from oslo_utils import strutils

SECRET = '***'

_KEY_WORDS = (r'password|passwd|passphrase|token|secret|credential|api[_-]?key|'
              r'private[_-]?key|access[_-]?key|authorization')

#: A key name that holds a secret: ``auth_token``, ``X-Auth-Token``, ``chap_secret``.
_SECRET_KEY = re.compile(r'(?:%s)' % _KEY_WORDS, re.IGNORECASE)

#: ``key: value``, ``key=value``, ``"key": "value"`` and ``\\"key\\": \\"value\\"``.
_KEY_VALUE = re.compile(
    r'([\w.-]*(?:%s)[\w.-]*(?:\\*["\'])?\s*[:=]\s*(?:\\*["\'])?)'
    r'(?!\*\*\*)([^\s"\'\\,;&}\]]+)' % _KEY_WORDS,
    re.IGNORECASE)
_BEARER = re.compile(r'\b(Bearer|Basic|Negotiate)(\s+)[A-Za-z0-9._~+/=-]{8,}', re.IGNORECASE)
#: Keystone Fernet tokens and credentials start with a base64url version byte 0x80.
_FERNET = re.compile(r'gAAAAA[A-Za-z0-9_=-]{20,}')


#: Every oslo.utils sanitize key and every word of _KEY_WORDS contains one of these
#: (unit tests check both): text without any of them holds no key=value secret.
_KEYWORD = re.compile(r'pass|pswd|token|secret|key|cred|auth|cookie|drive|fsid|kek|suffix',
                      re.IGNORECASE)
#: ... and without one of these, no credential _BEARER would mask.
_SCHEME = re.compile(r'bearer|basic|negotiate', re.IGNORECASE)


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


def mask_text(text: str) -> str:
    """Mask secrets in free text: log-like lines, fault messages, raw bodies."""
    if not _KEYWORD.search(text) and not _SCHEME.search(text):  # the common case: fast
        return _FERNET.sub(SECRET, text) if 'gAAAAA' in text else text
    text = strutils.mask_password(text, secret=SECRET)
    text = _BEARER.sub(r'\g<1>\g<2>' + SECRET, text)
    text = _KEY_VALUE.sub(r'\g<1>' + SECRET, text)
    return _FERNET.sub(SECRET, text)


def _mask_item(key: Any, item: Any) -> Any:
    if item is not None and is_secret_key(key):
        return SECRET
    if isinstance(key, str) and _KEYWORD.search(key) and not isinstance(
            item, (dict, list, tuple)):
        # oslo.utils' key list has the rest (configdrive, cephclusterfsid, ...)
        item = strutils.mask_dict_password({key: item}, secret=SECRET)[key]
    return mask(item)


def mask(value: Any) -> Any:
    """Mask secrets in JSON-like data, recursively; returns a new structure."""
    if isinstance(value, dict):
        return {key: _mask_item(key, item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask(item) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def storable(text: str) -> str:
    """``text`` as any database takes it: what UTF-8 cannot encode, and NUL, escaped.

    JSON can carry a lone surrogate (``"\\ud800"``), which the drivers refuse to
    encode, and PostgreSQL refuses NUL in text. The contract refuses both in an
    event; a message kept as rejected has them as backslash escapes instead, so
    that its own row can be stored.
    """
    if not text.isascii():
        text = text.encode('utf-8', 'backslashreplace').decode('utf-8')
    return text.replace('\x00', '\\x00') if '\x00' in text else text


def mask_row(row: dict, masked: Collection[str] = ()) -> dict:
    """A row as it may be stored: every text storable, and masked unless ``masked``.

    ``masked`` names the columns whose text was built from masked data (JSON of
    :func:`mask`). They are not masked again: strutils' catch-all pattern for
    quoted values cuts the last quoted value out of text such as
    ``'"password": "***", "host": "compute-1"'`` (oslo.utils 10.2.0), and a second
    pass cuts more.
    """
    return {key: (value if not isinstance(value, str)
                  else storable(value) if key in masked else mask_text(storable(value)))
            for key, value in row.items()}
