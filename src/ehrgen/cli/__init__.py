"""The ``ehrgen`` command.

Heavy modules (numpy, polars, torch) are imported inside the commands that use them, so
``ehrgen --help`` answers at once. An :class:`~ehrgen.errors.EhrgenError` is printed as
one line and exits with status 2; ``ehrgen --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.text import Text

from ehrgen.cli._common import console, errors
from ehrgen.errors import EhrgenError

app = typer.Typer(
    help="Learn from real EHRs and generate realistic, private synthetic patients.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(
    help="Build, import, export and inspect cohorts.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
_state = {"debug": False}


@app.callback(invoke_without_command=True)
def _main(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.")
    ] = False,
) -> None:
    _state["debug"] = debug
    if version:
        from ehrgen import __version__

        console.print(f"ehrgen {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())
        raise typer.Exit()
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_path=False, show_time=False)],
    )


def main() -> None:
    """Entry point of the ``ehrgen`` console script."""
    try:
        app()
    except EhrgenError as error:
        if _state["debug"]:
            raise
        message = " ".join(str(error).split())
        errors.print(Text.assemble(("error: ", "red"), message), soft_wrap=True)
        sys.exit(2)


# The commands register themselves on `app` and `data_app` when imported.
from ehrgen.cli import data, evaluate, models, quickstart  # noqa: E402, F401
