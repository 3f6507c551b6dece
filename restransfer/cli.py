"""Shared pieces of the model command-line tools (``tools/demo.py``, ``tools/export.py``,
``tools/benchmark.py``): a parser that takes a config, ``--weights`` and ``key=value`` overrides."""
from __future__ import annotations

import argparse
from typing import Optional

__all__ = ["model_parser", "config_from_args"]


def model_parser(doc: str, weights_help: str = "detector checkpoint (default: model.weights of the config)"
                 ) -> argparse.ArgumentParser:
    """A parser whose description and epilog come from a tool's docstring (first paragraph / the rest),
    with ``config``, ``--weights`` and trailing ``key=value`` overrides; the tool adds its own options."""
    head, _, rest = doc.partition("\n\n")
    p = argparse.ArgumentParser(description=head, epilog=rest or None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config of the model")
    p.add_argument("--weights", help=weights_help)
    p.add_argument("opts", nargs="*", metavar="key=value", help="config overrides, e.g. test.precision=bf16")
    return p


def config_from_args(args: argparse.Namespace, weights: Optional[str] = None):
    """``load_config(args.config, args.opts)`` with ``--weights`` as ``model.weights``."""
    from .config import load_config

    weights = weights if weights is not None else args.weights
    return load_config(args.config, list(args.opts) + ([f"model.weights={weights}"] if weights else []))
