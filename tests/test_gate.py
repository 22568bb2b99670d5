"""The timing gate: while one process times, other prunelab processes on the machine do not
compute their batches; heavy steps run side by side; nesting in one process does not deadlock."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from prunelab import gate

from .conftest import hang_guard

WORKER = textwrap.dedent("""
    import os, sys, time
    from prunelab.gate import gated, timing
    log, role = sys.argv[1], sys.argv[2]

    def mark(what):
        with open(log, "a") as f:
            f.write(f"{role} {what} {time.monotonic_ns()}\\n")

    open(log + "." + role + ".ready", "w").close()
    while not os.path.exists(log + ".go"):
        time.sleep(0.005)
    if role.startswith("dangler"):  # times while its own step is still held (a suspended
        held = gated(range(1))        # generator): must not deadlock with another such process
        next(held)
        for _ in range(3):
            with timing():
                mark("start"); time.sleep(0.05); mark("end")
            time.sleep(0.02)
    elif role.startswith("worker"):
        for _ in gated(range(12)):  # twelve 'batches' of 40 ms
            mark("start"); time.sleep(0.04); mark("end")
    else:
        for _ in range(3):
            time.sleep(0.05)
            with timing():
                mark("start"); time.sleep(0.1); mark("end")
""")


def _intervals(lines, role):
    out, start = [], None
    for who, what, t in (ln.split() for ln in lines):
        if who == role:
            if what == "start":
                start = int(t)
            else:
                out.append((start, int(t)))
    return out


def _run(tmp_path, roles, env):
    log = str(tmp_path / "log")
    script = tmp_path / "w.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), log, r], env=env) for r in roles]
    while not all(os.path.exists(f"{log}.{r}.ready") for r in roles):
        time.sleep(0.01)
    open(log + ".go", "w").close()
    assert all(p.wait(hang_guard(300)) == 0 for p in procs)
    return open(log).read().splitlines()


def _overlap(a, b):
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


@pytest.mark.skipif(gate.fcntl is None, reason="the gate needs POSIX flock")
def test_timing_waits_for_batches_and_batches_wait_for_timing(tmp_path):
    env = {**os.environ, gate.ENV: str(tmp_path / "gate")}
    lines = _run(tmp_path, ["worker1", "worker2", "timer"], env)
    timer = _intervals(lines, "timer")
    w1, w2 = _intervals(lines, "worker1"), _intervals(lines, "worker2")
    assert len(timer) == 3 and len(w1) == len(w2) == 12
    assert not _overlap(timer, w1) and not _overlap(timer, w2)
    assert _overlap(w1, w2)  # heavy steps of two processes do run side by side


@pytest.mark.skipif(gate.fcntl is None, reason="the gate needs POSIX flock")
def test_without_the_gate_they_overlap(tmp_path):
    """The check above can fail: with the gate off, the same processes time during batches."""
    env = {**os.environ, gate.ENV: "off"}
    lines = _run(tmp_path, ["worker1", "timer"], env)
    assert _overlap(_intervals(lines, "timer"), _intervals(lines, "worker1"))


def test_nested_sections_in_one_process_do_not_deadlock(tmp_path, monkeypatch):
    monkeypatch.setenv(gate.ENV, str(tmp_path / "gate"))
    seen = []
    for b in gate.gated(range(3)):
        with gate.timing():  # a timing inside this process's own step
            with gate.timing():
                for c in gate.gated(range(2)):  # steps inside its own timing
                    seen.append((b, c))
    assert seen == [(b, c) for b in range(3) for c in range(2)]
    assert gate._GATE.timing == 0 and gate._GATE.working == 0
    if gate.fcntl is not None:  # everything released: another process can time at once
        r = subprocess.run([sys.executable, "-c", "from prunelab.gate import timing\n"
                            "with timing(): pass"], env={**os.environ}, timeout=hang_guard(120))
        assert r.returncode == 0


@pytest.mark.skipif(gate.fcntl is None, reason="the gate needs POSIX flock")
def test_processes_timing_inside_their_own_steps_take_turns(tmp_path):
    env = {**os.environ, gate.ENV: str(tmp_path / "gate")}
    lines = _run(tmp_path, ["dangler1", "dangler2"], env)  # _run: both exit 0 within 60 s
    a, b = _intervals(lines, "dangler1"), _intervals(lines, "dangler2")
    assert len(a) == len(b) == 3 and not _overlap(a, b)


def _room_free(prefix: str) -> bool:
    """Whether another holder could take the room exclusively now (a fresh open file
    description conflicts with this process's own flock, as another process's would)."""
    fd = os.open(prefix + ".room", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        gate.fcntl.flock(fd, gate.fcntl.LOCK_EX | gate.fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        gate.fcntl.flock(fd, gate.fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


@pytest.mark.skipif(gate.fcntl is None, reason="the gate needs POSIX flock")
@pytest.mark.parametrize("setting", ["on", "off"])
def test_pruning_scoring_and_runner_creation_hold_a_step(tmp_path, monkeypatch, setting):
    """Pruning a candidate (with its scoring) and making a runtime session are heavy work
    outside any batch loop: each holds the room, so another process's timing waits for it.
    With the gate off the same probes find the room free (the check can fail)."""
    from prunelab.criteria.magnitude import L1
    from prunelab.pruning import prune
    from prunelab.targets import _onnx as onnx_export
    from prunelab.targets import make_target

    from .conftest import tiny_resnet

    prefix = str(tmp_path / "gate")
    monkeypatch.setenv(gate.ENV, prefix if setting == "on" else "off")
    seen = []

    class Probe(L1):
        def layer_scores(self, name, module, group):
            seen.append(("score", _room_free(prefix)))
            return super().layer_scores(name, module, group)

    export = onnx_export.to_onnx  # the one exporter every ONNX-based target's runner uses

    def probed_export(module, inputs):
        seen.append(("export", _room_free(prefix)))
        return export(module, inputs)

    monkeypatch.setattr(onnx_export, "to_onnx", probed_export)
    res = prune(tiny_resnet(), Probe(), ratio=0.5, input_shape=(1, 16, 16), num_classes=4)
    target = make_target("onnxruntime-cpu")
    run = target.runner(res.model, target.inputs([(1, 16, 16)]))
    run()
    assert {what for what, _ in seen} == {"score", "export"}
    assert all(free == (setting == "off") for _, free in seen), seen
    assert _room_free(prefix)  # released once the work is done
    assert gate._GATE.working == 0


@pytest.mark.skipif(gate.fcntl is None, reason="the gate needs POSIX flock")
def test_a_latency_table_is_one_quiet_section(tmp_path, monkeypatch):
    """A table is tens of short timings: built as one section it takes the door once (it took
    it once per point, each waiting for another process's batch to end); a build of several
    tables takes it once per table, so another process's batch can run between them."""
    from prunelab.latency.cache import Cache
    from prunelab.latency.lut import LutConfig, build_lut
    from prunelab.latency.units import Unit
    from prunelab.targets import make_target

    monkeypatch.setenv(gate.ENV, str(tmp_path / "gate"))
    doors = []
    real = gate.fcntl.flock

    def flock(fd, op):
        if gate._GATE.door is not None and fd == gate._GATE.door and op == gate.fcntl.LOCK_EX:
            doors.append(op)
        return real(fd, op)

    monkeypatch.setattr(gate.fcntl, "flock", flock)
    target = make_target("onnxruntime-cpu")
    u = Unit("x", "conv", 4, 8, 3, 1, 1, 6, 6, bn=True, act="relu", cin_group="a",
             cout_group="b")
    lut = build_lut(target, [u], Cache(target.fingerprint(), tmp_path / "cache"),
                    LutConfig(sweep=8, nodes=3, warmup=1, repeats=3))
    assert lut.measured > 3 and len(doors) == 1, (lut.measured, len(doors))
    v = Unit("y", "conv", 8, 4, 1, 1, 0, 6, 6, bn=True, act="relu", cin_group="b",
             cout_group="c")
    doors.clear()
    lut = build_lut(target, [u, v], Cache(target.fingerprint(), tmp_path / "cache2"),
                    LutConfig(sweep=8, nodes=3, warmup=1, repeats=3))
    assert lut.measured > 6 and len(doors) == 2, (lut.measured, len(doors))
    assert gate._GATE.timing == 0 and _room_free(str(tmp_path / "gate"))
