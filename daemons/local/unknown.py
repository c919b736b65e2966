"""A local recipient that is neither an alias nor a UNIX account (Postfix's deliver_unknown).

Takes the level and recipient that ``agent.deliver_mailbox`` found no account
for; promises, once per local part and request, Postfix's order:

* the transport ``fallback_transport_maps`` gives for the user name, else
  ``fallback_transport``: the recipient is handed to that agent
  (``agent.delegate``, as Postfix's deliver_pass), which logs the delivery;
  a table that cannot answer defers (4.3.0 ``table lookup failure``);
* ``luser_relay``: ``$user``, ``$local`` (and ``$mailbox``), ``$extension``,
  ``$domain``, ``$recipient``, ``$recipient_delimiter`` and the
  ``${name?value}``/``${name:value}`` forms are expanded (an undefined name,
  ``$home`` and ``$shell`` among them, is empty; no expansion filter, as
  Postfix), and the address is rewritten and resolved as an alias member is
  (``alias.deliver_address``): a local one is delivered in place, logged
  ``to=<relay address>, orig_to=<the recipient as received>``, any other is
  forwarded. ``|command`` and ``/file`` get no special treatment;
* ``postmaster`` and ``MAILER-DAEMON`` without an alias are discarded, with
  Postfix's warning ``required alias not found: NAME`` (2.0.0
  ``discarded``);
* anything else bounces, 5.1.1 ``unknown user: "NAME"``.

smtpd keeps rejecting unknown local users at RCPT while local_recipient_maps is
set (its default): a luser_relay or fallback transport for names that are not
accounts needs ``local_recipient_maps =``, as in Postfix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pymailsys.daemons.local import alias, forward, results

from pymailsys import log
from pymailsys.config import ConfigError, MacroExpander
from pymailsys.delivery.agent import DeliveryResult

if TYPE_CHECKING:
    from pymailsys.daemons.local.agent import Level, LocalAgent, Recipient, Session

REQUIRED_ALIASES = ("postmaster", "mailer-daemon")


async def deliver(agent: LocalAgent, s: Session, lvl: Level, rcpt: Recipient) -> None:
    if s.been_here(f"unknown {rcpt.localpart}"):
        return
    if await agent.delegate(s, lvl, rcpt, agent.fallback_transport_maps,
                            agent.fallback_transport):
        return
    if agent.luser_relay:
        address = luser_relay_address(agent, rcpt)
        if address is None:
            s.done(lvl.req, results.CONFIG_ERROR)
        else:
            await alias.deliver_address(agent, s, lvl, address)
        return
    if rcpt.user in REQUIRED_ALIASES:
        log.warning(f"required alias not found: {rcpt.user}")
        s.done(lvl.req, DeliveryResult.sent("discarded"))
        return
    s.done(lvl.req, DeliveryResult.bounced(f'unknown user: "{rcpt.user}"', "5.1.1"))


def luser_relay_address(agent: LocalAgent, rcpt: Recipient) -> str | None:
    """luser_relay with the recipient's attributes expanded; None (after a warning) when
    its syntax is broken."""
    expander = MacroExpander(forward.expansion_attrs(rcpt, None).get, recurse=False)
    try:
        return expander.expand(agent.luser_relay)
    except ConfigError as e:
        log.warning(f"luser_relay: {e}")
        return None
