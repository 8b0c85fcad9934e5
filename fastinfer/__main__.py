"""``python -m fastinfer``: the command line (``fastinfer --help``)."""

from .cli import main

main()
