"""Make ``accelerate launch --cpu --num_processes N`` start N processes.

accelerate runs a single process for ``--cpu`` unless MPI is configured (huggingface/accelerate
issue #2741), and a process started by ``torchrun`` on a machine without GPUs is not told to use the
CPU, so each one trains alone. Both would silently give a different run than the one asked for:
here the first case is handed to ``torch.distributed.run`` with N processes, and in both cases the
processes are told to form one CPU process group (gloo).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Optional, Sequence

import torch

logger = logging.getLogger(__name__)

WORLD_VARIABLES = ("LOCAL_RANK", "WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def wants_cpu() -> bool:
    """Whether this process must run on the CPU: the launcher said so (``--cpu``), or it is one of
    several processes on a machine without a GPU (so they form one CPU process group, not N runs)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"):
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def requested_cpu_processes(launcher_argv: Sequence[str]) -> int:
    """The ``--num_processes`` of an ``accelerate launch --cpu`` command line (1 when not one)."""
    from accelerate.commands.launch import launch_command_parser

    for index, word in enumerate(launcher_argv):
        if word == "launch" or word.endswith(("accelerate.commands.launch", "accelerate-launch")):
            try:
                args = launch_command_parser().parse_args(list(launcher_argv[index + 1 :]))
            except SystemExit:  # not a launch command line after all
                return 1
            return (args.num_processes or 1) if args.cpu and not args.mpirun_hostfile else 1
    return 1


def relaunch_on_cpu_processes() -> Optional[int]:
    """When ``accelerate launch --cpu --num_processes N`` (N > 1) started this single process, run
    this same command as N processes with ``torch.distributed.run`` and return their exit code."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true") or any(v in os.environ for v in WORLD_VARIABLES):
        return None
    import psutil

    try:
        launcher_argv = psutil.Process().parent().cmdline()
    except (psutil.Error, AttributeError):  # no parent, or not allowed to look
        return None
    processes = requested_cpu_processes(launcher_argv)
    if processes <= 1:
        return None
    logger.info("Starting %d CPU processes (accelerate launch --cpu runs only one without MPI)", processes)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *sys.argv]
    child = subprocess.Popen(command)
    forward = lambda signum, _frame: child.send_signal(signum)  # noqa: E731 - workers checkpoint on SIGTERM
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return child.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to the whole group: the workers have it too
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
