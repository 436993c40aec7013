"""The base of every error a user can fix: a bad config, a missing dataset, a wrong path, an
unreachable storage.

Each module raises its own subclass; the command line prints the message as one line and exits
with code 2. Free of torch, so that catching these costs no import.
"""

__all__ = ["UserError"]


class UserError(Exception):
    """An error whose one-line message tells the user what to fix."""
