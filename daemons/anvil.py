"""anvil - session count and request rate control, for all smtpd processes at once.

SYNOPSIS
    anvil [generic daemon options]     (master.cf: anvil unix - - n - 1 anvil)

DESCRIPTION
    anvil answers on ``private/anvil`` with the protocol in
    pymailsys.ipc.anvil, as Postfix's anvil(8): per ident (``service:addr``)
    it keeps the simultaneous connection count and, per
    anvil_rate_time_unit, the connection, message, recipient and new TLS
    session counts. A rate is a plain counter that starts again when a time
    unit has passed since its first event (Postfix's "simply reset the
    counter", quicker to react than a moving average). An ident whose count
    drops to zero is forgotten one time unit later.

    Each client connection (one per smtpd process, carrying all its
    sessions) remembers the connects it registered; when it closes, those
    not disconnected are disconnected, so a crashed smtpd frees its counts.
    anvil is resident: the state it holds is the point of it. When master
    reloads (or goes away) it closes every client connection as soon as its
    requests are answered and exits, as Postfix's anvil exits at once: it is
    one process (maxproc 1), so the new generation's anvil starts only when
    this one has gone, and an smtpd session of the old generation that kept
    it would hold back every new client's greeting. smtpd reconnects for its
    next request; counts start again, as after any anvil restart.

SECURITY
    Runs as mail_owner, listens only in private/. A request is two short
    attributes: an unknown request name gets status -1 and a warning; an
    ident longer than pymailsys.ipc.anvil.MAX_IDENT is refused the same way.
    The table holds one small entry per client address seen in the last time
    unit, as Postfix's does.

DIAGNOSTICS
    Every anvil_status_update_time, and when it exits, Postfix's lines:
    ``statistics: max connection rate N/60s for (smtp:ADDR) at Mmm dd hh:mm:ss``,
    ``statistics: max connection count N for (...) at ...``, ``statistics:
    max message rate ...``, ``statistics: max recipient rate ...``,
    ``statistics: max newtls rate ...``, ``statistics: max cache size N at ...``.

CONFIGURATION PARAMETERS
    anvil_rate_time_unit, anvil_status_update_time.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any

from pymailsys import log, server
from pymailsys.ipc import anvil as proto
from pymailsys.ipc import attr
from pymailsys.server import Context

RATES = ("rate", "mail", "rcpt", "newtls")  # the per-time-unit counters of an Entry
_RATE_OF = {proto.CONNECT: "rate", proto.MESSAGE: "mail", proto.RECIPIENT: "rcpt",
            proto.NEWTLS: "newtls"}
_REPORT_NAME = {"rate": "connection", "mail": "message", "rcpt": "recipient",
                "newtls": "newtls"}


@dataclass
class Entry:
    """One (service, client): its connection count and rate counters."""

    count: int = 0
    rates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RATES, 0))
    start: float = 0.0  # monotonic time of the first event of the current time unit
    expiry: asyncio.TimerHandle | None = None


@dataclass
class Peak:
    value: int = 0
    ident: str = ""
    when: float = 0.0  # wall clock, for the log line


class Anvil:
    """The table, its expiry and its peak statistics."""

    def __init__(self, time_unit: float) -> None:
        self.time_unit = time_unit
        self.table: dict[str, Entry] = {}
        self.peaks: dict[str, Peak] = {name: Peak() for name in ("count", *RATES)}
        self.max_cache = Peak()

    def _entry(self, ident: str) -> Entry:
        entry = self.table.get(ident)
        if entry is None:
            entry = self.table[ident] = Entry(start=time.monotonic())
            if len(self.table) > self.max_cache.value:
                self.max_cache = Peak(len(self.table), "", time.time())
        return entry

    def _fresh(self, entry: Entry) -> None:
        now = time.monotonic()
        if entry.start + self.time_unit < now:
            entry.rates = dict.fromkeys(RATES, 0)
            entry.start = now

    def _peak(self, name: str, value: int, ident: str) -> None:
        if value > self.peaks[name].value:
            self.peaks[name] = Peak(value, ident, time.time())

    def connect(self, ident: str) -> Entry:
        entry = self._entry(ident)
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None
        entry.count += 1
        self.count_event(entry, "rate", ident)
        self._peak("count", entry.count, ident)
        return entry

    def count_event(self, entry: Entry, name: str, ident: str) -> int:
        self._fresh(entry)
        entry.rates[name] += 1
        self._peak(name, entry.rates[name], ident)
        return entry.rates[name]

    def disconnect(self, ident: str) -> None:
        entry = self.table.get(ident)
        if entry is None or entry.count <= 0:
            return
        entry.count -= 1
        if entry.count == 0:
            entry.expiry = asyncio.get_running_loop().call_later(
                self.time_unit, self._expire, ident)

    def _expire(self, ident: str) -> None:
        entry = self.table.get(ident)
        if entry is not None and entry.count == 0:
            del self.table[ident]

    def lookup(self, ident: str) -> dict[str, int]:
        entry = self.table.get(ident)
        if entry is None:
            return {"count": 0, **dict.fromkeys(RATES, 0)}
        self._fresh(entry)
        return {"count": entry.count, **entry.rates}

    def report(self) -> None:
        """Log and reset the peaks, as Postfix's anvil_status_dump."""
        unit = int(self.time_unit)
        for name in RATES[:1] + ("count",) + RATES[1:]:
            peak = self.peaks[name]
            if peak.value <= 0:
                continue
            stamp = time.ctime(peak.when)[4:19]
            if name == "count":
                log.info(f"statistics: max connection count {peak.value} for ({peak.ident}) "
                         f"at {stamp}")
            else:
                log.info(f"statistics: max {_REPORT_NAME[name]} rate {peak.value}/{unit}s "
                         f"for ({peak.ident}) at {stamp}")
            self.peaks[name] = Peak()
        if self.max_cache.value > 0:
            log.info(f"statistics: max cache size {self.max_cache.value} "
                     f"at {time.ctime(self.max_cache.when)[4:19]}")
            self.max_cache = Peak()


