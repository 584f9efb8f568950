"""Nothing a run wrote is overwritten: a file about to be written again is kept first."""
import os


def keep_earlier(path: str) -> str | None:
  """Renames an existing `path` (<stem><ext>) to the first free <stem>.<n><ext> and returns that
  name; None when there is nothing at `path`."""
  if not os.path.exists(path):
    return None
  stem, ext = os.path.splitext(path)
  n = 1
  while os.path.exists(f"{stem}.{n}{ext}"):
    n += 1
  os.rename(path, f"{stem}.{n}{ext}")
  return f"{stem}.{n}{ext}"
