"""`python -m service` is the `slotlog` command."""

from service.cli import main

main()
