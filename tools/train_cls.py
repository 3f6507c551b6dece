#!/usr/bin/env python
"""Train an image classifier from a YAML config.

Runs restransfer/commands/train_cls.py, where the code and its usage are (``--help`` prints them);
the installed command runs the same code as ``restransfer train CONFIG (classification configs)``.
"""

import sys
from pathlib import Path

try:
    import restransfer  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restransfer.cli import run_tool
from restransfer.commands.train_cls import MEMORY_HINT, main

if __name__ == "__main__":
    sys.exit(run_tool(main, memory_hint=MEMORY_HINT))
