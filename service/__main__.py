"""`python -m service` is the `focus-ledger` command."""

from service.cli import main

main()
