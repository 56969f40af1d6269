"""Same as `python -m gpt2 deploy`."""

import sys

from gpt2.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("deploy"))