def handle(anvil: Anvil, mine: collections.Counter[str], req: attr.AttrList) -> dict[str, Any]:
    """One request from one client connection (``mine``: its open connects)."""
    request = req.text("request")
    ident = req.text("ident")
    if request not in proto.REQUESTS or not ident or len(ident) > proto.MAX_IDENT:
        log.warning(f"unrecognized request: \"{request[:100]}\", ignored")
        return {"status": proto.STATUS_FAIL}
    if request == proto.CONNECT:
        entry = anvil.connect(ident)
        mine[ident] += 1
        return {"status": proto.STATUS_OK, "count": entry.count, "rate": entry.rates["rate"]}
    if request == proto.DISCONNECT:
        if mine[ident] > 0:
            mine[ident] -= 1
            anvil.disconnect(ident)
        if not mine[ident]:
            del mine[ident]
        return {"status": proto.STATUS_OK}
    if request == proto.LOOKUP:
        return {"status": proto.STATUS_OK, **anvil.lookup(ident)}
    known = anvil.table.get(ident)
    if known is None:  # anvil restarted since the connect: count it again
        known = anvil.connect(ident)
        mine[ident] += 1
    rate = anvil.count_event(known, _RATE_OF[request], ident)
    return {"status": proto.STATUS_OK, "rate": rate}


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                ctx: Context) -> None:
    anvil: Anvil = ctx.state["anvil"]
    mine: collections.Counter[str] = collections.Counter()

    async def handler(req: attr.AttrList) -> dict[str, Any]:
        return handle(anvil, mine, req)

    try:
        await attr.serve_pipelined(reader, writer, handler, ctx.stopping)
    finally:
        for ident, open_connects in mine.items():
            for _ in range(open_connects):
                anvil.disconnect(ident)


async def _start(ctx: Context) -> None:
    anvil = ctx.state["anvil"] = Anvil(float(ctx.config.get_time("anvil_rate_time_unit")))
    period = float(ctx.config.get_time("anvil_status_update_time"))

    async def report_every_period() -> None:
        while not ctx.stopping.is_set():
            await asyncio.sleep(period)
            anvil.report()

    ctx.state["reporter"] = server.background(report_every_period())


async def _stop(ctx: Context) -> None:
    ctx.state["reporter"].cancel()
    ctx.state["anvil"].report()


def main(argv: list[str] | None = None) -> None:
    server.run("anvil", serve=serve, on_start=_start, on_stop=_stop, resident=True,
               argv=argv)


if __name__ == "__main__":
    main()
