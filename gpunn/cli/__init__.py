"""The ``gpunn`` command line (click lives here and nowhere below it).

One module per command: ``cmd_info`` (info, datasets), ``cmd_train``, ``cmd_eval``,
``cmd_sweep``, ``cmd_parity``. A new command is a new ``cmd_*.py`` that decorates its function
with ``@main.command()`` (``from .app import main``) and a line below.
"""
from . import cmd_eval, cmd_info, cmd_parity, cmd_sweep, cmd_train  # noqa: F401  (registers)
from . import cmd_models  # noqa: F401
from . import cmd_predict  # noqa: F401
from . import cmd_compare  # noqa: F401
from . import cmd_export  # noqa: F401
from . import cmd_bench  # noqa: F401
from .app import main

__all__ = ["main"]
