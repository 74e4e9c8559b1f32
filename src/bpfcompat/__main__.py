"""`python -m bpfcompat` runs the CLI."""

from bpfcompat.cli import main

main()
