"""Keeping patient identifiers (PHI) out of everything but the response: a keyed hash and a log scrubber.

- `PhiHasher.hash(patient_id)` is the only form of a patient id that may appear in logs, metrics or the
  audit log: an HMAC-SHA256 under a secret key, so the same patient gets the same token (records can be
  joined) while nobody without the key can test a guessed id against it.
- `PhiScrubFilter` rewrites log records: every raw identifier registered with `PhiHasher.remember` and
  anything shaped like an MRN, SSN, e-mail address or phone number becomes "[REDACTED]", in the message,
  its arguments and any formatted traceback. Use `install()`: a filter added to the root logger only sees
  records logged on the root logger itself (not those propagated from child loggers), so `install()`
  wraps the log record factory, which every record of every logger passes through.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REDACTED = "[REDACTED]"
KEY_ENV = "MEDSERVE_PHI_HASH_KEY"
KEY_FILE_ENV = "MEDSERVE_PHI_HASH_KEY_FILE"
REMEMBER_TTL_S = 60.0
REMEMBER_MAX = 100_000

# The patterns below need "MRN" or three digits in a row, the e-mail pattern an "@": cheap searches for
# those skip the costlier patterns on most log lines.
NUMBER_PATTERNS = re.compile(
    "|".join(
        [
            r"\bMRN[-:#\s]?\d+\b",  # medical record numbers
            r"\b\d{3}-\d{2}-\d{4}\b",  # SSN-like
            r"(?<!\w)(?:\+?1[\s.-]?)?(?:\(\d{3}\)|\d{3})[\s.-]\d{3}[\s.-]\d{4}(?!\w)",  # phone (NANP)
        ]
    ),
    re.IGNORECASE,
)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_MAYBE_NUMBER = re.compile(r"\d{3}|mrn", re.IGNORECASE)
# Registered ids are looked up token by token (a set lookup per word, whatever the number of ids);
# ids that contain one of these delimiters cannot be a single token and are searched for as substrings.
_DELIMITERS = "\\s\"'(),;:=\\[\\]{}<>|/\\\\`"
_TOKEN = re.compile(f"[^{_DELIMITERS}]+")
_HAS_DELIMITER = re.compile(f"[{_DELIMITERS}]")
_TRAILING = ".,!?"


class PhiHasher:
    """Keyed hashing of patient ids, plus a short-lived registry of raw ids for the log scrubber."""

    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not key:
            raise ValueError("the PHI hash key must not be empty")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}  # raw id -> when it stops being scrubbed
        self._order: collections.deque[tuple[float, str]] = collections.deque()
        self._phrases: set[str] = set()  # the registered ids that contain delimiters

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, key_file: Path | None = None) -> PhiHasher:
        """The key from `key_file` (`--phi_hash_key_file`), $MEDSERVE_PHI_HASH_KEY or the file named by
        $MEDSERVE_PHI_HASH_KEY_FILE, in that order; else a random per-process key, with a warning."""
        env = os.environ if environ is None else environ
        path = key_file or (Path(env[KEY_FILE_ENV]) if env.get(KEY_FILE_ENV) else None)
        if key_file is None and env.get(KEY_ENV):
            return cls(env[KEY_ENV].encode())
        if path is not None:
            try:
                key = path.read_bytes().strip()
            except OSError as exc:
                raise ValueError(f"{path}: cannot read the PHI hash key: {exc.strerror}") from exc
            if not key:
                raise ValueError(f"{path}: the PHI hash key file is empty")
            return cls(key)
        logger.warning(
            "no PHI hash key (%s or %s): using a random key, so hashed patient ids will not be stable "
            "across restarts or replicas",
            KEY_ENV,
            KEY_FILE_ENV,
        )
        return cls(secrets.token_bytes(32))

    def hash(self, patient_id: str) -> str:
        mac = self._mac.copy()
        mac.update(patient_id.encode("utf-8", "surrogatepass"))
        return "pt_" + mac.hexdigest()[:24]

    def remember(self, patient_id: str, *, ttl_s: float = REMEMBER_TTL_S) -> str:
        """Register a raw id for scrubbing (for `ttl_s`, or until `forget`) and return its hash."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            self._expiry[patient_id] = now + ttl_s
            self._order.append((now + ttl_s, patient_id))
            if _HAS_DELIMITER.search(patient_id) or patient_id.rstrip(_TRAILING) != patient_id:
                self._phrases.add(patient_id)
        return self.hash(patient_id)

    def forget(self, patient_id: str) -> None:
        with self._lock:
            self._expiry.pop(patient_id, None)
            self._phrases.discard(patient_id)

    def _expire(self, now: float) -> None:
        # Oldest first; an entry only removes its id if the id was not remembered again since.
        while self._order and (self._order[0][0] <= now or len(self._order) > REMEMBER_MAX):
            expiry, raw = self._order.popleft()
            if self._expiry.get(raw) == expiry:
                del self._expiry[raw]
                self._phrases.discard(raw)

    def is_registered(self, token: str) -> bool:
        expiry = self._expiry.get(token)
        return expiry is not None and expiry > self._clock()

    def phrases(self) -> list[str]:
        with self._lock:
            return list(self._phrases) if self._phrases else []

    def has_registered(self) -> bool:
        return bool(self._expiry)


class PhiScrubFilter(logging.Filter):
    """Replaces registered patient ids and PHI-shaped strings in log records with "[REDACTED]"."""

    def __init__(self, hasher: PhiHasher | None = None) -> None:
        super().__init__()
        self.hasher = hasher
        self._previous_factory: Callable[..., logging.LogRecord] | None = None

    def scrub(self, text: str) -> str:
        """The text with every PHI-looking part redacted; also usable on error messages."""
        hasher = self.hasher
        if hasher is not None and hasher.has_registered():
            for phrase in hasher.phrases():
                text = text.replace(phrase, REDACTED)
            if any(hasher.is_registered(token.rstrip(_TRAILING)) for token in _TOKEN.findall(text)):
                text = _TOKEN.sub(lambda m: _redact_token(m.group(0), hasher), text)
        if "@" in text:
            text = EMAIL.sub(REDACTED, text)
        if _MAYBE_NUMBER.search(text):
            text = NUMBER_PATTERNS.sub(REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_phi_scrubbed", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging would print the raw args to stderr otherwise
            message = f"{record.msg} [unformattable log arguments redacted]"
        scrubbed = self.scrub(message)
        record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        setattr(record, "_phi_scrubbed", True)  # noqa: B010 - LogRecord declares no such attribute
        return True

    def install(self) -> None:
        """Scrub every record created from now on, whichever logger or handler it goes to."""
        if self._previous_factory is not None:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            self.filter(record)
            return record

        self._previous_factory = previous
        logging.setLogRecordFactory(factory)

    def uninstall(self) -> None:
        if self._previous_factory is not None:
            logging.setLogRecordFactory(self._previous_factory)
            self._previous_factory = None


def _redact_token(token: str, hasher: PhiHasher) -> str:
    core = token.rstrip(_TRAILING)
    if core and hasher.is_registered(core):
        return REDACTED + token[len(core) :]
    return token
