"""submission - how a local user's message enters the mail system.

A local submission (``sendmail``, ``postdrop``, ``sendmail -bs``) is a
``pymailsys.queue.maildrop.Submission``. This package holds what happens to
it before the queue, one concern per module:

    message   sendmail's input: message lines from standard input, addresses
              on the command line, recipients from headers (-t), -f
    login     the submitter's login name and default full name
    access    authorized_*_users lists and local_login_sender_maps
    protocol  the live request on public/pickup (``s`` + one attribute list)
    handoff   the client: live over public/pickup, else a maildrop file

The uid that decides is always the kernel's (SO_PEERCRED) or a maildrop
file's owner, never a value in the request. Exit statuses are sysexits.h
values (``os.EX_*``).
"""
