import sys

from . import signals

signals.catch()          # before the slow imports: see signals.py

from .cli import main  # noqa: E402

sys.exit(main())
