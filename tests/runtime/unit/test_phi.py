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


@pytest.mark.parametrize("template", [
    "GET /predict/{id}.json", "?patient={id}&x=1", "a&{id}&b", "{id}%26x", "path=%2F{id}%2F",
    "id.{id}.", "{pct}", "x+{id}+y", "({id})",
])
def test_registered_ids_are_found_whatever_surrounds_them(hasher: PhiHasher, template: str) -> None:
    hasher.remember(PATIENT)
    pct = "".join(f"%{b:02X}" for b in PATIENT.encode())
    scrubbed = PhiScrubFilter(hasher).scrub(template.format(id=PATIENT, pct=pct))
    assert PATIENT not in scrubbed and "ZX81" not in scrubbed and REDACTED in scrubbed


def test_multi_word_ids_match_across_any_separators(hasher: PhiHasher) -> None:
    hasher.remember("Jane Q. Doe")
    scrub = PhiScrubFilter(hasher).scrub
    for text in ["Jane+Q.+Doe", "name=Jane%20Q.%20Doe&x", "JANE Q DOE"]:
        assert scrub(text).count(REDACTED) == 1 and "Doe" not in scrub(text), text
    assert scrub("Jane Austen") == "Jane Austen"  # a first word alone is not the id


class CountingDict(dict[str, int]):
    lookups = 0

    def __contains__(self, key: object) -> bool:
        CountingDict.lookups += 1
        return super().__contains__(key)


def test_scrub_cost_does_not_grow_with_the_number_of_remembered_ids(hasher: PhiHasher) -> None:
    """The reviewer's DoS: one str.replace per remembered id per line. Now one set lookup per word."""
    for i in range(20_000):
        hasher.remember(f"batch-id-{i:06d}")
    counting = CountingDict(hasher._words)
    hasher._words = counting
    text = "served request id=abc latency 12 ms " * 3  # 21 words
    CountingDict.lookups = 0
    PhiScrubFilter(hasher).scrub(text)
    assert CountingDict.lookups == 21
    long_line = "word " * 100_000
    assert len(PhiScrubFilter(hasher).scrub(long_line)) < 40_000  # cut, and it says so


@pytest.mark.parametrize(("text", "secret"), [
    ("cannot reach http://mlflow:s3cr%40t@mlflow.svc:5000/api/2.0", "s3cr"),
    ("API request to https://user:p4ss@host/x failed", "p4ss"),
    ("GET /predict?api_key=msk_live_123&x=1", "msk_live_123"),
    ("url https://h/x?token=abc.def&sig=zz9", "abc.def"),
    ("url https://h/x?X-Amz-Signature=deadbeef", "deadbeef"),
    ("password=hunter2 in body", "hunter2"),
])
def test_secrets_in_urls_are_redacted(text: str, secret: str) -> None:
    from medserve_runtime.phi import redact_secrets

    assert secret not in redact_secrets(text)
    assert secret not in PhiScrubFilter().scrub(text)
    assert redact_secrets("http://u:p@mlflow.svc:5000/x") == f"http://{REDACTED}@mlflow.svc:5000/x"
