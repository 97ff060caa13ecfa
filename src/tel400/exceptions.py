"""The exceptions tel400 raises.

One root, :class:`Tel400Error`; the others also subclass the builtin a caller
would expect (a bad plan or number is a ``ValueError``), so code that knows
nothing of tel400 still catches them sensibly.
"""

from __future__ import annotations


class Tel400Error(Exception):
    """Root of every error tel400 raises on purpose."""


class PlanError(Tel400Error, ValueError):
    """A plan is invalid.

    The message names where the mistake is (file, 400 number, rule, field)
    and says what was expected; the parts are also kept as attributes so
    that an admin API can point at the field.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        number: str | None = None,
        rule: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.number = number
        self.rule = rule
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source:
            where.append(self.source)
        if self.number:
            where.append(f"number {self.number}")
        if self.rule:
            where.append(f"rule {self.rule!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{': '.join(where)}: {self.message}" if where else self.message

    def __reduce__(self):  # keep the keyword parts across pickling
        return (
            _rebuild_plan_error,
            (self.message, self.source, self.number, self.rule, self.field),
        )


def _rebuild_plan_error(message, source, number, rule, field):
    return PlanError(message, source=source, number=number, rule=rule, field=field)


class NumberError(Tel400Error, ValueError):
    """A string is not a telephone number tel400 can read."""


class BackendError(Tel400Error, RuntimeError):
    """A counter or plan backend failed or did not answer in time."""


class SegmentError(Tel400Error, ValueError):
    """A segment (prefix → province) table is invalid."""
