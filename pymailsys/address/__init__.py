"""Addresses: Postfix's trivial-rewrite and the network lists it consults.

Contract: rewriting addresses into canonical form (``rewrite``), resolving them
to a transport, next hop and address class (``resolve``), and matching client
addresses against mynetworks-style lists (``networks``). Quoting and the
address tokens are ``pymailsys.rfc822`` (a lower layer, since the queue
listing quotes addresses too). Depends on
``pymailsys.maps`` and below.
"""
