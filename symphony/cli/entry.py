"""The `symphony` console script. Importing the command line loads torch and transformers (seconds), so a
Ctrl-C then must end as quietly as one during a command."""
from __future__ import annotations

import sys


def main() -> None:
    try:
        from symphony.cli.main import main as cli
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while starting; nothing was done\n")
        sys.exit(130)
    cli()
