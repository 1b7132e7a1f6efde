"""The help formatter every `antiphon` subcommand uses."""

from __future__ import annotations

import argparse
import textwrap


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps prose lines of descriptions and epilogs to the terminal; keeps indented lines (examples)
    and blank lines as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if not line or line[0].isspace():
                lines.append(indent + line)
            else:
                lines.extend(textwrap.wrap(line, width, initial_indent=indent, subsequent_indent=indent))
        return "\n".join(lines)
