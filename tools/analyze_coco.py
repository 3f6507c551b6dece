#!/usr/bin/env python
"""COCO error analysis of a model or a results file.

Runs restransfer/commands/analyze_coco.py, where the code and its usage are (``--help`` prints them);
the installed command runs the same code as ``restransfer analyze``.
"""

import sys
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.cli import run_tool
from restransfer.commands.analyze_coco import MEMORY_HINT, main

if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint=MEMORY_HINT))
