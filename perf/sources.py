"""The daemon of another checkout, for old-against-new comparisons (``append_rounds.py``).

A :class:`Source` is a checkout whose ``lighthouse_store`` a daemon runs: the
daemon starts in it (``python -m`` looks in the working directory first) with
the checkout's own interpreter when it has a ``.venv`` (an old checkout may
need the packages of its time: before the protocol package, the daemon
imported the generated code from the client package), else with this one.

Flags its command line does not know are left out for it (read once from
``serve --help``): a checkout from before ``--workers`` gets neither the
``--workers 1`` that :class:`DaemonProcess` passes nor a ``--workers 2`` of a
configuration, and runs as the single process it always was. So a
configuration can name a flag of the new code and still be run against the
old, as what the old code had instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lighthouse_store.testing import DaemonProcess

_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


@dataclass(frozen=True)
class Source:
    path: Path
    python: str
    flags: frozenset[str]  # of ``serve``

    @classmethod
    def at(cls, path: Path) -> Source:
        path = path.resolve()
        venv = path / ".venv" / "bin" / "python"
        python = str(venv) if venv.is_file() else sys.executable
        help_text = subprocess.run(
            [python, "-m", "lighthouse_store", "serve", "--help"],
            cwd=path, capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        return cls(path, python, frozenset(_FLAG.findall(help_text)))

    def known(self, args: Sequence[str]) -> list[str]:
        """``args`` without the flags this source's daemon does not take (and
        their values: ``--flag=value`` or ``--flag value``)."""
        out: list[str] = []
        skipping = False
        for arg in args:
            if arg.startswith("--"):
                name, eq, _ = arg.partition("=")
                skipping = name not in self.flags and not eq
                if name in self.flags:
                    out.append(arg)
            elif skipping:
                skipping = False  # the value of a dropped flag
            else:
                out.append(arg)
        return out


class SourceDaemon(DaemonProcess):
    """A :class:`DaemonProcess` of ``source``'s code, with its interpreter and
    only the flags it knows."""

    def __init__(self, source: Source, data_dir: Path, extra_args: Sequence[str]) -> None:
        super().__init__(data_dir, extra_args=extra_args, cwd=source.path)
        self.source = source

    def command(self) -> list[str]:
        _, module, *rest = super().command()
        assert module == "-m"
        return [self.source.python, module, rest[0], rest[1], *self.source.known(rest[2:])]
