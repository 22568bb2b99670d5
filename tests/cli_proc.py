"""``python -m prunelab.cli ...`` in a real process of its own, without paying torch's import for
each one: a *zygote* process (started once per pytest process, fresh: it has imported torch and
prunelab but never run an operator) forks a child per command.  The child gets the caller's
environment, working folder, argv and its own stdout/stderr files, runs ``prunelab.cli`` as
``__main__`` exactly as ``python -m`` does, and exits through the normal interpreter shutdown, so
its exit code (negative for a signal, as :mod:`subprocess` reports it), output and files are what
a fresh process gives.  About 0.1 s a command instead of 2-4 s (100+ commands in the suite).

``PRUNELAB_TEST_FRESH_CLI=1`` runs every command in a brand-new interpreter instead (the old,
slow way; ``.ci/run``'s slow pass uses it).  Without ``os.fork`` (Windows) it is the fresh
interpreter too.  The default run still starts the CLI in brand-new interpreters where that is
the point (``--help`` in a real process, the lean parser, a killed Ray search, two concurrent
runs); those keep their own ``subprocess`` calls.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import tempfile
import threading

FRESH = os.environ.get("PRUNELAB_TEST_FRESH_CLI") == "1" or not hasattr(os, "fork")

# Runs in the zygote.  Requests come as JSON lines on stdin; for each it forks, answers
# {"pid": ...} at once and {"rc": ...} when the child has ended.  It ends at EOF.
ZYGOTE = r"""
import json, os, sys
import torch
import prunelab.cli
import prunelab.commands
prunelab.cli.build_parser()
req_in, rep_out = sys.stdin.buffer, os.fdopen(os.dup(1), "w", buffering=1)
rep_out.write(json.dumps({"ready": os.getpid()}) + "\n")
while True:
    line = req_in.readline()
    if not line:
        sys.exit(0)
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        break
    rep_out.write(json.dumps({"pid": pid}) + "\n")
    _, status = os.waitpid(pid, 0)
    rep_out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")

# the child: become `python -m prunelab.cli ARGS` started in req["cwd"] with req["env"]
rep_out.close()
null = os.open(os.devnull, os.O_RDONLY)
out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
for fd, target in ((null, 0), (out, 1), (err, 2)):
    os.dup2(fd, target)
    os.close(fd)
sys.stdin = open(0, "r", closefd=False)
os.environ.clear()
os.environ.update(req["env"])
os.chdir(req["cwd"])
sys.path[0] = os.getcwd()          # what -m puts first
sys.argv = [sys.executable, *req["argv"]]
# what read the environment when the zygote imported it: prunelab.ui's rich consoles (COLUMNS,
# NO_COLOR, TERM ...) are made again, as a fresh process makes them
from rich.console import Console
for mod in list(sys.modules.values()):
    if getattr(mod, "__name__", "").startswith("prunelab"):
        for k, v in list(vars(mod).items()):
            if isinstance(v, Console):
                setattr(mod, k, Console(stderr=v.stderr))
import runpy
runpy.run_module("prunelab.cli", run_name="__main__", alter_sys=True)
"""

_lock = threading.Lock()
_zygote: subprocess.Popen | None = None


def _start() -> subprocess.Popen:
    global _zygote
    if _zygote is None or _zygote.poll() is not None:
        _zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = _zygote.stdout.readline()
        if not ready.startswith('{"ready"'):
            raise RuntimeError(f"the CLI zygote did not start: {ready!r}")
        atexit.register(_stop)
    return _zygote


def _stop() -> None:
    z = _zygote
    if z is not None and z.poll() is None:
        z.stdin.close()
        try:
            z.wait(10)
        except subprocess.TimeoutExpired:
            z.kill()


def _read(z: subprocess.Popen, timeout: float | None) -> dict:
    if timeout is not None and not select.select([z.stdout], [], [], timeout)[0]:
        raise TimeoutError
    line = z.stdout.readline()
    if not line:
        raise RuntimeError("the CLI zygote died")
    return json.loads(line)


def cli(args, env: dict | None = None, cwd=None, timeout: float | None = 600
        ) -> subprocess.CompletedProcess:
    """``subprocess.run([sys.executable, "-m", "prunelab.cli", *args], capture_output=True,
    text=True, env=env, cwd=cwd, timeout=timeout)``, forked from the zygote."""
    argv = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    cmd = [sys.executable, "-m", "prunelab.cli", *argv]
    if FRESH:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=timeout)
    with _lock, tempfile.TemporaryDirectory(prefix="prunelab-cli-") as d:
        z = _start()
        req = {"argv": argv, "env": env, "cwd": str(cwd or os.getcwd()),
               "stdout": os.path.join(d, "out"), "stderr": os.path.join(d, "err")}
        z.stdin.write(json.dumps(req) + "\n")
        z.stdin.flush()
        pid = _read(z, 60)["pid"]
        try:
            rc = _read(z, timeout)["rc"]
        except TimeoutError:
            os.kill(pid, 9)
            _read(z, 60)
            raise subprocess.TimeoutExpired(cmd, timeout) from None

        def text(name):
            with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
                return f.read()

        return subprocess.CompletedProcess(cmd, rc, text("out"), text("err"))
