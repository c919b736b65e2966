"""The queue: everything about messages at rest in queue_directory.

Contract: the spool's layout (queue names, hashed subdirectories, queue IDs),
the record format of queue files (Postfix's, so Postfix's postcat reads them),
building and reading queue files, per-message status logs, the listing that
mailq prints, and making or checking the directory tree. Nothing here talks to
another process or reads a lookup table; it depends only on ``pymailsys.config``,
``pymailsys.log`` and ``pymailsys.privileges``.
"""
