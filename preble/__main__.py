"""`python -m preble ...`: the same command line as the `preble` script."""

from .cli import app

app(prog_name="preble")
