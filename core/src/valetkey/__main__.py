"""``python -m valetkey`` runs the CLI."""

from valetkey.cli.main import run

run()
