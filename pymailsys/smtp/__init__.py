"""SMTP policy shared by the SMTP server and client.

Contract: the access-restriction chain that every smtpd_*_restrictions list
runs through, with Postfix's replies (``restrictions``), and the MAIL FROM /
RCPT TO path parser (``path``). Depends on ``pymailsys.address`` and below.
"""
