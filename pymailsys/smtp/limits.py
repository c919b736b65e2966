"""smtpd's client limits: Postfix's smtpd_client_*_limit, counted by anvil.

``ClientLimits(config, mynetworks)`` is built once per smtpd process (with
``counted=False`` in stand-alone mode, ``sendmail -bs``: Postfix's smtpd -S
counts no client either). When any limit is on
(smtpd_client_connection_count_limit, default 50;
smtpd_client_connection_rate_limit, smtpd_client_message_rate_limit,
smtpd_client_recipient_rate_limit, per anvil_rate_time_unit) it keeps one
pymailsys.ipc.anvil client, so that counts and rates hold across all smtpd
processes of the service, as with Postfix's anvil.

A session asks ``ident(addr, name)`` once: None for a client listed in
smtpd_client_event_limit_exceptions (by default mynetworks, computed from
mynetworks_style when unset) or when no limit is on; else it reports its
events under that ident:

* ``connect`` (before the greeting): over the count or the rate limit it
  returns ``421 4.7.0 HOST Error: too many connections from ADDR`` and logs
  ``warning: Connection concurrency limit exceeded: N from NAME[ADDR] for
  service SVC`` (or ``Connection rate limit exceeded``);
* ``message`` (MAIL): ``450 4.7.1 Error: too much mail from ADDR``, with
  ``warning: Message delivery request rate limit exceeded: ...``;
* ``recipient`` (RCPT, VRFY): ``450 4.7.1 Error: too many recipients from
  ADDR``, with ``warning: Recipient address rate limit exceeded: ...``;
* ``disconnect`` at the end of every session that connected, limited or not
  (anvil's rates must see the whole session).

Postfix's replies and log lines, word for word (smtpd.c). Message and
recipient events are reported only when their limit is on. When anvil cannot
be reached the session goes on unlimited, as in Postfix, and the client
logs a warning.
"""

from __future__ import annotations

from pymailsys import config as config_mod
from pymailsys import log
from pymailsys.address import networks as netaddr
from pymailsys.ipc import anvil


class ClientLimits:
    def __init__(self, config: config_mod.Config, mynetworks: netaddr.AddressList,
                 counted: bool = True) -> None:
        self.service = config.get("service_name") or "smtp"
        self.myhostname = config.get("myhostname")
        self.count_limit = config.get_int("smtpd_client_connection_count_limit")
        self.rate_limit = config.get_int("smtpd_client_connection_rate_limit")
        self.message_limit = config.get_int("smtpd_client_message_rate_limit")
        self.recipient_limit = config.get_int("smtpd_client_recipient_rate_limit")
        if (config.is_set("smtpd_client_event_limit_exceptions")
                or config.is_set("smtpd_client_connection_limit_exceptions")):
            self.exceptions = netaddr.address_list(config, "smtpd_client_event_limit_exceptions")
        else:
            self.exceptions = mynetworks
        self.anvil: anvil.AnvilClient | None = None
        limited = (self.count_limit > 0 or self.rate_limit > 0 or self.message_limit > 0
                   or self.recipient_limit > 0)
        if counted and limited:
            self.anvil = anvil.AnvilClient(config.get("queue_directory"),
                                           float(config.get_time("ipc_timeout")))

    def ident(self, addr: str, name: str) -> str | None:
        """The anvil ident of a session, or None when its events are not counted."""
        if self.anvil is None:
            return None
        try:
            if self.exceptions.match(addr, name):
                return None
        except Exception as e:  # a table error: the limits still apply
            log.warning(f"smtpd_client_event_limit_exceptions: {e}")
        return anvil.ident(self.service, addr)

    async def connect(self, ident: str, addr: str, client: str) -> str | None:
        assert self.anvil is not None
        got = await self.anvil.connect(ident)
        if got is None:
            return None
        count, rate = got
        if self.count_limit > 0 and count > self.count_limit:
            log.warning(f"Connection concurrency limit exceeded: {count} from {client} "
                        f"for service {self.service}")
        elif self.rate_limit > 0 and rate > self.rate_limit:
            log.warning(f"Connection rate limit exceeded: {rate} from {client} "
                        f"for service {self.service}")
        else:
            return None
        return f"421 4.7.0 {self.myhostname} Error: too many connections from {addr}"

    async def disconnect(self, ident: str) -> None:
        assert self.anvil is not None
        await self.anvil.disconnect(ident)

    async def message(self, ident: str | None, addr: str, client: str) -> str | None:
        return await self._rate(ident, anvil.MESSAGE, self.message_limit, client,
                                "Message delivery request", f"too much mail from {addr}")

    async def recipient(self, ident: str | None, addr: str, client: str) -> str | None:
        return await self._rate(ident, anvil.RECIPIENT, self.recipient_limit, client,
                                "Recipient address", f"too many recipients from {addr}")

    async def _rate(self, ident: str | None, event: str, limit: int, client: str,
                    what: str, error: str) -> str | None:
        if ident is None or limit <= 0:
            return None
        assert self.anvil is not None
        rate = await self.anvil.rate(event, ident)
        if rate is None or rate <= limit:
            return None
        log.warning(f"{what} rate limit exceeded: {rate} from {client} "
                    f"for service {self.service}")
        return f"450 4.7.1 Error: {error}"

    async def close(self) -> None:
        if self.anvil is not None:
            await self.anvil.close()
