"""Patient-id hashing and the log scrubber, exercised through the real `logging` machinery."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from medserve_runtime.phi import REDACTED, PhiHasher, PhiScrubFilter

PATIENT = "PATIENT-ZX81-4471"


def test_hash_is_stable_for_one_key_and_differs_across_keys() -> None:
    one, same, other = PhiHasher(b"k" * 32), PhiHasher(b"k" * 32), PhiHasher(b"j" * 32)
    token = one.hash(PATIENT)
    assert token == same.hash(PATIENT) == one.hash(PATIENT)
    assert token != other.hash(PATIENT)
    assert token != one.hash(PATIENT + "0")
    assert token.startswith("pt_") and len(token) == 27
    assert PATIENT not in token and "4471" not in token


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        PhiHasher(b"")


def test_from_env_sources(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"file-secret\n")
    by_env = PhiHasher.from_env({"MEDSERVE_PHI_HASH_KEY": "file-secret"})
    by_file_env = PhiHasher.from_env({"MEDSERVE_PHI_HASH_KEY_FILE": str(key_file)})
    by_arg = PhiHasher.from_env({"MEDSERVE_PHI_HASH_KEY": "ignored"}, key_file=key_file)
    assert by_env.hash(PATIENT) == by_file_env.hash(PATIENT) == by_arg.hash(PATIENT)
    with caplog.at_level(logging.WARNING, logger="medserve_runtime.phi"):
        first, second = PhiHasher.from_env({}), PhiHasher.from_env({})
    assert first.hash(PATIENT) != second.hash(PATIENT)
    assert "not be stable" in caplog.text
    with pytest.raises(ValueError, match="cannot read"):
        PhiHasher.from_env({"MEDSERVE_PHI_HASH_KEY_FILE": str(tmp_path / "nope")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        PhiHasher.from_env({}, key_file=tmp_path / "empty")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hasher() -> PhiHasher:
    return PhiHasher(b"test-key", clock=Clock())


def test_scrub_registered_ids_in_any_position(hasher: PhiHasher) -> None:
    scrub = PhiScrubFilter(hasher).scrub
    assert hasher.remember(PATIENT) == hasher.hash(PATIENT)
    hasher.remember("Jane Q. Doe")  # contains delimiters: matched as a phrase
    for text in [
        PATIENT,
        f"patient={PATIENT}.",
        f"[{PATIENT}]",
        f"'{PATIENT}', x",
        f"id:{PATIENT}",
        "Jane Q. Doe!",
    ]:
        assert PATIENT not in scrub(text) and "Jane Q. Doe" not in scrub(text)
        assert REDACTED in scrub(text)
    assert scrub(f"pid {PATIENT} done") == f"pid {REDACTED} done"
    assert scrub("PATIENT-ZX81-44710") == "PATIENT-ZX81-44710"  # another id, not a prefix match


def test_registered_ids_expire_or_are_forgotten() -> None:
    clock = Clock()
    hasher = PhiHasher(b"k", clock=clock)
    scrub = PhiScrubFilter(hasher).scrub
    hasher.remember("P-1", ttl_s=10)
    hasher.remember("P-2", ttl_s=10)
    hasher.forget("P-2")
    assert scrub("P-1 P-2") == f"{REDACTED} P-2"
    clock.now = 11
    assert scrub("P-1") == "P-1"
    hasher.remember("P-3")
    assert not hasher.is_registered("P-1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MRN-0012345", REDACTED),
        ("mrn 99812 seen", f"{REDACTED} seen"),
        ("SSN 123-45-6789", f"SSN {REDACTED}"),
        ("mail jane.doe@example.org now", f"mail {REDACTED} now"),
        ("call (555) 123-4567", f"call {REDACTED}"),
        ("call +1 555.123.4567", f"call {REDACTED}"),
    ],
)
def test_phi_patterns_are_redacted_without_registration(text: str, expected: str) -> None:
    assert PhiScrubFilter().scrub(text) == expected


@pytest.mark.parametrize(
    "text", ["latency 12.5 ms", "2024-01-15T10:00:00Z", "seq 1700000000", "10.0.0.1:8080"]
)
def test_ordinary_numbers_are_left_alone(text: str) -> None:
    assert PhiScrubFilter().scrub(text) == text


@pytest.fixture
def captured(hasher: PhiHasher) -> Iterator[tuple[io.StringIO, PhiScrubFilter]]:
    """A real handler on a child logger that propagates to the root logger, as the server's loggers do."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    scrubber = PhiScrubFilter(hasher)
    scrubber.install()
    try:
        yield stream, scrubber
    finally:
        scrubber.uninstall()
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_log_records_are_scrubbed_in_message_args_and_tracebacks(
    hasher: PhiHasher, captured: tuple[io.StringIO, PhiScrubFilter]
) -> None:
    stream, _ = captured
    hasher.remember(PATIENT)
    log = logging.getLogger("medserve_runtime.test_child")
    log.info("predicting for %s", PATIENT)
    log.info(f"f-string message for {PATIENT} with MRN-77123")
    log.info("mapping args %(pid)s", {"pid": PATIENT})
    log.warning("contact %s", "jane.doe@example.org")
    try:
        raise ValueError(f"bad record for {PATIENT}")
    except ValueError:
        log.exception("failed")
    log.info("bad format %d", PATIENT)  # a broken call must not leak its args either
    output = stream.getvalue()
    assert PATIENT not in output and "MRN-77123" not in output and "jane.doe" not in output
    assert output.count(REDACTED) >= 6
    assert "ValueError: bad record for [REDACTED]" in output
    assert "medserve_runtime.test_child predicting for [REDACTED]" in output


def test_filter_on_a_handler_also_scrubs(hasher: PhiHasher) -> None:
    hasher.remember(PATIENT)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "id %s", (PATIENT,), None)
    assert PhiScrubFilter(hasher).filter(record) is True
    assert record.getMessage() == f"id {REDACTED}"


def test_uninstall_restores_the_factory(hasher: PhiHasher) -> None:
    before = logging.getLogRecordFactory()
    scrubber = PhiScrubFilter(hasher)
    scrubber.install()
    scrubber.install()  # idempotent
    assert logging.getLogRecordFactory() is not before
    scrubber.uninstall()
    assert logging.getLogRecordFactory() is before
