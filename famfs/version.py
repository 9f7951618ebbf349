"""`--version` for the three programs. The installed version is looked up only when asked:
importing importlib.metadata costs every start-up tens of milliseconds (a one-shot play's)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from famfs import format as fmt


def version_text(prog: str) -> str:
    import importlib.metadata

    return f"{prog} {importlib.metadata.version('famfs-agent')} (famfs format version {fmt.CURRENT_VERSION})"


class _VersionFlag(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="show the program's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_text(parser.prog))
        parser.exit()


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_VersionFlag)
