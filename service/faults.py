"""Named points where the crash harness may kill the process on purpose.

A ledger that claims exactly-once must be killed at its worst moments to show
it. `bench/chaos.py` starts the service with `FOCUS_LEDGER_FAULT_POINTS`, a
list such as `batch_after_commit:0.02,relay_before_commit:0.05`: at each
named point the process dies by SIGKILL with that probability, after writing
one line naming the point to stderr. The setting is empty by default, and
then every call here is a dictionary lookup that finds nothing.

Points:

- `batch_after_fence`: inside the batch transaction, after its first write.
- `batch_after_commit`: the batch is committed; nothing in memory knows yet.
- `relay_before_commit`: rows are sent in an open Kafka transaction.
- `relay_after_commit`: the Kafka transaction is committed; the outbox rows
  are not deleted yet.
"""

from __future__ import annotations

import os
import random
import signal
import sys

from ledger.errors import LedgerError

POINTS = frozenset(
    {
        "batch_after_fence",
        "batch_after_commit",
        "relay_before_commit",
        "relay_after_commit",
    }
)


class FaultSpecError(LedgerError):
    """The fault point list names an unknown point or a bad probability."""


class Faults:
    """Probabilities per point; `strike` may kill the process there."""

    def __init__(self, spec: str = "", seed: int | None = None) -> None:
        self.chances: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, chance = item.partition(":")
            if name not in POINTS:
                raise FaultSpecError(f"unknown fault point {name!r}")
            try:
                probability = float(chance or "1")
            except ValueError:
                raise FaultSpecError(f"bad probability in {item!r}") from None
            if not 0 <= probability <= 1:
                raise FaultSpecError(f"probability of {name} must be in [0, 1]")
            self.chances[name] = probability
        self._random = random.Random(seed)

    def strike(self, point: str) -> None:
        """Die here, now, with the configured probability."""
        chance = self.chances.get(point)
        if chance and self._random.random() < chance:
            sys.stderr.write(f"fault injected: {point}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


NO_FAULTS = Faults()
