"""What every benchmark records beside its numbers: the machine and versions, and the
<name>-<device>-<time>.json and .md files in bench/results/."""
import datetime
import glob
import importlib.metadata
import json
import os
import pathlib
import platform

import jax

RESULTS = pathlib.Path(__file__).parent / "results"


def environment() -> dict:
  """The device, backend, device count, jax/jaxlib/python versions and the UTC time."""
  device = jax.devices()[0]
  return dict(device=device.device_kind, backend=jax.default_backend(),
              devices=jax.device_count(), jax=jax.__version__,
              jaxlib=importlib.metadata.version("jaxlib"), python=platform.python_version(),
              time=datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))


def write(name: str, title: str, meta: dict, results: dict, table: str,
          out: str | pathlib.Path = RESULTS) -> pathlib.Path:
  """Writes <out>/<name>-<device>-<time>.json ({meta, **results}) and .md (the title, meta as
  a list, the table); returns the path without its suffix."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  base = out / f"{name}-{meta['device'].replace(' ', '_')}-{meta['time']}"
  base.with_suffix(".json").write_text(json.dumps(dict(meta=meta, **results), indent=1))
  header = "\n".join(f"- {key}: {value}" for key, value in meta.items())
  base.with_suffix(".md").write_text(f"# {title}\n\n{header}\n\n{table}\n")
  return base


def newest_eval(workdir: str, name: str = "") -> dict | None:
  """python -m eval's results (metrics_<step>_<name>.json) of the run's newest step: name a
  schedule, a task, ... ("": the run's own sampler, text-to-video); None when there are none."""
  suffix = f"_{name}" if name else ""
  found = [p for p in glob.glob(os.path.join(workdir, "eval", f"metrics_*{suffix}.json"))
           if os.path.basename(p)[len("metrics_"):-len(f"{suffix}.json")].isdigit()]
  if not found:
    return None
  with open(max(found, key=lambda p: int(os.path.basename(p)[8:-len(f"{suffix}.json")]))) as f:
    return json.load(f)
