"""The `antiphon` command line: one entry point (`apps/cli.py`), one module per subcommand."""
