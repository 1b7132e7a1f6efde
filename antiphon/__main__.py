"""`python -m antiphon` runs the `antiphon` command."""

from antiphon.apps.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
