"""Same as `python -m gpt2 train`."""

from gpt2.cli import exit_process, run_command

if __name__ == "__main__":
    exit_process(lambda: run_command("train"))
