"""Errors that stop lbd from starting as configured: the message names what and how to fix it."""

from __future__ import annotations


class CannotStart(Exception):
    """lbd cannot start with these options (a port in use, a path it must not use, a missing
    privilege). Reported as one line, without a traceback."""
