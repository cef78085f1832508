"""``python -m batchstore`` runs the command line."""

from .cli import main

main()
