"""pymailsys daemons: one module per long-running service started by master."""
