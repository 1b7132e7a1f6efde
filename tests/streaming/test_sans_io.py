"""The wire layer is sans-I/O (design, example 2): importing it pulls in no event loop, socket or torch."""

from __future__ import annotations

import subprocess
import sys

MODULES = ["moshi_protocol", "kyutai_protocol", "auth", "ogg", "query", "errors"]


def test_protocol_modules_import_no_io_and_no_torch():
    code = (
        "import sys\n"
        + "".join(f"import antiphon.streaming.{m}\n" for m in MODULES)
        + "print(','.join(m for m in ('torch', 'asyncio', 'socket', 'websockets', 'aiohttp', 'sphn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
