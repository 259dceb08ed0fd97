"""metersync.observe.logs: one JSON object per line, context fields, secrets masked."""

from __future__ import annotations

import asyncio
import io
import logging

import orjson
import pytest

from metersync.observe import logs


def capture(fmt: str = "json") -> tuple[logging.Logger, io.StringIO]:
    """A logger writing through the ``--log-format`` formatter into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(fmt))
    logger = logging.getLogger(f"metersync.test_observe_logs.{fmt}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream


def lines(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_one_object_per_line_with_the_base_fields() -> None:
    logger, stream = capture()
    logger.info("tenant %s upload: %d batches", 17, 3)
    logger.warning("multi\nline message")
    first, second = lines(stream)
    assert first["message"] == "tenant 17 upload: 3 batches"
    assert first["level"] == "INFO"
    assert first["logger"] == "metersync.test_observe_logs.json"
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert second["message"] == "multi\nline message"  # escaped: still one line of output
    assert len(stream.getvalue().splitlines()) == 2


def test_extra_fields_and_context_fields() -> None:
    logger, stream = capture()
    with logs.log_context(tenant=17, cycle=4, operation="upload"):
        logger.info("batch done", extra={"batch": 2, "counts": {"sent": 1000}, "seconds": 0.25})
        with logs.log_context(operation="download"):
            logger.info("page done")
        logger.error("failed", extra={"tenant": 18, "error": "boom"})
    logger.info("outside")
    a, b, c, d = lines(stream)
    assert (a["tenant"], a["cycle"], a["operation"], a["batch"]) == (17, 4, "upload", 2)
    assert a["counts"] == {"sent": 1000} and a["seconds"] == 0.25
    assert b["operation"] == "download" and b["tenant"] == 17
    assert c["tenant"] == 18 and c["error"] == "boom"  # extra= wins over the context
    assert "tenant" not in d and "cycle" not in d


async def test_each_task_keeps_its_own_context() -> None:
    logger, stream = capture()

    async def work(tenant: int) -> None:
        logs.bind(tenant=tenant)  # no unbind: the task's context copy dies with it
        await asyncio.sleep(0.01)
        logger.info("done")

    await asyncio.gather(work(1), work(2))
    assert sorted(line["tenant"] for line in lines(stream)) == [1, 2]
    assert "tenant" not in logs.current_context()


def test_exceptions_are_text_and_masked() -> None:
    logger, stream = capture()
    try:
        raise RuntimeError("connect to postgresql://ms:hunter2pass@db/sync failed")
    except RuntimeError:
        logger.exception("cycle crashed")
    (line,) = lines(stream)
    assert "Traceback" in line["exception"]
    assert "hunter2pass" not in stream.getvalue()
    assert "postgresql://ms:***@db/sync" in line["exception"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("dsn postgresql://metersync:s3cr3t-pw@db.local:5432/sync", "s3cr3t-pw"),
        ("dsn host=db user=ms password=s3cr3t-pw dbname=sync", "s3cr3t-pw"),
        ("dsn host=db password='s3cr3t pw' dbname=sync", "s3cr3t pw"),
        ("headers {'X-API-Key': 'sk_live_abcdef123456'}", "sk_live_abcdef123456"),
        ("ClientSystemApiClient(api_key=sk_live_abcdef123456)", "sk_live_abcdef123456"),
        ('{"api_key": "sk_live_abcdef123456"}', "sk_live_abcdef123456"),
        ("Authorization: Bearer eyJhbGciOi.abc.def", "eyJhbGciOi.abc.def"),
    ],
)
def test_redact_masks_secrets(text: str, secret: str) -> None:
    assert secret not in logs.redact(text)
    assert "***" in logs.redact(text)


def test_registered_secrets_are_masked_in_both_formats() -> None:
    logs.register_secret("tenant-key-0123456789")
    logs.register_secret("abc")  # too short to mask safely: ignored
    for fmt in ("json", "text"):
        logger, stream = capture(fmt)
        logger.warning("refused key %s for tenant abc", "tenant-key-0123456789")
        out = stream.getvalue()
        assert "tenant-key-0123456789" not in out
        assert "tenant abc" in out


def test_text_format_stays_human() -> None:
    logger, stream = capture("text")
    logger.info("tenant %s upload", 17)
    out = stream.getvalue()
    assert "INFO metersync.test_observe_logs.text: tenant 17 upload" in out
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(out)


def test_unknown_format_is_named() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml': use one of text, json"):
        logs.formatter("xml")


def test_report_fields_of_the_engine_reports() -> None:
    from metersync.engine.download import DownloadReport
    from metersync.engine.upload import UploadReport

    up = UploadReport(
        17, batches=2, readings_sent=2000, confirmed=1990, rejected=10, seconds=1.23456
    )
    fields = logs.report_fields(up)
    assert fields["tenant"] == 17 and fields["seconds"] == 1.235
    assert fields["counts"]["readings_sent"] == 2000 and fields["counts"]["confirmed"] == 1990
    assert "tenant_id" not in fields["counts"] and "error" not in fields
    down = DownloadReport(18, pages=1, readings=5, error="fetching a page failed")
    assert logs.report_fields(down)["error"] == "fetching a page failed"
    assert logs.report_fields(object()) == {"counts": {}}

    logger, stream = capture()
    logger.info("tenant 17 upload done", extra=fields)
    (line,) = lines(stream)
    assert line["tenant"] == 17 and line["counts"]["rejected"] == 10
