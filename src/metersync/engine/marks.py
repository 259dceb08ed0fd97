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

A group of small tenants (the scheduler's group: one connection holding their locks and first
batches) goes one step further: :class:`GroupMarks` marks the confirmed first batches of all
its tenants with ONE UPDATE when the group is done, before their locks are released.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pyarrow as pa

from metersync._failpoints import failpoint

__all__ = ["Confirmed", "GroupMarks", "GroupShare", "MarkFailedError", "MarkQueue"]


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


# -- a group of small tenants: one UPDATE for all of them ------------------------------------


class GroupMarks:
    """The confirmed batches of a group of small tenants, marked by ONE UPDATE when the group
    is done (issue 12: 300 tenants × 100 readings cost 300 UPDATEs and commits, one per tenant,
    on the cycle's critical path).

    The scheduler makes one for a group whose upload locks and first batches it holds (one
    connection, one lock statement, one fetch). A tenant whose whole cycle is that first batch
    hands its confirmed batch to :meth:`share` instead of marking it, and its cycle ends; the
    group runs :meth:`commit` after its last tenant — before the locks are released, so a
    confirmed reading is still marked under its tenant's lock — and each tenant's report is
    completed there (``done``), or ended by the failure (``failed``), before it is recorded.

    The same rules as the per-tenant queue: only what the Client System confirmed is marked;
    a failed UPDATE marks nothing and its readings go up again next cycle, where the Client
    System counts them as duplicates (the idempotent profile only). The window a crash can
    re-send grows from one tenant's batch to one group's (at most 16 small batches).
    """

    def __init__(
        self, mark_many: Callable[[list[tuple[int, pa.Array]]], Awaitable[dict[int, int]]]
    ) -> None:
        self._mark_many = mark_many
        self._shares: list[GroupShare] = []
        #: UPDATEs run (0 or 1).
        self.updates = 0

    def share(
        self,
        tenant_id: int,
        done: Callable[[list[Confirmed], int, float, int], None],
        failed: Callable[[MarkFailedError], None],
    ) -> GroupShare:
        """A tenant's place in the group's mark: what its cycle adds, and whom to tell.
        ``done(batches, marked, seconds, statements)``: they were marked (``statements``:
        the UPDATE counted once, on the group's first tenant); ``failed(error)``: they were
        not."""
        share = GroupShare(tenant_id, done, failed)
        self._shares.append(share)
        return share

    def holds(self, tenant_id: int) -> bool:
        """Whether ``tenant_id`` has confirmed batches waiting for :meth:`commit`."""
        return any(s.tenant_id == tenant_id and s.batches for s in self._shares)

    async def commit(self) -> None:
        """Mark every share's batches with ONE UPDATE and tell each tenant how it went
        (never raises for a failed UPDATE: the tenants' reports carry it)."""
        shares = self._take()
        if not shares:
            return
        pairs = [(s.tenant_id, pa.chunked_array([b.ids for b in s.batches])) for s in shares]
        started = time.perf_counter()
        try:
            failpoint("upload.before_mark")
            marked = await self._mark_many(pairs)  # type: ignore[arg-type]
        except Exception as exc:
            for share in shares:
                failure = MarkFailedError(share.batches, exc)
                failure.__cause__ = exc
                share.failed(failure)
            return
        self.updates += 1
        seconds = time.perf_counter() - started
        for i, share in enumerate(shares):
            share.done(share.batches, marked.get(share.tenant_id, 0), seconds, int(i == 0))

    def abandon(self) -> list[GroupShare]:
        """The group was cancelled: mark nothing; the shares still holding batches."""
        return self._take()

    def _take(self) -> list[GroupShare]:
        """The shares holding batches, taken out of the group (each is committed once)."""
        shares, self._shares = [s for s in self._shares if s.batches], []
        return shares


@dataclass(slots=True)
class GroupShare:
    """One tenant's part of a :class:`GroupMarks`, shaped like :class:`MarkQueue` for its
    upload cycle: ``add`` keeps the batch for the group's UPDATE; nothing is waited for.
    ``done`` and ``failed`` as :meth:`GroupMarks.share` says."""

    tenant_id: int
    done: Callable[[list[Confirmed], int, float, int], None]
    failed: Callable[[MarkFailedError], None]
    batches: list[Confirmed] = field(default_factory=list)
    #: Always ``None``: the group's UPDATE runs after the cycle (:meth:`GroupMarks.commit`).
    failure: MarkFailedError | None = None

    def add(self, batch: Confirmed) -> None:
        """Keep a confirmed batch for the group's UPDATE."""
        self.batches.append(batch)

    def check(self) -> None:
        """Nothing has been marked yet, so nothing has failed."""

    async def room(self, backlog: int) -> None:
        """No back-pressure: a group's tenants send one batch each."""

    async def drain(self) -> None:
        """Nothing to wait for: the group marks after the cycle."""

    async def cancel(self) -> list[Confirmed]:
        """The cycle was cancelled: the batches kept so far, taken back (never marked)."""
        left, self.batches = self.batches, []
        return left
