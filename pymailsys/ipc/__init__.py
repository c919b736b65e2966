"""Talking between processes: the attribute protocol, service contracts, triggers.

Contract: one framing for every request and reply between daemons and commands
(``attr``), the names of services and of the attributes each request carries
(``services``), and the few-byte wake-ups written to a service's socket or FIFO
(``trigger``). Readers bound what they accept; nothing here trusts its peer.
Depends on ``pymailsys.queue`` (the shared base-128 length encoding) and below.
"""
