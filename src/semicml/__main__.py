"""``python -m semicml``: the console command (also what ``torchrun ... -m semicml train`` runs)."""

from .cli import main

main()
