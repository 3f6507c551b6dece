"""What the plotting modules share: matplotlib on its headless backend, figures written as PNG."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")  # no display: the plots are files
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "figure_png", "save_figure"]


def figure_png(fig, dpi: int = 80) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)  # the plots call tight_layout; a "tight" bbox would draw twice
    finally:
        plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path: Optional[Union[str, os.PathLike]], dpi: int = 80) -> bytes:
    """Write the figure as a PNG to ``path`` (folders made as needed; None: do not write) and return the
    bytes; the figure is closed."""
    data = figure_png(fig, dpi)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data
