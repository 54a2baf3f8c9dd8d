"""The error contract every command keeps, and the small checks the commands share.

Contract (docs/bad-input.md): bad user input ends with exactly one line on stderr,
``error: <what>``, naming the file / field / option and what was expected; the exit status is 2;
nothing is written (or what this run wrote is removed). Library code raises :class:`InputError`
(or a ``ValueError`` subclass the command converts); :func:`run_command` turns it into that line.

The checks here raise :class:`InputError` with messages of the form ``--option: expected ..., got ...``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad user input; the message names the file/field/option and what was expected."""


def one_line(message: object) -> str:
    """``message`` as a single line (newlines folded), so every error is exactly one ``error:`` line.
    A ``KeyError`` gives its message, not its quoted repr."""
    if isinstance(message, KeyError) and message.args:
        message = message.args[0]
    return " ".join(str(message).split("\n")).strip()


def report(exc: BaseException | str) -> int:
    """Print ``error: <message>`` (one line) to stderr; returns :data:`EXIT_BAD_INPUT`."""
    print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def run_command(body: Callable[[], int | None], errors: tuple[type[BaseException], ...] = (InputError,)) -> int:
    """Run a command's body; an exception of ``errors`` becomes one ``error:`` line and exit code 2."""
    try:
        code = body()
    except errors as exc:
        return report(exc)
    return 0 if code is None else int(code)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors keep the contract: one ``error:`` line, exit 2
    (``--help`` still prints the full usage)."""

    def error(self, message: str):
        raise SystemExit(report(f"{self.prog}: {message} (see --help)"))


def check_number(
    option: str,
    value: float | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    multiple_of: int | None = None,
) -> None:
    """Refuse a numeric option outside ``[low, high]`` (``(`` / ``)`` with ``low_open`` / ``high_open``).

    None passes (an option that was not given). NaN and inf are always refused.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{option}: expected a finite number, got {value!r}")
    if integer and int(value) != value:
        raise InputError(f"{option}: expected an integer, got {value!r}")
    lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
    wanted = " and ".join(s for s in (lo, hi) if s)
    if low is not None and (value < low or (low_open and value == low)):
        raise InputError(f"{option}: expected a value {wanted}, got {value:g}")
    if high is not None and (value > high or (high_open and value == high)):
        raise InputError(f"{option}: expected a value {wanted}, got {value:g}")
    if multiple_of and int(value) % multiple_of:
        raise InputError(f"{option}: expected a multiple of {multiple_of}, got {value:g}")


def check_device(option: str, device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:<i>`` that exists on this machine (``mps`` where available)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"{option}: unknown device {device!r}; expected cpu, cuda or cuda:<index>") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{option}: {device!r} asked for but no CUDA GPU is available here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(f"{option}: {device!r} but this machine has {torch.cuda.device_count()} GPU(s)")
        return device
    if parsed.type == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return device
    raise InputError(f"{option}: unsupported device {device!r}; expected cpu, cuda or cuda:<index>")


def check_input_file(option: str, path: Path, what: str = "file") -> Path:
    """An existing regular file, or a clear error naming the option."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{option}: {what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{option}: {path} is not a file (expected a {what})")
    return path


def check_input_dir(option: str, path: Path, what: str = "folder") -> Path:
    """An existing directory, or a clear error naming the option."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{option}: {what} not found: {path}")
    if not path.is_dir():
        raise InputError(f"{option}: {path} is not a folder (expected a {what})")
    return path


def _writable_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    return probe


def check_output_dir(option: str, path: Path) -> Path:
    """A folder the command may create or write into (not a file, on a writable path)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option}: {path} exists and is not a folder")
    probe = _writable_ancestor(path)
    if not probe.is_dir():
        raise InputError(f"{option}: {probe} is not a folder, so {path} cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{option}: cannot write to {probe} (no write permission)")
    return path


def check_output_file(option: str, path: Path, suffix: str | None = None) -> Path:
    """A file path the command may write (its folder is or can be a folder; not itself a folder)."""
    path = Path(path)
    if suffix and path.suffix != suffix:
        raise InputError(f"{option}: expected a path ending in {suffix}, got {path}")
    if path.is_dir():
        raise InputError(f"{option}: {path} is a folder; expected a file path")
    check_output_dir(option, path.parent if str(path.parent) else Path("."))
    return path


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        try:
            return os.path.samefile(a, b)
        except OSError:
            pass
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: Path, folder: Path) -> bool:
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return base in real.parents


def check_outputs(
    files: dict[str, Path | list[Path]],
    inputs: dict[str, Path | list[Path] | None],
    folders: dict[str, Path | list[Path]] | None = None,
) -> None:
    """Refuse, before any work, outputs that would overwrite an input or cannot be written.

    ``files`` / ``folders`` map an option or output name to the file(s) / folder(s) the command will
    write; ``inputs`` maps each option to what it reads (None: not given). Refused, each in one
    :class:`InputError` line: an output file that is an input (also through a link), an input inside
    an output folder, an output file path that is an existing folder, an output folder path that is an
    existing file, and two outputs at one path.
    """

    def flat(mapping):
        for name, value in (mapping or {}).items():
            for path in value if isinstance(value, (list, tuple)) else [value]:
                if path is not None:
                    yield name, Path(path)

    ins = list(flat(inputs))
    seen: dict[str, str] = {}
    for name, out in flat(files):
        if out.is_dir():
            raise InputError(f"{name}: {out} is an existing folder; expected a file path (nothing was written)")
        key = os.path.realpath(out)
        if key in seen and seen[key] != name:
            raise InputError(f"{name}: {out} is also written as {seen[key]}; give them different paths")
        seen[key] = name
        for in_name, source in ins:
            if _same(out, source):
                raise InputError(
                    f"{name}: {out} is the input {in_name}; writing it would overwrite your file (choose another output path)"
                )
    for name, folder in flat(folders):
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{name}: {folder} is an existing file; expected a folder path (nothing was written)")
        for in_name, source in ins:
            if _same(folder, source) or _inside(source, folder):
                raise InputError(
                    f"{name}: the output folder {folder} holds the input {in_name} ({source}); "
                    "writing there could overwrite your file (choose another output path)"
                )
