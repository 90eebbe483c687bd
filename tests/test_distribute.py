"""tf.distribute on one machine, CPU only, on real images.

- ``mirrored`` over 2 logical CPU devices takes the same steps as one device with the same
  global batch (the scaling rule: per-replica batch x replicas, learning rate x replicas,
  batch-norm statistics over the global batch).
- Two ``multiworker`` processes on 127.0.0.1 (TF_CONFIG): a worker killed after the first
  epoch makes the chief fail with a clear message within a bounded time; both restarted
  with ``--resume`` finish the run, and the chief alone writes a complete run directory.
  A worker whose peer never starts stops after ``train.worker_timeout``, not never.

Each scenario runs in subprocesses: logical devices and MultiWorkerMirroredStrategy must be
set up before TensorFlow starts, and must not leak into other tests.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# One device vs two replicas differ only by float32 summation order: measured 3e-7 relative
# after 6 Adam steps. Without synchronized batch norm the same comparison is off by 6e-2.
LOSS_RTOL = 1e-4

MIRRORED_SCRIPT = r"""
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from pneumoscan.config import resolve
from pneumoscan.data.dataset import prepare
from pneumoscan.training.pipeline import as_model_input
from pneumoscan.training.sharding import training_input
from pneumoscan.training.strategy import make_placement, synchronize_batchnorm
from pneumoscan.models import build_model
from pneumoscan.training.loop import class_weights, compile_model

GLOBAL_BATCH, BASE_RATE = 16, 1e-3
cfg = resolve(overrides={"data": {"source": "kermany", "image_size": 64, "max_per_class": 24},
                         "model": {"name": "pneumonet_small", "width": 8, "dropout": 0.0},
                         "train": {"epochs": 2}, "augment": {"enabled": False}})
prepared = prepare(cfg.data, sys.argv[1])
x, y = prepared.images["train"], prepared.labels["train"]
keras.utils.set_random_seed(0)
initial = build_model(cfg.model, 64).get_weights()
# The same global batches in the same order for both (tf.data's seeded shuffle is not
# reproduced under a distributed dataset, and dropout/augmentation draw per replica).
batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).map(lambda a, b: (as_model_input(a), tf.one_hot(b, 2)))


def trial(strategy, devices, per_replica_batch, learning_rate):
    placement = make_placement(strategy, devices)
    cfg.train.batch_size, cfg.train.learning_rate = per_replica_batch, learning_rate
    assert per_replica_batch * placement.replicas == GLOBAL_BATCH
    with placement.strategy.scope():
        model = build_model(cfg.model, 64)
        if placement.replicas > 1:
            synchronize_batchnorm(model)
        compile_model(model, cfg, len(x) // GLOBAL_BATCH, placement.replicas, jit_compile=False)
        model.set_weights(initial)
    data, steps = training_input(placement, batches, len(x), GLOBAL_BATCH)
    history = model.fit(data, steps_per_epoch=steps, epochs=cfg.train.epochs,
                        class_weight=class_weights(y, "balanced"), verbose=0, shuffle=False)
    return {"replicas": placement.replicas, "loss": [float(v) for v in history.history["loss"]],
            "weights": float(sum(np.abs(w).sum() for w in model.get_weights()))}


print("RESULT " + json.dumps({
    "one": trial("one", None, GLOBAL_BATCH, 2 * BASE_RATE),
    "mirrored": trial("mirrored", "/cpu:0,/cpu:1", GLOBAL_BATCH // 2, BASE_RATE),
}))
"""


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    return env


def test_mirrored_on_two_cpus_matches_one_device_with_the_same_global_batch(shared_data, tmp_path):
    done = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(shared_data)], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(lines[0][len("RESULT "):])
    one, mirrored = result["one"], result["mirrored"]
    assert (one["replicas"], mirrored["replicas"]) == (1, 2)
    assert len(one["loss"]) == len(mirrored["loss"]) == 2
    assert one["loss"][1] < one["loss"][0]  # it did train
    assert mirrored["loss"] == pytest.approx(one["loss"], rel=LOSS_RTOL)
    assert mirrored["weights"] == pytest.approx(one["weights"], rel=LOSS_RTOL)


# ------------------------------------------------------------------ two workers on 127.0.0.1
TINY_CLI = ["--source", "kermany", "--image-size", "64", "--model", "pneumonet_small", "--set", "model.width=8",
            "--max-per-class", "16", "--batch-size", "8", "--set", "evaluate.bootstrap=20",
            "--set", "train.max_minutes=none", "--set", "train.worker_timeout=60"]
FAIL_WITHIN_S = 60  # after the kill, the surviving worker must exit within this


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(args: list[str], tmp_path: Path, tag: str, start: int = 2) -> list[tuple[subprocess.Popen, Path]]:
    """Start the first ``start`` workers of a 2-worker cluster on 127.0.0.1."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    scratch = tmp_path / f"{tag}-tmp"  # where non-chief workers make their temporary run directory
    scratch.mkdir()
    workers = []
    for index in range(start):
        env = dict(_env(tmp_path), TMPDIR=str(scratch))
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = tmp_path / f"{tag}-worker{index}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "pneumoscan.cli", "train", *args], env=env,
                                    stdout=fh, stderr=subprocess.STDOUT)
        workers.append((proc, log))
    return workers


def finish(workers, timeout: float) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    out = []
    for proc, log in workers:
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p, _ in workers:
                p.kill()
            pytest.fail(f"workers still running after {timeout:.0f} s (hung?):\n" + "\n".join(
                f"--- {lg.name}\n{lg.read_text()[-3000:]}" for _, lg in workers))
        out.append((rc, log.read_text()))
    return out


@pytest.fixture(scope="module")
def killed_job(shared_data, tmp_path_factory):
    """Two workers train 2 epochs; worker 1 is killed once the chief has checkpointed epoch 1."""
    tmp = tmp_path_factory.mktemp("multiworker")
    out = tmp / "run"
    workers = start_workers(["--data", str(shared_data), "--out", str(out), "--epochs", "2", *TINY_CLI], tmp, "first")
    state = out / "checkpoints" / "state.json"
    deadline = time.monotonic() + 240
    while not (state.is_file() and json.loads(state.read_text())["epoch"] == 0):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in workers):
            for p, _ in workers:
                p.kill()
            pytest.fail("the first epoch never finished:\n" + "\n".join(lg.read_text()[-3000:] for _, lg in workers))
        time.sleep(0.5)
    workers[1][0].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    chief_rc = workers[0][0].wait(timeout=FAIL_WITHIN_S + 30)
    return {"out": out, "tmp": tmp, "chief_rc": chief_rc, "chief_log": workers[0][1].read_text(),
            "seconds_to_fail": time.monotonic() - killed_at, "data": shared_data}


