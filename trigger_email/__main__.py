"""`python -m trigger_email …` is the same as the `trigger-email` command."""

from trigger_email.cli import main

main()
