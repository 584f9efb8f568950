"""Logging, set once by every entry (train.py, sample.py, python -m eval, the tools): absl at
WARNING unless --verbosity is given, since orbax logs every file it reads or writes at INFO."""
from absl import flags, logging


def quiet_library_logs() -> None:
  """Warnings and errors only, unless the command line set --verbosity (e.g. -v=1)."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
