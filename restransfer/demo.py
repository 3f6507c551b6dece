"""Moved to :mod:`restransfer.inference.demo`; this name keeps old imports working. Nothing in the package
imports it (the import contract puts it above every layer)."""

from .inference.demo import IMAGE_EXTENSIONS, find_images, run_demo

__all__ = ["IMAGE_EXTENSIONS", "find_images", "run_demo"]
