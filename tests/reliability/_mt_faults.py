"""Faults armed at a chosen upload attempt against the MeterTrack emulation (a test instrument).

The emulation's fault plan counts "the next N uploads", so on its own a fault always hits the
first POST of a cycle — which the engine sends alone (its window opens after the first good
answer). To reach the interesting places (a fault while two or three POSTs are in flight, or in
the middle of a tenant's queue) :class:`ArmingTransport` — the real httpx network transport,
never altering a request's headers or body — arms a fault on the emulation just before the
k-th batch POST attempt leaves (retries count as attempts); it can also hold an attempt back a
little (``lags``) to order the POSTs of a window.

A **connection refusal** cannot be made by the emulation (it is listening), so the transport
routes the chosen attempts to :class:`DeadPort`: a loopback port that is bound but not
listening, where the kernel refuses the connection for real (``ECONNREFUSED``). The client's
own retry policy then decides — this is the "proves nothing was stored" case of issue 10.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx

BATCH_PATH = "/sync/readings/batch"


@dataclass(frozen=True)
class Fault:
    """One fault (or several armed at the same attempt): ``kind``, the emulation spec that
    makes it, and how many connection attempts to refuse first.

    Kinds: ``timeout`` (stored, answered after the client's read timeout), ``drop`` (stored,
    connection closed unanswered), ``fail500`` (MeterTrack's "Batch upload error", nothing
    stored, ``n`` times in a row), ``fail503`` (the error handler's body: nothing stored, but
    nothing says so), ``fail401`` (Invalid API key), ``refuse`` (``refuse`` connection attempts
    refused), ``reject_one`` / ``reject_meter`` (the INSERT of one reading / of every reading of
    one meter fails: skipped, the answer's errors name the meter; ``n`` picks the reading).
    Faults armed together are joined with ``+`` (:meth:`merge`).
    """

    kind: str
    spec: str = ""
    n: int = 1
    refuse: int = 0

    def merge(self, other: Fault) -> Fault:
        """Both faults armed at the same attempt (the refusals come first)."""
        spec = ",".join(x for x in (self.spec, other.spec) if x)
        return Fault(f"{self.kind}+{other.kind}", spec, self.n, self.refuse + other.refuse)

    def __str__(self) -> str:
        refused = f"refuse x{self.refuse}" if self.refuse else ""
        return "; ".join(x for x in (refused, self.spec) if x) or self.kind


class DeadPort:
    """A loopback port bound without ``listen()``: every connection to it is refused."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]

    def close(self) -> None:
        """Free the port."""
        self._sock.close()


@dataclass
class Armed:
    """What the transport did: ``(attempt, fault)`` in the order they fired. Shared by the
    transports of several clients (tenants), it counts their attempts together."""

    fired: list[tuple[int, Fault]] = field(default_factory=list)
    attempts: int = 0
    refused: int = 0
    refuse_left: int = 0


class ArmingTransport(httpx.AsyncHTTPTransport):
    """The real transport; before batch POST attempt ``k`` it arms ``events[k]``.

    ``server`` is the ``fix_server.ServerHandle`` of the emulation (its admin API replaces the
    fault plan: an armed fault cancels one armed earlier and not consumed yet).
    """

    def __init__(
        self,
        server: Any,
        events: dict[int, Fault],
        dead: DeadPort,
        lags: dict[int, float] | None = None,
        log: Armed | None = None,
    ) -> None:
        super().__init__(verify=False)  # plain http on loopback: no CA bundle to load
        self.server = server
        self.events = events  # shared as given (several transports, one schedule)
        self.lags = dict(lags or {})  # attempt -> seconds to wait before sending it (ordering)
        self.dead = dead
        self.log = log if log is not None else Armed()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith(BATCH_PATH):
            self.log.attempts += 1
            fault = self.events.get(self.log.attempts)
            if fault is not None:
                self.log.fired.append((self.log.attempts, fault))
                self.log.refuse_left = fault.refuse
                if fault.spec:
                    # A few ms on the admin API; the emulation runs in its own thread.
                    self.server.set_faults(fault.spec)
            if self.log.refuse_left > 0:
                self.log.refuse_left -= 1
                self.log.refused += 1
                request.url = request.url.copy_with(port=self.dead.port)
            lag = self.lags.get(self.log.attempts)
            if lag:
                await asyncio.sleep(lag)
        return await super().handle_async_request(request)
