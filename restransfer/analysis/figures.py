"""What the plotting modules share: matplotlib on its headless backend, figures written as PNG, data text
drawn literally.

Category names, run names and keys come from the user's files; matplotlib would read ``$...$`` in them as
mathtext (a name such as ``$5 bill`` fails to draw and ends the report) and, with ``text.usetex``, hand them
to LaTeX. Every plotting function runs under :func:`literal_text`, which turns both off for the figure's
lifetime without changing the caller's matplotlib settings.
"""

from __future__ import annotations

import functools
import io
import os
from typing import Callable, Optional, TypeVar, Union

import matplotlib

from ..fileio import atomic_write_bytes

matplotlib.use("Agg")  # no display: the plots are files
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["plt", "figure_png", "save_figure", "literal_text", "LITERAL_TEXT"]

# matplotlib settings under which every text artist draws its string as given
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}

_F = TypeVar("_F", bound=Callable)


def literal_text(fn: _F) -> _F:
    """Decorate a function that makes (and saves) a figure so that all its text is drawn literally
    (:data:`LITERAL_TEXT`); text artists take the setting when created, ticks at the latest when drawn."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(LITERAL_TEXT):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)  # the plots call tight_layout; a "tight" bbox would draw twice
    finally:
        plt.close(fig)
    return buf.getvalue()


def save_figure(fig: Figure, path: Optional[Union[str, os.PathLike]], dpi: int = 80) -> bytes:
    """Write the figure as a PNG to ``path`` (folders made as needed; None: do not write) and return the
    bytes; the figure is closed."""
    data = figure_png(fig, dpi)
    if path is not None:
        atomic_write_bytes(path, data)
    return data
