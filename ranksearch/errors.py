"""The base of every error a user can fix: a bad config, a missing dataset, a wrong path, an
unreachable storage.

Each module raises its own subclass; the command line prints the message as one line and exits
with code 2. Free of torch, so that catching these costs no import.
"""

import re

from pydantic import ValidationError

__all__ = ["UserError", "EXIT_USER_ERROR", "validation_message"]

#: The exit status of a command that stopped on a :class:`UserError`.
EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error whose one-line message tells the user what to fix.

    With ``argument``, the error is about the value of one argument, named as Python calls
    it (``max_flops: expected ...``); :meth:`for_command_line` names its flag instead
    (``--max-flops: expected ...``), so that each face names what its user typed.
    """

    #: The argument the error is about (set by ``__init__``; a subclass that also derives
    #: from a built-in error may reach the built-in's ``__init__`` first and keep None).
    argument: str | None = None
    detail: str = ""
    flag: str | None = None

    def __init__(self, message: str, *, argument: str | None = None,
                 flag: str | None = None) -> None:
        super().__init__(f"{argument}: {message}" if argument else message)
        self.argument, self.detail, self.flag = argument, message, flag

    def for_command_line(self) -> str:
        """The message, with the argument named by its command-line flag: ``flag``, else
        ``--`` and the argument's name with dashes."""
        if self.argument is None:
            return str(self)
        return f"{self.flag or '--' + self.argument.replace('_', '-')}: {self.detail}"


def validation_message(error: ValidationError, source: str) -> str:
    """One line saying what is wrong in ``source`` and where, from pydantic's errors."""
    # A value that fits no branch of a union yields one error per branch. The most useful is
    # a validator's own message (e.g. "low must not exceed high"), else the deepest location
    # (the element of a list that is wrong rather than "not a string").
    first = min(error.errors(), key=lambda e: (e["type"] != "value_error", -len(e["loc"])))
    # Pydantic reports union branches as extra location parts ("float", "list[float]",
    # "Range", ...); keep only the path the user wrote.
    parts = [str(p) for p in first["loc"]]
    branch = re.compile(r"[A-Za-z_]+\[.*\]|float|int|str|bool|Range|function-.*")
    location = ".".join(p for p in parts if not branch.fullmatch(p)) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "required field is missing"
    given = first.get("input")
    quiet = ("missing", "extra_forbidden", "value_error")
    shown = "" if first["type"] in quiet else f" (got {given!r:.60})"
    if isinstance(given, dict) and first["type"] != "extra_forbidden":
        shown = ""
    return f"{source}: {location}: {message}{shown}"
