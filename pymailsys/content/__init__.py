"""Message content inspection before the queue: header_checks(5) and body_checks tables
(``checks``) and the MIME structure that says which check class a line belongs to (``mime``);
the Received: headers Postfix's programs write (``received``)."""
