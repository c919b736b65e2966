"""The descriptors and status bytes between master and the children it starts.

Contract (Postfix's master/child convention, pymailsys numbering): master
starts every child with

* fd 4 (``LIFELINE_FD``): the read end of the generation's lifeline pipe.
  Master keeps the write end; end of file means master is gone or has
  reloaded: the child stops accepting, finishes what it holds and exits.
* fd 5 (``STATUS_FD``): the write end of the child's own status pipe. The
  child writes ``STATUS_AVAILABLE`` when it can take a client and
  ``STATUS_BUSY`` when it cannot; any other byte is ignored by master.
* fd 6 and up (``LISTEN_FD`` + i): the service's listeners, in master.cf order.

``LIMIT_WARNING_INTERVAL``: seconds between two "has reached its process
limit" warnings of one service (master's, or a many-client process that holds
the service's whole limit).

Master (``pymailsys.daemons.master``) hands these over; the server skeleton
(``pymailsys.server``) takes them. Both import the numbers from here only.
"""

from __future__ import annotations

LIFELINE_FD = 4
STATUS_FD = 5
LISTEN_FD = 6

STATUS_AVAILABLE = b"A"
STATUS_BUSY = b"B"

LIMIT_WARNING_INTERVAL = 1000.0
