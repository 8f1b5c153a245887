"""Scrub secrets and personal data out of log events before they are rendered.

Logs outlive the requests that wrote them and are read by more people than the
database, so nothing a client handed over in confidence may reach them. Values
under secret-named keys are dropped whatever their type; every string (message,
traceback, repr of an unknown object) is scanned for e-mails, phone numbers,
Luhn-valid card numbers, national ids, JWTs, bearer credentials, API keys and
``password=...`` pairs. The scan runs on every log line, so patterns are
precompiled and guarded by cheap substring checks, and it never raises: a value
that cannot be scrubbed is replaced wholesale rather than dropping the line.

Hex identifiers are not numbers: the digit runs inside a UUID (canonical form,
any case) or a dash-free hex token holding a letter (correlation ids, digests)
are never taken for a card or a phone number, so ``/orders/<uuid>`` survives
intact. The price: a card glued to hex letters (``cafe4111...``) is not
recognised; one standing alone, or written with spaces or dashes, is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "CARD", "EMAIL", "JWT", "NATIONAL_ID", "PHONE", "REDACTED", "SECRET", "TRUNCATED", "US_SSN",
    "Redactor", "luhn_valid", "redact_event", "redact_value", "use_redactor",
]  # fmt: skip

REDACTED = "[REDACTED]"
EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
JWT = "[JWT]"
SECRET = "[SECRET]"  # noqa: S105 - a placeholder, not a credential
NATIONAL_ID = "[NATIONAL_ID]"
TRUNCATED = "...[TRUNCATED]"

US_SSN = re.compile(r"(?<![0-9-])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9-])")

# A key is secret when its separator-free lower-case form contains one of these...
_KEY_FRAGMENTS = (
    "password", "passwd", "passphrase", "secret", "token", "apikey", "accesskey",
    "privatekey", "signingkey", "encryptionkey", "authorization", "cookie", "session",
    "credential", "cardnumber", "creditcard", "nationalid", "jwt", "bearer", "iban",
)  # fmt: skip
# ... or when one of its words (split on separators and camelCase) is one of these.
_KEY_WORDS = frozenset({
    "pwd", "pass", "pin", "otp", "totp", "cvv", "cvc", "cvv2", "ssn", "pan", "nino", "sin", "auth",
})  # fmt: skip
# Raw-text fragments at least one of which any secret key contains: the cheap
# pre-check before looking for ``key=value`` pairs in free text.
_KV_GUARD_WORDS = (
    "pass", "pwd", "secret", "token", "key", "auth", "cookie", "session", "credential",
    "jwt", "bearer", "card", "national", "iban", "pin", "otp", "cvv", "cvc", "ssn", "pan",
    "nino", "sin",
)  # fmt: skip
_SKIP_KEYS = frozenset({"timestamp", "level"})  # written by our own processors

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_DIGIT = re.compile(r"[0-9]")
# Eight digits close together: the least any phone or card number has.
_DENSE_DIGITS = re.compile(r"[0-9](?:[ ().-]{0,2}[0-9]){7}")
_DIGITS = re.compile(r"[0-9]+")

_KV_KEY = re.compile(r"""(?<![\w.-])(["']?)([A-Za-z_][\w.-]{0,63})\1[ \t]*[:=][ \t]*""", re.ASCII)
_KV_VALUE = re.compile(
    r""""(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?"""
    r"""|(?i:bearer|basic)[ \t]+[^\s,;&'"}\])>]+|[^\s,;&'"}\])>]+"""
)
_REST_OF_LINE = re.compile(r"[^\r\n]*")
_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z ]*PRIVATE KEY-----.*?(?:-----END[A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL
)
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]+):[^/\s@]+@")
# Case-sensitive on purpose: "basic usage" or "the bearer of" in prose is no credential.
_AUTH_SCHEME = re.compile(r"\b(Bearer|BEARER|Basic|BASIC)[ \t]+[A-Za-z0-9._~+/-]+=*")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){2,4}")
_API_KEY = re.compile(
    r"(?:"
    r"(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}|rk_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{20,}"
    r"|whsec_[A-Za-z0-9+/=]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|(?:AKIA|ASIA)[A-Z0-9]{16}|AIza[A-Za-z0-9_-]{35}"
    r"|glpat-[A-Za-z0-9_-]{20,}|shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}"
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,})"
)
_EMAIL_CHARS = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~.-"  # RFC 5322 atext and dots
_EMAIL = re.compile(rf"(?<![{_EMAIL_CHARS}])[{_EMAIL_CHARS}]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# Card candidates: maximal runs of digit groups joined by single spaces or dashes
# holding at least 13 digits (a match can only start right after a non-digit).
_DIGIT_RUN = re.compile(r"[0-9](?:[ -]?[0-9]){12,}")
_PHONE = re.compile(
    r"(?<![\w@/+.-])(?:"
    r"\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,14}(?:[ .-][0-9]{1,10}){0,6}"
    r"|\([0-9]{1,4}\)[ .-]?[0-9]{1,10}(?:[ .-][0-9]{1,10}){0,6}"
    r"|[0-9]{1,10}(?:[ .-][0-9]{1,10}){2,6}"
    r")(?![\w@])",
    re.ASCII,
)
# IPv4 addresses and dates look like dotted or dashed phone numbers.
_NOT_A_PHONE = re.compile(
    r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}$|[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{2}[./-][0-9]{2}[./-][0-9]{4}"
)
# Hex identifiers, as whole alphanumeric tokens: a canonical UUID, or a run of
# hex digits with at least one letter (a pure digit run may be a card).
_HEX_ID = re.compile(
    r"(?<![0-9A-Za-z])(?:"
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|[0-9]*[A-Fa-f][0-9A-Fa-f]*"
    r")(?![0-9A-Za-z])"
)
# Stands in for a hex identifier while digits are scanned: no digit, no word
# character, no separator any number pattern accepts.
_HOLE = "\ue000"
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
_CACHE_LIMIT = 4096


def luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        total += _DOUBLED[d] if i & 1 else d
    return total % 10 == 0


def _card_spans(run: str) -> list[tuple[int, int]]:
    """Spans of ``run`` made of whole digit groups that form a Luhn-valid card number."""
    groups = [(m.start(), m.end()) for m in _DIGITS.finditer(run)]
    digits = "".join(run[start:end] for start, end in groups)
    bounds = [0]  # group k holds digits[bounds[k]:bounds[k + 1]]
    for start, end in groups:
        bounds.append(bounds[-1] + end - start)
    # Prefix sums with odd (even_doubled) or even (odd_doubled) positions doubled,
    # so the Luhn sum of any window is one subtraction, whatever its length.
    odd_doubled, even_doubled = [0], [0]
    for position, ch in enumerate(digits):
        plain, doubled = ord(ch) - 48, _DOUBLED[ord(ch) - 48]
        odd_doubled.append(odd_doubled[-1] + (doubled if position & 1 else plain))
        even_doubled.append(even_doubled[-1] + (plain if position & 1 else doubled))
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        best, first = -1, bounds[i]
        for j in range(i + 1, len(bounds)):
            end = bounds[j]
            if end - first > 19:
                break
            # Luhn doubles every second digit counting from the right-most one.
            sums = even_doubled if (end - 1) & 1 else odd_doubled
            if end - first >= 13 and (sums[end] - sums[first]) % 10 == 0:
                best = j - 1
        if best < 0:
            i += 1
        else:
            spans.append((groups[i][0], groups[best][1]))
            i = best + 1
    return spans


def _scrub_cards(text: str) -> str:
    out: list[str] = []
    pos = 0
    for run in _DIGIT_RUN.finditer(text):
        for start, end in _card_spans(run.group()):
            out.append(text[pos : run.start() + start])
            out.append(CARD)
            pos = run.start() + end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _scrub_numbers(text: str) -> str:
    """Cards and phone numbers, looked for outside hex identifiers."""
    ids = [m for m in _HEX_ID.finditer(text) if _DIGIT.search(m.group())]
    if ids and _HOLE not in text:
        masked = _HEX_ID.sub(lambda m: _HOLE if _DIGIT.search(m.group()) else m.group(), text)
        if not _DENSE_DIGITS.search(masked):
            return text
        pieces = _PHONE.sub(_phone, _scrub_cards(masked)).split(_HOLE)
        out = [pieces[0]]
        for hex_id, piece in zip(ids, pieces[1:], strict=True):
            out.append(hex_id.group())
            out.append(piece)
        return "".join(out)
    return _PHONE.sub(_phone, _scrub_cards(text))


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    # Longest run of leading groups that still fits E.164 (15 digits): trailing
    # numbers glued on by spaces must not hide the phone in front of them.
    digits = end = 0
    for group in _DIGITS.finditer(text):
        if digits + len(group.group()) > 15:
            break
        digits += len(group.group())
        end = group.end()
    head = text[:end]
    if text[0] == "+":
        ok = digits >= 8
    elif text[0] == "(":
        ok = digits >= 9
    else:  # bare groups: need a phone-like separator and must not be an IP or a date
        ok = digits >= 9 and ("-" in head or "." in head) and _NOT_A_PHONE.match(head) is None
    return PHONE + text[end:] if ok else text


def _scrub_credentials(text: str) -> str:
    """Tokens, keys and passwords recognisable by their shape or their prefix."""
    if "PRIVATE KEY" in text:
        text = _PRIVATE_KEY.sub(SECRET, text)
    if "://" in text:
        text = _URL_CREDENTIALS.sub(r"\1:" + REDACTED + "@", text)
    if "Bearer" in text or "Basic" in text or "BEARER" in text or "BASIC" in text:
        text = _AUTH_SCHEME.sub(r"\1 " + REDACTED, text)
    if "eyJ" in text:
        text = _JWT.sub(JWT, text)
    return _API_KEY.sub(_api_key, text)


def _api_key(match: re.Match[str]) -> str:
    # A prefix glued to a word ("network_..." holds "rk_...") is an identifier, not a key.
    start = match.start()
    if start and (match.string[start - 1].isalnum() or match.string[start - 1] == "_"):
        return match.group()
    return SECRET


def _email(match: re.Match[str]) -> str:
    # Keep ``user=`` of ``user=bob@example.com`` and the quote of ``'bob@example.com'``.
    text = match.group()
    at = text.index("@")
    cut = text.rfind("=", 0, at) + 1
    if cut == at:  # nothing after the '=': it all belongs to the address
        cut = 0
    if cut == 0 and text.startswith("'"):
        cut = 1
    return text[:cut] + EMAIL


def _mask_kv_value(value: str) -> str:
    if value[:1] in {'"', "'"}:
        return value[0] + REDACTED + value[0]
    scheme, _, credentials = value.partition(" ")
    return f"{scheme} {REDACTED}" if credentials else REDACTED


def _rebuild(original: object, items: list[Any]) -> Any:
    if isinstance(original, tuple):
        return tuple(items)
    if isinstance(original, frozenset):
        return frozenset(items)
    return set(items) if isinstance(original, set) else items


@dataclass(frozen=True)
class Redactor:
    """What counts as secret; the defaults cover the seeds, extras add to them.

    ``extra_keys`` are fragments matched against the separator-free lower-case
    key (``"hmac"`` matches ``X-Shopify-Hmac-Sha256``); ``safe_keys`` are exact
    keys exempted from key-based redaction (``"max_tokens"``). ``national_ids``
    patterns become ``[NATIONAL_ID]``; ``extra_patterns`` are ``(pattern,
    replacement)`` pairs applied to every string last. Containers nested deeper
    than ``max_depth`` are replaced, strings longer than ``max_text`` are cut
    (which also bounds the time one line can cost).
    """

    extra_keys: frozenset[str] = frozenset()
    safe_keys: frozenset[str] = frozenset()
    national_ids: tuple[re.Pattern[str], ...] = (US_SSN,)
    extra_patterns: tuple[tuple[re.Pattern[str], str], ...] = ()
    max_depth: int = 16
    max_text: int = 64 * 1024
    _fragments: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _kv_guard: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _key_cache: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)
    _clean: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        extra = tuple(_NON_ALNUM.sub("", k.lower()) for k in self.extra_keys)
        object.__setattr__(self, "_fragments", _KEY_FRAGMENTS + tuple(e for e in extra if e))
        guard = "|".join(re.escape(w) for w in (*_KV_GUARD_WORDS, *extra) if w)
        object.__setattr__(self, "_kv_guard", re.compile(guard))  # on lower-cased text
        safe = frozenset(_NON_ALNUM.sub("", k.lower()) for k in self.safe_keys)
        object.__setattr__(self, "safe_keys", safe)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """Structlog processor: scrub every value of the event in place."""
        for key, value in list(event_dict.items()):
            if key in _SKIP_KEYS:
                continue
            try:
                secret = isinstance(key, str) and self.is_secret_key(key)
                event_dict[key] = REDACTED if secret else self._walk(value, 0)
            except Exception:  # noqa: BLE001 - never lose the line, lose the value
                event_dict[key] = REDACTED
        return event_dict

    def redact(self, obj: object) -> Any:
        """A scrubbed copy of any value (containers are rebuilt, never mutated)."""
        try:
            return self._walk(obj, 0)
        except Exception:  # noqa: BLE001
            return REDACTED

    def is_secret_key(self, key: str) -> bool:
        """Whether values under ``key`` are dropped whatever they contain."""
        known = self._key_cache.get(key)
        if known is not None:
            return known
        compact = _NON_ALNUM.sub("", key.lower())
        if compact in self.safe_keys:
            result = False
        elif any(fragment in compact for fragment in self._fragments):
            result = True
        else:
            words = _NON_ALNUM.split(_CAMEL.sub(r"\1_\2", key).lower())
            result = not _KEY_WORDS.isdisjoint(words)
        if len(self._key_cache) >= _CACHE_LIMIT:
            self._key_cache.clear()
        self._key_cache[key] = result
        return result

    def scrub_text(self, text: str) -> str:
        """``text`` with every secret-looking substring replaced by a placeholder."""
        if not text or text in self._clean:
            return text
        if len(text) > self.max_text:
            text = text[: self.max_text] + TRUNCATED
        out = self._scrub_kv(text) if self._kv_guard.search(text.lower()) else text
        out = _scrub_credentials(out)
        if "@" in out:
            out = _EMAIL.sub(_email, out)
        if _DIGIT.search(out):
            for pattern in self.national_ids:
                out = pattern.sub(NATIONAL_ID, out)
            if _DENSE_DIGITS.search(out):
                out = _scrub_numbers(out)
        for pattern, replacement in self.extra_patterns:
            out = pattern.sub(replacement, out)
        if out == text and len(text) <= 256:
            # Remember only strings proven clean: the cache never holds a secret.
            if len(self._clean) >= _CACHE_LIMIT:
                self._clean.clear()
            self._clean.add(text)
        return out

    def _scrub_kv(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        for key in _KV_KEY.finditer(text):
            if key.start() < pos or not self.is_secret_key(key.group(2)):
                continue
            cookie = "cookie" in key.group(2).lower()
            value = (_REST_OF_LINE if cookie else _KV_VALUE).match(text, key.end())
            if value is None or value.end() == value.start():
                continue
            out.append(text[pos : key.end()])
            out.append(REDACTED if cookie else _mask_kv_value(value.group()))
            pos = value.end()
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def _walk(self, obj: object, depth: int) -> Any:
        if isinstance(obj, str):
            return self.scrub_text(obj)
        if obj is None or isinstance(obj, bool | float):
            return obj
        if isinstance(obj, int):
            return CARD if 10**12 <= obj < 10**19 and luhn_valid(str(obj)) else obj
        if depth >= self.max_depth:
            return REDACTED  # too deep (or cyclic) to inspect: fail closed
        return self._walk_compound(obj, depth + 1)

    def _walk_compound(self, obj: object, depth: int) -> Any:
        if isinstance(obj, Mapping):
            out: dict[Any, Any] = {}
            for key, value in obj.items():
                if isinstance(key, str) and self.is_secret_key(key):
                    out[self.scrub_text(key)] = REDACTED
                else:
                    out[self._walk(key, depth)] = self._walk(value, depth)
            return out
        if isinstance(obj, list | tuple | set | frozenset):
            return _rebuild(obj, [self._walk(item, depth) for item in obj])
        if isinstance(obj, datetime | date | time | timedelta | UUID | Decimal):
            return obj  # cannot carry free text
        if isinstance(obj, bytes | bytearray | memoryview):
            text = bytes(obj).decode("utf-8", "backslashreplace")
        else:
            hook = getattr(obj, "__structlog__", None)
            if callable(hook):
                return self._walk(hook(), depth)
            text = repr(obj)
        return self.scrub_text(text)


_default = Redactor()


def use_redactor(redactor: Redactor) -> None:
    """Make ``redactor`` the one behind `redact_event` and `redact_value`."""
    global _default  # noqa: PLW0603 - one process-wide policy, set at startup
    _default = redactor


def redact_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Structlog processor scrubbing the event with the active `Redactor`; put it last."""
    return _default(logger, method_name, event_dict)


def redact_value(obj: object) -> Any:
    """A scrubbed copy of ``obj`` (for error context, audit rows, anything logged)."""
    return _default.redact(obj)