def test_a_killed_worker_fails_the_job_with_a_clear_message(killed_job):
    assert killed_job["chief_rc"] == 2, killed_job["chief_log"][-3000:]
    print(f"\nthe chief stopped {killed_job['seconds_to_fail']:.1f} s after the kill")
    assert killed_job["seconds_to_fail"] < FAIL_WITHIN_S, killed_job["seconds_to_fail"]
    assert "pneumoscan: error: lost contact with another worker" in killed_job["chief_log"]
    assert "--resume" in killed_job["chief_log"]
    assert "Traceback" not in killed_job["chief_log"]


def test_a_worker_whose_peer_never_joins_stops_after_the_worker_timeout(shared_data, tmp_path):
    # Only worker 0 of a 2-worker cluster starts: TensorFlow would wait for worker 1 for a
    # long time, holding the GIL; the watchdog process ends it after train.worker_timeout.
    args = ["--data", str(shared_data), "--out", str(tmp_path / "run"), *TINY_CLI, "--set", "train.worker_timeout=8"]
    ((rc, log),) = finish(start_workers(args, tmp_path, "alone", start=1), timeout=90)
    assert rc != 0
    assert "pneumoscan: error: worker 0: no progress for 8 s while waiting for every worker in TF_CONFIG to join" in log
    assert "--resume" in log and "Traceback" not in log
    assert not (tmp_path / "run").exists()


def test_restarted_workers_resume_and_only_the_chief_writes_the_run(killed_job):
    out, tmp = killed_job["out"], killed_job["tmp"]
    workers = start_workers(["--data", str(killed_job["data"]), "--resume", str(out)], tmp, "resume")
    (chief_rc, chief_log), (worker_rc, worker_log) = finish(workers, timeout=300)
    assert chief_rc == 0, chief_log[-3000:]
    assert worker_rc == 0, worker_log[-3000:]
    assert "resuming" in chief_log and "after epoch 1" in chief_log
    assert "worker 1 finished" in worker_log
    for name in ("config.json", "model.keras", "history.csv", "splits.csv", "metrics.json", "predictions.csv",
                 "environment.json", "checkpoints/state.json"):
        assert (out / name).is_file(), name
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["complete"] and [h["epoch"] for h in state["history"]] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 32 and 0.0 <= metrics["test"]["roc_auc"] <= 1.0
    # The non-chief worker wrote into a temporary directory and deleted it; the killed one
    # of the first attempt could not.
    def worker_dirs(tag):
        return [p.name[:len("pneumoscan-workerN")] for p in (tmp / f"{tag}-tmp").glob("pneumoscan-worker*")]

    assert worker_dirs("resume") == []
    assert worker_dirs("first") == ["pneumoscan-worker1"]


# ------------------------------------------------------------------ precision, flags, setup errors
def test_auto_precision_and_xla_follow_the_device():
    from pneumoscan.training.precision import on_gpu, resolve_jit, resolve_precision

    assert resolve_precision("auto", gpu=False) == "float32"
    assert resolve_jit("auto", gpu=False) is False
    assert resolve_precision("auto", gpu=True) == "mixed_float16"
    assert resolve_jit("auto", replicas=1, gpu=True) is True
    assert resolve_jit("auto", replicas=2, gpu=True) is False
    # Without an explicit device, whatever this host has: the same rule, on a CPU or a GPU host.
    gpu = on_gpu()
    assert resolve_precision("auto") == ("mixed_float16" if gpu else "float32")
    assert resolve_jit("auto") is gpu


