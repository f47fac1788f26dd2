"""Run a script under `accelerate launch` with configs/accelerate/cpu_2proc.yaml: 2 CPU processes over gloo (slow tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def launch_two_cpu(
    script: Path,
    args: list[str],
    repo_root: Path,
    timeout: int = 300,
    config: Path | None = None,
    env: dict | None = None,
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `accelerate launch` with 2 CPU processes on a free port, OMP_NUM_THREADS=1.

    The repository root goes first on the workers' PYTHONPATH, so a launched script imports test code as
    `from tests.stages.test_s6 import ...`, as the tests do. `config` replaces configs/accelerate/cpu_2proc.yaml;
    `env` adds variables (DS_ACCELERATOR=cpu for DeepSpeed on the CPU).
    """
    with socket.socket() as s:  # a free port, so parallel test runs do not collide on the config's default
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config or repo_root / "configs/accelerate/cpu_2proc.yaml"),
        "--main_process_port",
        str(port),
        str(script),
        *args,
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")])),
        **(env or {}),
    )
    # A session of its own, so a hang kills both workers (not only the launcher) when the timeout fires.
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
    return p.returncode, out, err
