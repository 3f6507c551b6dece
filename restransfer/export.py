"""Moved to :mod:`restransfer.inference.export` (whose docstring says what an exported file fixes and how
dynamic sizes behave); this name keeps old imports working. Nothing in the package imports it (the import
contract puts it above every layer)."""

from .inference.export import (
    ExportWrapper,
    export_onnx,
    export_outputs,
    export_torchscript,
    prepare_for_export,
    verify_export,
)

__all__ = [
    "ExportWrapper",
    "export_torchscript",
    "export_onnx",
    "export_outputs",
    "prepare_for_export",
    "verify_export",
]
