"""A real one-node Slurm cluster for the tests, on a private configuration.

munged with its own key and socket, slurmctld and slurmd on free local ports, state and spool
folders under a temporary directory: nothing reads or writes the machine's /etc/slurm or
/etc/munge. Clients reach it through `SLURM_CONF`, which `env()` sets. `stop()` cancels the
cluster's jobs and ends exactly the daemons `start()` started, by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
PLUGINS = ("proctrack/linuxproc", "task/none", "select/cons_tres")


def find(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slurm_conf(root: Path, host: str, ctld_port: int, d_port: int, munge_socket: Path) -> str:
    cpus = max(2, os.cpu_count() or 1)
    return f"""\
ClusterName=cpxtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, **extra: str) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf), **extra}

    def start(self) -> None:
        missing = [n for n in (*DAEMONS, *CLIENTS) if find(n) is None]
        if missing:
            pytest.fail(
                f"Slurm is not installed ({', '.join(missing)} not found): run `make slurm`, which installs "
                "Debian's slurmctld, slurmd, slurm-client and munge",
                pytrace=False,
            )
        if os.geteuid() != 0:
            pytest.fail(
                "the test Slurm runs slurmd as root (SlurmUser=root): run the Slurm tests as root", pytrace=False
            )
        for d in ("state", "spool", "log", "munge"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(slurm_conf(self.root, host, free_port(), free_port(), self.munge_socket))
        m = self.root / "munge"
        self._spawn(
            "munged",
            "-F",
            "--force",
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--pid-file={m / 'munged.pid'}",
            f"--seed-file={m / 'munged.seed'}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
        )
        self._wait(lambda: self.munge_socket.exists(), "munged to create its socket")
        self._spawn("slurmctld", "-D", "-c")
        self._wait(lambda: self.run("scontrol", "ping").stdout.find(" is UP") >= 0, "slurmctld to answer")
        self._spawn("slurmd", "-D")
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle", "the node to be idle")

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")  # open for the daemon's lifetime
        self.procs[name] = subprocess.Popen(
            [find(name) or name, *args],
            env={**os.environ, "SLURM_CONF": str(self.conf)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run reaches the fixture's stop(), not them
        )
        log.close()

    def _wait(self, ok, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    pytest.fail(f"{name} exited with {p.returncode} while waiting for {what}:\n{self.logs()}")
            if ok():
                return
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [find(args[0]) or args[0], *args[1:]],
            env={**os.environ, "SLURM_CONF": str(self.conf)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def jobs(self) -> dict[str, str]:
        """Job id -> state of every job the controller knows that is not finished."""
        r = self.run("squeue", "-h", "-o", "%i %T")
        assert r.returncode == 0, r.stderr
        return dict(line.split() for line in r.stdout.splitlines() if line.strip())

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user", str(os.getuid()))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.jobs():
                time.sleep(0.2)
        for name in reversed(DAEMONS):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
