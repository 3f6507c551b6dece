"""``restransfer configs [NAME ...] [--path]``: the configs packaged with the toolkit.

Without NAME: one line per config, its name (what ``restransfer train NAME`` and ``_base_: NAME`` take) and what
it is (its ``description``, else the first sentence of its leading comment). With names: each config's YAML, to
start a config of one's own from (``restransfer configs coco_mask_rcnn_r101_fpn > my.yaml``); ``--path`` prints
the files' paths instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..model_zoo import CONFIG_DIR, get_config_file, list_configs

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="configs to print (default: list them all)")
    p.add_argument("--path", action="store_true", help="print file paths instead of names or contents")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.names:
        entries = list_configs()
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            print(f"{e.name:<{width}}  {e.path if args.path else e.summary}".rstrip())
        if not entries:
            print(f"no configs in {CONFIG_DIR}", file=sys.stderr)
            return 1
        return 0
    paths = [get_config_file(name) for name in args.names]  # every name checked before anything is printed
    for path in paths:
        print(path if args.path else path.read_text(encoding="utf-8"), end="\n" if args.path else "")
    return 0
