"""lmtp - the LMTP delivery agent: the smtp program under its LMTP name.

Postfix installs one binary as both smtp(8) and lmtp(8) and lets the name it
was started under choose the protocol; this module is that second name
(master.cf: ``lmtp unix - - n - - lmtp``). See ``pymailsys.daemons.smtp``.
"""

from pymailsys.daemons.smtp import main as smtp_main


def main(argv: list[str] | None = None) -> None:
    smtp_main(argv, program="lmtp")


if __name__ == "__main__":
    main()
