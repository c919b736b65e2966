"""pymailsys commands: one module per administrative or submission command."""
