"""The import rules of docs/architecture.md: the network (dit/) imports only jax, flax, numpy,
the standard library, kernels/ and sharding/; config files import only ml_collections and
configs/."""
import ast
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_PACKAGES = ("bench", "configs", "data", "diffusion", "dit", "eval", "kernels", "rundir",
                    "sharding", "text_encoders", "training", "weights")
NETWORK_MAY_REACH = ("dit", "kernels", "sharding")
# What the network must never load: the data, the text encoders, the samplers, the file
# writers, and the libraries of the entries and the pipelines.
FORBIDDEN = ("data", "text_encoders", "diffusion", "rundir", "training", "eval", "configs",
             "absl", "tqdm", "grain", "tensorboardX", "orbax", "ml_collections", "imageio",
             "tokenizers")


def imports_of(path: str) -> set[str]:
  """The top-level names of every module a Python file imports, at any depth of its code."""
  tree = ast.parse(open(path).read(), path)
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module.split(".")[0])
  return names


def project_files(package: str) -> list[str]:
  """Every Python file of a package, its subpackages included."""
  return sorted(os.path.join(folder, f) for folder, _, files in os.walk(os.path.join(ROOT, package))
                for f in files if f.endswith(".py"))


def test_the_network_imports_only_jax_flax_numpy_kernels_and_sharding():
  allowed = set(sys.stdlib_module_names) | {"jax", "jaxlib", "flax", "numpy", "scipy",
                                            *NETWORK_MAY_REACH}
  for package in ("dit", "kernels"):
    for path in project_files(package):
      assert imports_of(path) <= allowed, (path, imports_of(path) - allowed)


def test_sharding_imports_only_jax_flax_numpy_scipy_and_kernels():
  allowed = set(sys.stdlib_module_names) | {"jax", "jaxlib", "flax", "numpy", "scipy",
                                            "kernels", "sharding"}
  for path in project_files("sharding"):
    extra = {"absl"} if path.endswith("distributed.py") else set()  # its flags
    assert imports_of(path) <= allowed | extra, (path, imports_of(path) - allowed)


def test_importing_the_network_loads_no_data_encoder_sampler_writer_or_entry_library():
  """In a fresh interpreter: what `import dit.<every module>` loads beyond jax and flax."""
  script = (
      "import importlib, json, pkgutil, sys\n"
      "import jax, jax.numpy, numpy, flax.nnx\n"
      "before = {m.split('.')[0] for m in sys.modules}\n"
      "import dit\n"
      "for m in pkgutil.walk_packages(dit.__path__, 'dit.'): importlib.import_module(m.name)\n"
      "print(json.dumps(dict(new=sorted({m.split('.')[0] for m in sys.modules} - before),\n"
      f"    project=sorted(m for m in sys.modules if m.split('.')[0] in {PROJECT_PACKAGES!r}))))\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = json.loads(result.stdout.splitlines()[-1])
  assert {m.split(".")[0] for m in loaded["project"]} == set(NETWORK_MAY_REACH)
  assert {"dit.model", "dit.config", "dit.vae.model"} <= set(loaded["project"])
  assert not set(loaded["new"]) & set(FORBIDDEN), loaded["new"]


def test_config_files_import_only_ml_collections_and_configs():
  for path in project_files("configs"):
    if os.path.basename(path) in ("checks.py", "__init__.py"):
      continue  # the checks import the names they check against; they run at the entries
    # The standard library is fine: the point is that reading a config loads no JAX.
    outside = imports_of(path) - set(sys.stdlib_module_names)
    assert outside <= {"ml_collections", "configs"}, (path, outside)
