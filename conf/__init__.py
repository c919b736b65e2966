"""Default configuration files shipped with pymailsys (main.cf, master.cf, aliases)."""
