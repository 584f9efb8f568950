"""Helpers shared by the experiment files in configs/ (big_vision style)."""
import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'size=B,runlocal' -> ConfigDict(size='B', runlocal=True), typed by the defaults.

  A bare name is a flag set to True; an unknown key is an error that lists the known ones.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config variant {key!r} in {arg!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      truth = {"": True, "true": True, "1": True, "false": False, "0": False}
      if value.lower() not in truth:
        raise ValueError(f"config variant {key}={value!r} must be true or false")
      parsed[key] = truth[value.lower()]
    elif value == "":
      raise ValueError(f"config variant {key!r} needs a value, as in {key}=...")
    else:
      try:
        parsed[key] = type(default)(value)
      except ValueError:
        raise ValueError(f"config variant {key}={value!r} must be a "
                         f"{type(default).__name__}") from None
  return parsed
