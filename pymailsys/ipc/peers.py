"""peers - how many connections each local user may hold on a public service.

A service in public/ (pickup, showq, flush, qmgr's trigger) is open to every local
user. ``PeerSlots(per_uid, total)`` gives each connection a slot: ``take(uid)``
is False when that uid already holds ``per_uid`` slots or the service holds
``total``; ``give_back(uid)`` when the connection ends. One user therefore
never holds every slot, and a client over a limit is answered at once rather
than left waiting behind the others. ``refusal(uid, service)`` is that
answer (EX_TEMPFAIL, "try again later") and logs the user once per burst of
refusals, not once per connection.

Trusted peers (root, mail_owner, the service's own uid) are the caller's
business: it does not ask for a slot for them.
"""

from __future__ import annotations

import os
from typing import Any

from pymailsys import log

PER_UID_CONNECTIONS = 10
TOTAL_CONNECTIONS = 100
USER_TRIGGER_TIMEOUT = 10.0  # seconds a user's trigger connection may take to send its bytes


class PeerSlots:
    def __init__(self, per_uid: int = PER_UID_CONNECTIONS,
                 total: int = TOTAL_CONNECTIONS) -> None:
        self.per_uid = per_uid
        self.total = total
        self.held: dict[int, int] = {}
        self.in_use = 0
        self.refused: set[int] = set()

    def take(self, uid: int) -> bool:
        if self.held.get(uid, 0) >= self.per_uid or self.in_use >= self.total:
            return False
        self.held[uid] = self.held.get(uid, 0) + 1
        self.in_use += 1
        return True

    def give_back(self, uid: int) -> None:
        count = self.held.get(uid, 0) - 1
        if count < 0:
            return
        if count:
            self.held[uid] = count
        else:
            del self.held[uid]
        self.in_use -= 1
        self.refused.discard(uid)

    def first_refusal(self, uid: int) -> bool:
        if uid in self.refused:
            return False
        self.refused.add(uid)
        return True

    def refusal(self, uid: int, service: str) -> dict[str, Any]:
        """The reply to a connection over the limit (logged once per burst)."""
        if self.first_refusal(uid):
            log.warning(f"uid={uid}: too many connections to {service} (at most "
                        f"{self.per_uid} per user, {self.total} in all)")
        return {"status": os.EX_TEMPFAIL, "reason": "too many connections, try again later"}