def test_mixed_precision_keeps_the_softmax_in_float32_and_trains(kermany_dir):
    import keras
    import numpy as np

    from pneumoscan.config import Config
    from pneumoscan.imaging import load_image
    from pneumoscan.models import build_model
    from pneumoscan.training.precision import dtype_policy
    from pneumoscan.training.loop import compile_model

    cfg = Config()
    cfg.model.name, cfg.model.width = "pneumonet_small", 8
    with dtype_policy("mixed_bfloat16"):
        model = build_model(cfg.model, 32)
    assert keras.config.dtype_policy().name == "float32"  # restored after building
    assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert model.get_layer("probs").compute_dtype == "float32"
    files = sorted((kermany_dir / "train" / "NORMAL").glob("*.jpeg"))[:4] + sorted((kermany_dir / "train" / "PNEUMONIA").glob("*.jpeg"))[:4]
    x = np.stack([load_image(f, 32).array for f in files]).astype("float32")[..., None]
    y = np.eye(2, dtype="float32")[[0] * 4 + [1] * 4]
    assert model(x).dtype == "float32"
    compile_model(model, cfg, steps_per_epoch=1, jit_compile=False)
    losses = [float(model.train_on_batch(x, y, return_dict=True)["loss"]) for _ in range(3)]
    assert all(np.isfinite(losses))
    probs = np.asarray(model(x, training=False))
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_bad_hardware_settings_are_one_clear_line(tmp_path, monkeypatch, capsys, shared_data):
    from pneumoscan.cli import main

    assert main(["train", "--data", str(shared_data), "--out", str(tmp_path / "a"), "--set", "train.strategy=cluster"]) == 2
    assert "train.strategy must be one of auto, one, mirrored, multiworker" in capsys.readouterr().err
    monkeypatch.setenv("TF_CONFIG", "{not json")
    assert main(["train", "--data", str(shared_data), "--out", str(tmp_path / "b"), "--strategy", "multiworker"]) == 2
    assert "TF_CONFIG is not valid JSON" in capsys.readouterr().err
    monkeypatch.delenv("TF_CONFIG")
    assert main(["train", "--data", str(shared_data), "--out", str(tmp_path / "c"), "--strategy", "multiworker"]) == 2
    assert "needs TF_CONFIG" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "d"), "--precision", "float8"])
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_auto_precision_on_a_cpu_is_measured_once_and_cached(monkeypatch, tmp_path):
    from pneumoscan.config import resolve
    from pneumoscan.training.precision import resolve_precision
    from pneumoscan.training.precision_probe import MIN_SPEEDUP, measured_cpu_precision

    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path))
    cfg = resolve(overrides={"data": {"image_size": 32}, "model": {"name": "pneumonet_small", "width": 8},
                             "train": {"batch_size": 4}})
    calls = []

    def fake(speedup):
        def measure(c, policy):
            calls.append(policy)
            return 100.0 if policy == "float32" else 100.0 / speedup
        return measure

    assert measured_cpu_precision(cfg, fake(MIN_SPEEDUP + 0.05)) == "mixed_bfloat16"
    assert calls == ["float32", "mixed_bfloat16"]
    assert measured_cpu_precision(cfg, fake(1.0)) == "mixed_bfloat16"  # cached: not measured again
    assert len(calls) == 2
    other = resolve(overrides={"data": {"image_size": 48}, "model": {"name": "pneumonet_small", "width": 8}})
    assert measured_cpu_precision(other, fake(1.02)) == "float32"  # not worth bfloat16's rounding
    # The real probe: a few steps of a small model in both precisions.
    real = resolve(overrides={"data": {"image_size": 32}, "model": {"name": "seed_cnn", "width": 4},
                              "train": {"batch_size": 4}})
    assert measured_cpu_precision(real) in ("float32", "mixed_bfloat16")
    assert resolve_precision("auto", gpu=False, measure=lambda: "mixed_bfloat16") == "mixed_bfloat16"
    assert resolve_precision("auto", gpu=True, measure=lambda: "mixed_bfloat16") == "mixed_float16"
    assert resolve_precision("float32", gpu=False, measure=lambda: pytest.fail("measured an explicit choice"))


def test_weight_averaging_is_configured_and_checked():
    from pneumoscan.config import ConfigError, resolve

    assert resolve(overrides={"train": {"ema": "0.99"}}).train.ema == 0.99
    with pytest.raises(ConfigError, match="train.ema must be a momentum between 0 and 1"):
        resolve(overrides={"train": {"ema": "1.5"}})


def test_the_weight_average_never_outlasts_a_short_run():
    from pneumoscan.training.loop import ema_momentum

    assert ema_momentum(0.99, 144 * 22) == 0.99  # the default run: 3,168 steps
    assert ema_momentum(0.99, 100) == pytest.approx(0.9)  # spans a tenth of the run at most
    assert ema_momentum(0.99, 10) is None and ema_momentum(None, 5000) is None
