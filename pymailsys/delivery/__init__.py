"""Delivery: what every delivery agent shares.

Contract: the request/reply interface between qmgr and an agent (``agent``),
and writing mbox files and Maildir directories (``mailbox``). Depends on
``pymailsys.ipc`` and below.
"""
