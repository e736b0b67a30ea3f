"""Errors of the accounting core, under one root.

A bad *event* is not an exception: it becomes a `Rejection` (see
`ledger.events`), a piece of data that ends up in the dead-letter topic while
the partition moves on. Exceptions are for what must stop the work: a broken
configuration, or an invariant that would let the ledger commit a wrong state.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error raised by focus-ledger."""


class PriceListError(LedgerError):
    """The price list document is invalid; the service must not start with it."""


class InvariantError(LedgerError):
    """A state the ledger must never commit, such as a lot whose costs do not
    add up to what was paid. Fatal: the batch is rolled back and the process
    stops rather than publish a wrong charge."""
