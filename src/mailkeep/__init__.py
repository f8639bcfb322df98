"""Mailkeep: a mail server whose data survives disasters."""

__version__ = "0.1.0"
