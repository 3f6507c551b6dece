"""What the command-line tools in ``tools/`` share.

``run_tool(main)`` is the one way a tool runs: every ``if __name__ == "__main__":`` goes through it. It
takes ``--debug`` off the command line, runs ``main(argv)`` and turns a failure into one line on stderr:

* an input error, the user's to fix: one of the toolkit's input-error types (:mod:`restransfer.errors`:
  bad config, data, weights or checkpoint, locked output folder, ...) or an ``OSError`` (missing or
  unreadable file, unwritable output, full disk): ``error: <what, where, what to do>``, exit status 2;
* running out of memory: ``error: out of memory ...`` naming the setting that lowers it, exit status 2;
* Ctrl-C: ``interrupted``, exit status 130;
* the reader of stdout went away (``tool --help | head -1``): no traceback, exit status 141, as a shell
  reports for a program ended by SIGPIPE;
* anything else is a bug in the toolkit, whatever its type (a bare ``ValueError``, ``KeyError``, ...):
  ``error: internal error (<type>: <message>); rerun with --debug for the traceback``, exit status 1.

A message is printed on one ``error:`` line when it carries a traceback (an exception re-raised from a
worker process): its first line, and the original exception's line from the end of the dump.

With ``--debug`` the exception propagates and Python prints the full traceback.

``model_parser`` and ``config_from_args`` are the parser pieces of the model tools (demo, export,
benchmark): a config, ``--weights`` and ``key=value`` overrides.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys
from types import ModuleType
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig

from .config import SolverConfig, load_config
from .errors import InputError, is_out_of_memory

__all__ = [
    "run_tool",
    "describe_failure",
    "note_output",
    "user_error_classes",
    "USER_ERRORS",
    "TRAIN_MEMORY_HINT",
    "EVAL_MEMORY_HINT",
    "training_parser",
    "parse_training_args",
    "model_parser",
    "config_from_args",
    "add_weights_argument",
    "add_path_options",
    "add_size_argument",
    "split_weights",
    "deferred_module",
    "imported",
]

USER_ERROR, INTERNAL_ERROR, INTERRUPTED, OUTPUT_CLOSED = 2, 1, 130, 141

# Failures that are the user's to fix; their messages already say what is wrong and where. Named by
# "module.Class": a class counts once its module is imported (an exception of it cannot exist before),
# so checking costs no import and a class that a module does not define (yet) is simply absent. A bare
# ValueError, KeyError, TypeError or RuntimeError is not among them: the toolkit raises its own types
# (errors.py) for input problems, so those are bugs.
USER_ERRORS: Tuple[str, ...] = (
    "restransfer.errors.InputError",  # ConfigError, DataError (IlsvrcFormatError, VocFormatError, ...),
    # WeightsError, CheckpointError, OutputDirLocked, NonFiniteLossError, TrainingOutOfMemory, DeviceError
    "builtins.OSError",  # missing/unreadable/unwritable files, disk full, CorruptImageError
)

TRAIN_MEMORY_HINT = (
    "lower the images per forward pass (solver.{batch_key}) or the training image size "
    "(input.min_size_train, input.max_size_train); for the evaluation, test.ims_per_batch or "
    "input.min_size_test / input.max_size_test"
)
EVAL_MEMORY_HINT = "lower test.ims_per_batch or the image size (input.min_size_test, input.max_size_test)"
_GENERIC_MEMORY_HINT = "use smaller inputs or batches"

_DEBUG_HELP = "  --debug               on a failure, show the Python traceback instead of a one-line error"

# where the running tool writes: (how the user moves it, e.g. "output_dir=PATH", path); see note_output
_outputs: List[Tuple[str, str]] = []


def note_output(option: str, path: Union[str, os.PathLike, None]) -> None:
    """Record where the running tool writes, as the option that moves it (``"output_dir"`` for a config
    key, ``"--output"`` for a flag) and its value. A write that fails without naming its file (a disk that
    fills up during a write) is then reported with this path, and write errors suggest the option."""
    if path:
        _outputs.append((f"{option} PATH" if option.startswith("-") else f"{option}=PATH", str(path)))


class _DeferredModule:
    """Stands for a module until one of its attributes is used, then imports it (see deferred_module)."""

    def __init__(self, name: str) -> None:
        self.__dict__["_name"] = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):  # copy, pickle, doctest, ... ask without importing
            raise AttributeError(attr)
        return getattr(importlib.import_module(self.__dict__["_name"]), attr)

    def __repr__(self) -> str:
        name = self.__dict__["_name"]
        return f"<deferred module {name!r} ({'imported' if name in sys.modules else 'not imported yet'})>"


def deferred_module(name: str) -> Any:
    """The module ``name`` (absolute, e.g. ``"restransfer.engine.trainer"``), imported when one of its
    attributes is first used. A command declares its implementation with it at the top of its module, as
    PEP 810's ``lazy import`` would: argument parsing and the config's checks import neither torch nor the
    model code, so ``--help``, a mistyped option or key, or a missing config is answered in a fraction of a
    second instead of after the seconds that importing torch and torchvision take. Only commands use it:
    every layer below imports at module level (and the import contract sees those imports)."""
    return _DeferredModule(name)


def imported(module: Any) -> ModuleType:
    """The module itself: a :func:`deferred_module` is imported now, a module returned as it is."""
    return importlib.import_module(module.__dict__["_name"]) if isinstance(module, _DeferredModule) else module


def user_error_classes() -> Tuple[type, ...]:
    """The classes of ``USER_ERRORS`` whose modules are imported."""
    classes = []
    for name in USER_ERRORS:
        module, _, cls = name.rpartition(".")
        found = getattr(sys.modules.get(module), cls, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            classes.append(found)
    return tuple(classes)


def _training_batch_key() -> str:
    """``ims_per_device`` where the config has it (images per forward pass), else ``ims_per_batch``."""
    return (
        "ims_per_device" if "ims_per_device" in getattr(SolverConfig, "__dataclass_fields__", {}) else "ims_per_batch"
    )


# errno -> (what is wrong, what to do besides writing elsewhere); None: writing elsewhere is the fix
_WRITE_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space there"),
    errno.EROFS: ("the file system is read-only", None),
    errno.EACCES: ("permission denied", "give this user access"),
    errno.EPERM: ("operation not permitted", "give this user access"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", None),
    errno.EEXIST: ("it exists and is not a folder", "remove it"),
}
_READ_ERRORS = {
    errno.ENOENT: "no such file or folder: check the path",
    errno.EISDIR: "this is a folder where a file is expected: give a file path",
}


def _os_error_message(e: OSError) -> str:
    """``where: what is wrong: what to do`` for an error the operating system raised; our own OSErrors
    (one message argument, e.g. a missing dataset file with the docs to read) are already written so."""
    if e.strerror is None or e.errno is None:
        return str(e)
    if e.filename is None:  # e.g. a write to an open file
        where = "while writing to " + " or ".join(path for _, path in _outputs) if _outputs else None
    elif e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    else:
        where = str(e.filename)
    if e.errno in _WRITE_ERRORS:
        what, fix = _WRITE_ERRORS[e.errno]
        elsewhere = f"choose another {' or '.join(o for o, _ in _outputs)}" if _outputs else "write elsewhere"
        advice = f"{what}: {fix}, or {elsewhere}" if fix else f"{what}: {elsewhere}"
    else:
        advice = _READ_ERRORS.get(e.errno, e.strerror)
    return f"{where}: {advice}" if where else f"{advice} (the path was not reported)"


# a line of a Python traceback: its header (also torch's "Original Traceback ...") or a frame
_TRACEBACK_LINE = re.compile(r'(.*\bTraceback \(most recent call last\):\s*$|\s*File ".*", line \d+)')
# the module path before an exception's name at the end of a dump ("restransfer.errors.DataError: ...")
_MODULE_PATH = re.compile(r"^(?:\w+\.)+(?=\w+(?::|$))")


def _one_line_message(text: str) -> str:
    """The text to print after ``error: `` for an exception's message ``text``.

    A message that carries a traceback (torch re-raises an exception of a DataLoader worker or a spawned
    process with the worker's traceback in its message) becomes its first non-empty line, followed by
    the dump's last line, the original exception (``Caught DataError in DataLoader worker process 0:
    DataError: ...``). Any other message is kept whole, leading blank lines and whitespace removed, so
    that ``error: `` is never followed by nothing.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    rest = lines[1:]
    if not any(_TRACEBACK_LINE.match(line) for line in rest):
        return text.strip()
    head = lines[0].strip()
    last = rest[-1]
    if last[:1].isspace() or _TRACEBACK_LINE.match(last):  # the dump ends inside a frame: nothing to add
        return head
    return f"{head.rstrip('.:')}: {_MODULE_PATH.sub('', last.strip())}"


