"""sharding/logical.py and sharding/distributed.py: logical axis names through one rules table
to mesh axes, and when a multi-process start happens."""
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from configs.quickstart import get_config
from configs.checks import validate_mesh_config
from sharding import distributed
from configs.common import DEFAULT_RULES
from sharding.logical import check_rules, constrain, mesh_spec, use_mesh
from sharding.mesh import make_mesh

SIZES = {"data": 2, "fsdp": 4, "seq": 1, "tensor": 1}


def test_logical_names_map_through_the_rules_to_mesh_axes():
  assert mesh_spec(("layers", "embed", "mlp"), (3, 64, 256), DEFAULT_RULES, SIZES) == P(
      None, "fsdp", None)  # tensor has size 1: left out
  assert mesh_spec(("activation_batch", "activation_length", "activation_embed"), (8, 32, 64),
                   DEFAULT_RULES, SIZES) == P(("data", "fsdp"), None, None)
  # A dimension the mesh axes do not divide keeps the axes that do, or stays whole.
  assert mesh_spec(("activation_batch",), (2,), DEFAULT_RULES, SIZES) == P("data")
  assert mesh_spec(("embed",), (6,), DEFAULT_RULES, SIZES) == P(None)
  # A mesh axis shards one dimension of an array at most.
  rules = (("a", "fsdp"), ("b", ("fsdp", "data")))
  assert mesh_spec(("a", "b"), (8, 8), rules, SIZES) == P("fsdp", "data")
  with pytest.raises(ValueError, match="'heads_x' has no rule in sharding.rules; add"):
    mesh_spec(("heads_x",), (8,), DEFAULT_RULES, SIZES)


def test_bad_rules_and_mesh_sizes_are_config_errors():
  assert check_rules(DEFAULT_RULES, ("data", "fsdp", "seq", "tensor")) == []
  errors = check_rules((("embed", "model"), ("embed", None)), ("data", "fsdp"))
  assert any("maps 'embed' to ['model']" in e for e in errors)
  assert any("gives 'embed' twice" in e for e in errors)
  config = get_config("tiny")
  with config.unlocked():
    config.mesh.update(seq=-1, fsdp=0)
    config.mesh.context = 2
  with pytest.raises(ValueError) as error:
    validate_mesh_config(config)
  for message in ("mesh axes ['context'] are unknown", "mesh.fsdp=0 must be a positive int",
                  "at most one mesh axis may be -1"):
    assert message in str(error.value)


def test_constrain_pins_activations_under_a_mesh_and_is_a_no_op_without():
  x = jnp.ones((8, 16, 4))
  names = ("activation_batch", "activation_length", "activation_embed")
  assert constrain(x, names) is x
  mesh = make_mesh({"data": 2, "seq": 4})
  with use_mesh(mesh, DEFAULT_RULES):
    out = jax.jit(lambda x: constrain(x * 2, names))(x)
  assert out.sharding.spec == P("data", "seq")
  with pytest.raises(ValueError, match="maps 'embed' to \\['model'\\]"):
    with use_mesh(mesh, (("embed", "model"),)):
      pass


def test_multi_process_start_only_where_a_cluster_or_a_coordinator_says_so():
  assert distributed.detected_cluster({}) is None
  assert distributed.detected_cluster({"SLURM_NTASKS": "1"}) is None  # one task: one process
  assert distributed.detected_cluster({"SLURM_NTASKS": "16"}) == "SLURM"
  assert distributed.detected_cluster({"OMPI_COMM_WORLD_SIZE": "4"}) == "Open MPI"
  assert distributed.detected_cluster({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}) == "TPU pod"
  with pytest.raises(ValueError, match="go together"):
    distributed.initialize("localhost:1234", num_processes=2)
