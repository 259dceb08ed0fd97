"""Marks of confirmed batches, merged while one runs: a group commit (issue 12).

Against a Client System that answers faster than the sync database commits an UPDATE, marking
each batch before the next answer is read puts one statement and one commit (a WAL flush) per
batch on the upload's critical path: measured, 100 marks of 1,000 readings cost 1.1–1.3 s
where 50 marks of 2,000 cost 0.85–1.05 s — about 2.5 ms per statement and commit. So the upload
cycle (idempotent profile) hands each plainly confirmed batch — every reading counted inserted
or duplicate, nothing rejected, nothing skipped — to a :class:`MarkQueue`: one UPDATE runs at a
time in the background, and the batches confirmed while it runs are marked together by the next
one (ONE statement and ONE commit for all of them). When marks keep up, each batch still gets
its own; when they fall behind, they merge instead of queueing.

What does not change: a reading is marked only after the Client System confirmed it; the cycle
waits for every mark before it ends (so before the tenant's lock is released); a failed mark
ends the cycle, and the readings of the batches it carried go up again next cycle, where the
Client System counts them as duplicates — the reason only the idempotent profile merges (the
claiming profile settles each batch in line, as before).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pyarrow as pa

from metersync._failpoints import failpoint

__all__ = ["Confirmed", "MarkFailedError", "MarkQueue"]


@dataclass(frozen=True, slots=True)
class Confirmed:
    """A batch the Client System confirmed whole, waiting for its mark."""

    batch_no: int
    rows: int
    ids: pa.Array
    inserted: int
    duplicates: int


class MarkFailedError(Exception):
    """The UPDATE marking ``batches`` failed (``__cause__``: why); none of them is marked."""

    def __init__(self, batches: list[Confirmed], cause: BaseException) -> None:
        super().__init__(batches, cause)
        self.batches = batches
        self.cause = cause

    def __str__(self) -> str:
        # Built when read: batches confirmed after the failure join ``batches`` (never marked).
        numbers = [b.batch_no for b in self.batches]
        if not numbers:  # the UPDATE committed; what came after it failed
            which = "after a mark"
        elif len(numbers) == 1:
            which = f"marking batch {numbers[0]}"
        else:
            which = f"marking batches {', '.join(str(n) for n in numbers)}"
        return f"{which} failed: {type(self.cause).__name__}: {self.cause}"


class MarkQueue:
    """Marks confirmed batches in the background, one UPDATE at a time, merging those that
    arrive while one runs.

    ``mark(ids)`` (the batches' ids as one chunked array) runs the UPDATE and returns how
    many rows it newly marked; ``done(batches, marked, seconds)`` is called after each UPDATE
    committed, with the batches it carried.
    After a failure nothing more is marked: :attr:`failure` holds it (with every batch not
    marked), :meth:`check` and :meth:`drain` raise it.
    """

    def __init__(
        self,
        mark: Callable[[pa.ChunkedArray], Awaitable[int]],
        done: Callable[[list[Confirmed], int, float], None],
    ) -> None:
        self._mark = mark
        self._done = done
        self._waiting: list[Confirmed] = []
        self._task: asyncio.Future[None] | None = None
        self._progress = asyncio.Event()  # set after each UPDATE (or the failure)
        #: The failed mark (``None`` while all went well).
        self.failure: MarkFailedError | None = None
        #: UPDATEs run so far (each one carried one or more batches).
        self.updates = 0

    def add(self, batch: Confirmed) -> None:
        """Queue a confirmed batch; its mark starts now when none is running. After a failure
        it is not marked: it joins the failure's batches."""
        if self.failure is not None:
            self.failure.batches.append(batch)
            return
        self._waiting.append(batch)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def room(self, backlog: int) -> None:
        """Wait while more than ``backlog`` batches wait for a mark: back-pressure, so that a
        slow sync database holds up the POSTs instead of letting confirmed, unmarked readings
        pile up (each would go again after a crash)."""
        while len(self._waiting) > backlog and self._task is not None and self.failure is None:
            self._progress.clear()
            await self._progress.wait()

    def check(self) -> None:
        """Raise the failed mark, if one failed."""
        if self.failure is not None:
            raise self.failure

    async def drain(self) -> None:
        """Wait until every queued batch is marked; raise the failed mark, if one failed."""
        if self._task is not None:
            await asyncio.shield(self._task)
        self.check()

    async def cancel(self) -> list[Confirmed]:
        """Stop marking (the running UPDATE is cancelled; its transaction rolls back) and
        return the batches left unmarked."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        left, self._waiting = self._waiting, []
        if self.failure is not None:
            left = self.failure.batches + left
        return left

    async def _run(self) -> None:
        try:
            while self._waiting and self.failure is None:
                group, self._waiting = self._waiting, []
                # One parameter for them all: the store's id_array combines the chunks.
                ids = pa.chunked_array([b.ids for b in group])
                started = time.perf_counter()
                try:
                    failpoint("upload.before_mark")
                    marked = await self._mark(ids)
                except asyncio.CancelledError:
                    self._waiting = group + self._waiting
                    raise
                except Exception as exc:
                    self._fail(group, exc)
                    return
                self.updates += 1
                self._done(group, marked, time.perf_counter() - started)
                self._progress.set()
                try:
                    failpoint("upload.after_mark")
                except Exception as exc:
                    self._fail([], exc)
                    return
        finally:
            self._task = None
            self._progress.set()

    def _fail(self, group: list[Confirmed], exc: Exception) -> None:
        rest, self._waiting = self._waiting, []
        self.failure = MarkFailedError(group + rest, exc)
        self.failure.__cause__ = exc