def describe_failure(e: BaseException, memory_hint: str = _GENERIC_MEMORY_HINT) -> Tuple[int, str]:
    """``(exit status, message)`` for an exception that ended a tool; the message follows ``error: ``.

    Input errors (the toolkit's types, :data:`USER_ERRORS`) and running out of memory are status 2; any
    other exception is an internal error, status 1, whose message says so and how to see the traceback.
    """
    if is_out_of_memory(e) and not isinstance(e, InputError):  # TrainingOutOfMemory names its setting itself
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        if "{batch_key}" in memory_hint:
            memory_hint = memory_hint.format(batch_key=_training_batch_key())
        return USER_ERROR, f"out of memory ({first}): {memory_hint}"
    if isinstance(e, user_error_classes()):
        if isinstance(e, OSError):
            return USER_ERROR, _one_line_message(_os_error_message(e)) or type(e).__name__
        return USER_ERROR, _one_line_message(str(e)) or type(e).__name__
    message = _one_line_message(str(e))
    what = f"{type(e).__name__}: {message}" if message else type(e).__name__
    return INTERNAL_ERROR, f"internal error ({what}); rerun with --debug for the traceback"


def _split_debug(argv: Sequence[str]) -> Tuple[bool, List[str]]:
    """``(--debug given, argv without it)``; arguments after ``--`` are left alone."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:end] if a != "--debug"]
    return len(head) < end, head + argv[end:]


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader is gone; if so, stdout is pointed at the null device so that
    nothing written later (Python's own flush at exit included) fails again."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()  # a pipe's write end with no reader polls as an error
        poller.register(fd, select.POLLOUT)
        closed = any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no file descriptor (captured output), no poll (Windows)
        return False
    if closed:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    return closed


def run_tool(
    main: Callable[[List[str]], Optional[int]],
    argv: Optional[Sequence[str]] = None,
    *,
    memory_hint: str = _GENERIC_MEMORY_HINT,
) -> int:
    """Run a tool's ``main(argv)`` and return its exit status, reporting a failure as described in the
    module docstring. ``memory_hint`` says which settings lower the memory this tool needs
    (``TRAIN_MEMORY_HINT``, ``EVAL_MEMORY_HINT`` or the tool's own options).

    Use: ``if __name__ == "__main__": sys.exit(run_tool(main, memory_hint=EVAL_MEMORY_HINT))``.
    """
    debug, argv = _split_debug(sys.argv[1:] if argv is None else argv)
    del _outputs[:]
    try:
        try:
            return main(argv) or 0
        except SystemExit as e:  # argparse's usage errors and --help keep their behaviour
            if e.code in (0, None) and ("-h" in argv or "--help" in argv):
                print(_DEBUG_HELP)
            raise
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:
        if isinstance(e, BrokenPipeError) and _stdout_closed():
            return OUTPUT_CLOSED
        if debug:
            raise
        code, message = describe_failure(e, memory_hint)
        sys.stdout.flush()
        print(f"error: {message}", file=sys.stderr)
        return code


def add_weights_argument(p: argparse.ArgumentParser, help: str) -> None:
    """``--weights CKPT [CKPT ...]``: one checkpoint, or several for the ResNet paper's ensemble. Read it
    back with :func:`split_weights`."""
    p.add_argument("--weights", nargs="+", metavar="CKPT", help=f"{help}; several: an ensemble of them")


def add_path_options(p: argparse.ArgumentParser, **helps: str) -> None:
    """One string option per keyword, in the order given (``image_list`` gives ``--image-list``), with the
    keyword's value as its help text: the file paths of a tool's file mode; an option not given reads None."""
    for name, help in helps.items():
        p.add_argument("--" + name.replace("_", "-"), help=help)


def add_size_argument(p: argparse.ArgumentParser, help: str, default: Optional[Tuple[int, int]] = (800, 1067)) -> None:
    """``--size H W``: an image size in pixels, height first (``args.size``)."""
    p.add_argument("--size", type=int, nargs=2, default=default, metavar=("H", "W"), help=help)


def split_weights(weights: Optional[List[str]], overrides: Sequence[str]) -> Tuple[Optional[List[str]], List[str]]:
    """``(checkpoints, overrides)`` from ``--weights`` and the positional overrides: ``key=value`` items
    written after the checkpoints land in ``--weights`` (it takes several values) and go back to the
    overrides, unless a file of that name exists."""
    import os

    if not weights:
        return None, list(overrides)
    moved = [w for w in weights if "=" in w and not os.path.exists(w)]
    files = [w for w in weights if w not in moved]
    return files or None, moved + list(overrides)


def training_parser(description: str, config_help: str = "YAML config file") -> argparse.ArgumentParser:
    """The training tools' parser: CONFIG, ``--resume``, ``--restart``; add tool options, then
    :func:`parse_training_args`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help=config_help)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    parser.add_argument(
        "--restart", action="store_true", help="start from iteration 0 even though output_dir holds checkpoints"
    )
    return parser


def parse_training_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse ``argv`` with trailing ``key=value`` overrides; ``--resume`` with ``--restart`` is a usage error."""
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)
    if args.resume and args.restart:
        parser.error("--resume continues the run in output_dir and --restart starts it again: give one of them")
    return args


def model_parser(
    doc: str, weights_help: str = "detector checkpoint (default: model.weights of the config)"
) -> argparse.ArgumentParser:
    """A parser whose description and epilog come from a tool's docstring (first paragraph / the rest),
    with ``config``, ``--weights`` and trailing ``key=value`` overrides; the tool adds its own options."""
    head, _, rest = doc.partition("\n\n")
    p = argparse.ArgumentParser(
        description=head, epilog=rest or None, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", help="YAML config of the model")
    p.add_argument("--weights", help=weights_help)
    p.add_argument("opts", nargs="*", metavar="key=value", help="config overrides, e.g. test.precision=bf16")
    return p


def config_from_args(args: argparse.Namespace, weights: Optional[str] = None) -> DictConfig:
    """``load_config(args.config, args.opts)`` with ``--weights`` as ``model.weights``."""
    weights = weights if weights is not None else args.weights
    return load_config(args.config, list(args.opts) + ([f"model.weights={weights}"] if weights else []))
