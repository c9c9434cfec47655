"""The ``valetkey`` command line (cyclopts). Commands are registered lazily so ``--help`` imports
nothing heavy; plugins add theirs through ``valetkey_register_commands``."""
