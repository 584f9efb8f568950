"""One training process per workdir: an exclusive lock held while train.py runs in it.

The lock is <workdir>/train.lock held with flock(2), which the operating system releases when
the process ends however it ends, so a crashed or killed run leaves no stale lock. The file
names its holder (host, pid, start time) for the error a second process gets. Two runs in one
workdir would interleave their checkpoints, metrics and TensorBoard events. On a shared
filesystem the lock holds across hosts only where flock does (local disks, NFSv4; Lustre
mounted with -o flock); where flock is missing the run goes on unlocked, with a warning.
"""
import datetime
import errno
import fcntl
import os
import socket

from absl import logging

LOCK_FILE = "train.lock"


class WorkdirInUse(RuntimeError):
  """Another process is training in this workdir."""


class WorkdirLock:
  """with WorkdirLock(workdir): ... holds the workdir's lock (the folder must exist)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._file = None

  def __enter__(self) -> "WorkdirLock":
    lock_file = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
        # A filesystem without flock (Lustre without -o flock, NFS without lockd): run unlocked.
        logging.warning("cannot lock %s (%s): this filesystem has no flock, so nothing stops a "
                        "second train.py in this workdir", self.path, e.strerror)
        lock_file.close()
        return self
      lock_file.seek(0)
      holder = lock_file.read().strip() or "a process that has not written its name yet"
      lock_file.close()
      raise WorkdirInUse(f"{os.path.dirname(self.path)} is in use by another train.py ({holder}): "
                         "wait for it to end or stop it, or pass another --workdir") from None
    lock_file.seek(0)
    lock_file.truncate()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    lock_file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n")
    lock_file.flush()
    os.fsync(lock_file.fileno())  # other hosts of a shared filesystem read who holds it
    self._file = lock_file
    return self

  def __exit__(self, *exc) -> None:
    if self._file is None:  # ran unlocked
      return
    self._file.truncate(0)
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None
