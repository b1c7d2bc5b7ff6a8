"""Keeping patient identifiers (PHI) and secrets out of everything but the response.

The design (see also accesslog.py): no identifier-bearing text is ever formatted into a log line in
the first place. The access log carries route templates, never paths or query strings; error
messages name fields, never values; KServe's and uvicorn's own access and trace lines are off. What
is here is the last line of defence for whatever slips through anyway:

- `PhiHasher.hash(patient_id)` is the only form of a patient id that may appear in logs, metrics or the
  audit log: an HMAC-SHA256 under a secret key, so the same patient gets the same token (records can be
  joined) while nobody without the key can test a guessed id against it.
- `PhiScrubFilter` rewrites log records: every raw identifier registered with `PhiHasher.remember` and
  anything shaped like an MRN, SSN, e-mail address or phone number becomes "[REDACTED]", in the message,
  its arguments and any formatted traceback; so do secrets in URLs (`redact_secrets`). Its cost per
  line is bounded and does not grow with the number of remembered ids: the text (capped at
  `MAX_SCRUB_CHARS`, percent-decoded) is cut into word runs once, and each run is one set lookup. An
  id of several words ("Jane Q. Doe") is remembered as its run sequence, looked up by its first run.
  Use `install()`: a filter added to the root logger only sees records logged on the root logger
  itself (not those propagated from child loggers), so `install()` wraps the log record factory,
  which every record of every logger passes through.
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
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REDACTED = "[REDACTED]"
KEY_ENV = "MEDSERVE_PHI_HASH_KEY"
KEY_FILE_ENV = "MEDSERVE_PHI_HASH_KEY_FILE"
REMEMBER_TTL_S = 60.0
REMEMBER_MAX = 100_000
MAX_SCRUB_CHARS = 32_768
"""Longer texts are cut here before scrubbing (and say so): the scrubber's cost has a bound."""
MAX_PHRASES_PER_HEAD = 8
"""Multi-word ids sharing a first word that are remembered at once (beyond it, the oldest is dropped)."""

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
_WORD = re.compile(r"[\w-]+")
"""A word run: what an id is looked up as. Dots, `&`, `=`, quotes, slashes... all delimit."""

# Secrets: the userinfo of any URL (scheme://user:password@host), and the values of query or
# form parameters whose name says they are a credential.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/\s?#@'\"]*@)+", re.IGNORECASE)
_SECRET_PARAM = re.compile(
    r"(?P<name>(?<![\w.-])(?:[\w.-]*(?:api[_-]?key|apikey|token|secret|passw(?:or)?d|pwd|auth\w*|"
    r"signature|sig|credential|session|access[_-]?key|x-amz-[\w-]+)))(?P<sep>=|%3d)(?P<value>[^&\s#\"']+)",
    re.IGNORECASE,
)


def redact_secrets(text: str) -> str:
    """`text` with URL credentials (user:password@) and credential-named parameters replaced.

    For every URL the runtime prints or returns (MLFLOW_TRACKING_URI in a registry error, a query
    string): `https://u:p%40ss@host/x?api_key=k&n=1` becomes `https://[REDACTED]@host/x?api_key=[REDACTED]&n=1`.
    """
    if "://" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    if "=" in text or "%3d" in text.lower():
        text = _SECRET_PARAM.sub(lambda m: f"{m['name']}{m['sep']}{REDACTED}", text)
    return text


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


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
        self._words: dict[str, int] = {}  # single-word ids (casefolded) -> how many live ids use it
        self._heads: dict[str, list[tuple[str, ...]]] = {}  # first word -> multi-word ids' word runs

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
            if patient_id not in self._expiry:
                self._add(patient_id)
            self._expiry[patient_id] = now + ttl_s
            self._order.append((now + ttl_s, patient_id))
        return self.hash(patient_id)

    def forget(self, patient_id: str) -> None:
        with self._lock:
            if self._expiry.pop(patient_id, None) is not None:
                self._drop(patient_id)

    def _add(self, raw: str) -> None:
        words = _words(raw)
        if len(words) == 1:
            self._words[words[0]] = self._words.get(words[0], 0) + 1
        elif words:
            phrases = self._heads.setdefault(words[0], [])
            phrases.append(tuple(words))
            del phrases[:-MAX_PHRASES_PER_HEAD]

    def _drop(self, raw: str) -> None:
        words = _words(raw)
        if len(words) == 1:
            left = self._words.get(words[0], 0) - 1
            if left > 0:
                self._words[words[0]] = left
            else:
                self._words.pop(words[0], None)
        elif words and words[0] in self._heads:
            phrases = self._heads[words[0]]
            if tuple(words) in phrases:
                phrases.remove(tuple(words))
            if not phrases:
                del self._heads[words[0]]

    def _expire(self, now: float) -> None:
        # Oldest first; an entry only removes its id if the id was not remembered again since.
        while self._order and (self._order[0][0] <= now or len(self._order) > REMEMBER_MAX):
            expiry, raw = self._order.popleft()
            if self._expiry.get(raw) == expiry:
                del self._expiry[raw]
                self._drop(raw)

    def is_registered(self, token: str) -> bool:
        expiry = self._expiry.get(token)
        return expiry is not None and expiry > self._clock()

    def has_registered(self) -> bool:
        if self._order and self._order[0][0] <= self._clock():
            with self._lock:
                self._expire(self._clock())
        return bool(self._expiry)

    def redact(self, text: str) -> str:
        """`text` with every remembered id's words replaced: one pass, one lookup per word."""
        words, heads = self._words, self._heads
        matches = list(_WORD.finditer(text))
        keys = [m[0].casefold() for m in matches]
        spans: list[tuple[int, int]] = []
        i = 0
        while i < len(keys):
            key = keys[i]
            end = i + 1 if key in words else None
            for phrase in heads.get(key, ()):
                if tuple(keys[i:i + len(phrase)]) == phrase:
                    end = max(end or 0, i + len(phrase))
            if end is None:
                i += 1
                continue
            spans.append((matches[i].start(), matches[end - 1].end()))
            i = end
        if not spans:
            return text
        out, at = [], 0
        for start, stop in spans:
            out += [text[at:start], REDACTED]
            at = stop
        out.append(text[at:])
        return "".join(out)


class PhiScrubFilter(logging.Filter):
    """Replaces registered patient ids, PHI-shaped strings and URL secrets in log records."""

    def __init__(self, hasher: PhiHasher | None = None) -> None:
        super().__init__()
        self.hasher = hasher
        self._previous_factory: Callable[..., logging.LogRecord] | None = None

    def scrub(self, text: str) -> str:
        """The text with every PHI-looking part redacted; also usable on error messages."""
        if len(text) > MAX_SCRUB_CHARS:
            text = text[:MAX_SCRUB_CHARS] + f" [cut at {MAX_SCRUB_CHARS} characters]"
        if "%" in text:
            text = urllib.parse.unquote(text, errors="replace")
        text = redact_secrets(text)
        hasher = self.hasher
        if hasher is not None and hasher.has_registered():
            text = hasher.redact(text)
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
