"""Multi-host start: jax.distributed.initialize, called before anything else touches jax.

Under SLURM (srun, one task per node or per GPU), Open MPI (mpirun) and on Cloud TPU pods, JAX
finds the coordinator, the process count and this process's id by itself. Anywhere else the
three are given explicitly (train.py's --coordinator_address, --num_processes, --process_id).
A single process on one machine needs nothing: `initialize` then does nothing.
"""
import os

import jax
from absl import flags, logging


def detected_cluster(environ=os.environ) -> str | None:
  """The multi-process launcher JAX will detect, or None for a plain single process."""
  if int(environ.get("SLURM_NTASKS", "1")) > 1:
    return "SLURM"
  if int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "Open MPI"
  if "," in environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "TPU pod"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, force: bool = False) -> bool:
  """Starts jax.distributed when there is more than one process; True if it did.

  With coordinator_address, num_processes and process_id are required too. `force` calls
  jax.distributed.initialize() with JAX's own detection even when detected_cluster() sees no
  cluster (e.g. a TPU pod whose workers lack TPU_WORKER_HOSTNAMES).
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(x is not None for x in explicit) and any(x is None for x in explicit):
    raise ValueError("--coordinator_address, --num_processes and --process_id go together: give "
                     "all three (or none, under SLURM, Open MPI or on a TPU pod)")
  cluster = "explicit coordinator" if coordinator_address else detected_cluster()
  if cluster is None and not force:
    return False
  # Processes on CPUs talk through gloo (the GPU and TPU clients have their own collectives).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info("jax.distributed (%s): process %d of %d, %d devices in all",
               cluster or "detected by JAX", jax.process_index(), jax.process_count(),
               jax.device_count())
  return True


def define_flags() -> None:
  """--coordinator_address, --num_processes, --process_id and --distributed, for an entry script."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a multi-process "
                      "run outside SLURM, Open MPI and TPU pods (which JAX detects by itself).")
  flags.DEFINE_integer("num_processes", None, "Processes in the run (with "
                       "--coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() even where no "
                    "cluster is detected (JAX then finds the coordinator itself).")


def initialize_from_flags() -> bool:
  """`initialize` with the values of define_flags' flags."""
  values = flags.FLAGS
  return initialize(values.coordinator_address, values.num_processes, values.process_id,
                    force=values.distributed)
