from gpt2.cli import exit_process, main

exit_process(main)
