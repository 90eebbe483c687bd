"""Inference benchmark: batch throughput (Keras vs ONNX Runtime) and the web app's latency.

    python benchmarks/inference.py --run RUN_DIR [--data ../shared/data]

Measures, side by side in one run on this machine:
1. images per second of ``Predictor.probabilities`` on preprocessed real test images, for
   the keras and onnx engines, at batch 1 and batch 32 (decoding excluded: that is the
   same for both engines);
2. the app (``pneumoscan serve``, started as a subprocess on 127.0.0.1) answering
   single-image ``POST /api/predict`` requests from 8 concurrent local clients: p50 and
   p99 latency and requests per second, for each engine (decoding included, Grad-CAM off).

Without ``--run`` a small run of the default model is trained first (the speed of a model
depends on its architecture and input size, not on how well it was trained); the results
file says so. Writes benchmarks/results/inference.md. Every request goes to 127.0.0.1 only,
and the request count is bounded (``--requests``).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
from quality import cpu_name  # benchmarks/ is on sys.path when this script runs

HERE = Path(__file__).resolve().parent
ENGINES = ("keras", "onnx")
BATCH_SIZES = (1, 32)
CLIENTS = 8


def busy_processes() -> list[str]:
    """Other heavy pneumoscan jobs on this machine (the quality benchmark, trainings, test runs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(k in cmd for k in ("quality.py", "pneumoscan train", "pytest")):
            found.append(cmd[:120])
    return found


def small_run(data: str, out: Path) -> Path:
    from pneumoscan.config import resolve
    from pneumoscan.api import train

    overrides = {"data": {"source": "kermany", "max_per_class": 100},
                 "train": {"epochs": 1, "max_minutes": None}, "evaluate": {"bootstrap": 100}}
    print(f"no --run given: training a small run of the default model into {out}", flush=True)
    return train(data, out, config=resolve(overrides=overrides), verbose=0).root


def test_images(data: Path, count: int) -> list[Path]:
    root = data / "chest_xray_kermany_224" / "test"
    per_class = [sorted((root / cls).glob("*.jpeg")) for cls in ("NORMAL", "PNEUMONIA")]
    mixed = [p for pair in zip(*per_class) for p in pair]
    if len(mixed) < count:
        raise SystemExit(f"{root}: only {len(mixed)} test images, need {count}")
    return mixed[:count]


# --- 1. batch throughput -------------------------------------------------------------------

def throughput(run: Path, arrays: np.ndarray, repeats: int) -> dict[tuple[str, int], float]:
    """Images per second, the median of ``repeats`` timed passes after one warm-up pass."""
    from pneumoscan.inference.predictor import Predictor

    out = {}
    for engine in ENGINES:
        predictor = Predictor.from_run(run, engine=engine)
        for batch in BATCH_SIZES:
            # Batch 1 is ~30x slower per image: time fewer images so each pass stays short.
            images = arrays[: min(len(arrays), 64)] if batch == 1 else arrays

            def one_pass():
                for start in range(0, len(images), batch):
                    predictor.probabilities(images[start:start + batch])

            one_pass()  # warm-up: graph tracing, oneDNN/ORT kernel selection
            rates = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                one_pass()
                rates.append(len(images) / (time.perf_counter() - t0))
            out[(engine, batch)] = statistics.median(rates)
            print(f"  {engine:<5} batch {batch:>2}: {out[(engine, batch)]:8.1f} images/s", flush=True)
    return out


# --- 2. the app under 8 concurrent clients ---------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(run: Path, engine: str, port: int) -> subprocess.Popen:
    cli = Path(sys.executable).with_name("pneumoscan")
    cmd = [str(cli), "serve", str(run), "--host", "127.0.0.1", "--port", str(port), "--engine", engine]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pneumoscan serve exited early: {proc.stderr.read().decode()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("pneumoscan serve did not answer /health within 180 s")


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def latency(port: int, files: list[Path], requests: int) -> dict:
    """``requests`` single-image POSTs from CLIENTS threads, each on its own keep-alive connection."""
    bodies = [multipart(p) for p in files]
    per_client = requests // CLIENTS
    timings: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for i in range(per_client):
            body, content_type = bodies[(index * per_client + i) % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200 and json.loads(payload)["results"][0]["error"] is None
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                ok, payload = False, str(exc).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - t0
            with lock:
                if ok:
                    timings.append(elapsed)
                else:
                    failures.append(payload[:200].decode(errors="replace"))
        conn.close()

    # Warm-up: one request per client path, not timed.
    warm = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body, content_type = bodies[0]
    warm.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
    warm.getresponse().read()
    warm.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(timings) * 1000
    return {"n": len(timings), "failed": len(failures), "first_failure": failures[0] if failures else "",
            "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
            "rps": len(timings) / wall}


def app_latency(run: Path, files: list[Path], requests: int) -> dict[str, dict]:
    out = {}
    for engine in ENGINES:
        port = free_port()
        proc = start_app(run, engine, port)
        try:
            out[engine] = latency(port, files, requests)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        r = out[engine]
        print(f"  app {engine:<5}: p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, {r['rps']:.1f} req/s, "
              f"{r['failed']} failed", flush=True)
    return out


# --- the report ---------------------------------------------------------------------------

def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def render(args, run: Path, trained_here: bool, n_images: int, rates: dict, app: dict, load: dict,
           busy: list[str], command: str) -> str:
    from pneumoscan.runs import Run

    cfg = Run(run).config()
    # Before: other jobs only. After: includes this benchmark's own server and clients (about 2).
    shared = busy or load["before"][0] > 1.0 or load["after"][0] > 3.0
    lines = [
        "# Inference benchmark",
        "",
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Command: `{command}`",
        f"- Machine: {os.cpu_count()} CPU cores ({cpu_name()}), {platform.system()} {platform.machine()}, no GPU",
        f"- Versions: tensorflow {version('tensorflow-cpu') if version('tensorflow-cpu') != 'not installed' else version('tensorflow')}, "
        f"keras {version('keras')}, onnxruntime {version('onnxruntime')}, tf2onnx {version('tf2onnx')}",
        f"- Model: `{cfg.model.name}` at {cfg.data.image_size} px, run `{run.name}`"
        + (" (a small run trained by this script for the benchmark: 1 epoch on 100 images per class; "
           "speed depends on the architecture and input size, not on the training)" if trained_here else ""),
        f"- Load average (1 min) before / after: {load['before'][0]:.2f} / {load['after'][0]:.2f}",
    ]
    if shared:
        why = [f"other jobs: {'; '.join(f'`{b}`' for b in busy)}"] if busy else []
        if load["before"][0] > 1.0:
            why.append("load average above 1 before the start")
        if load["after"][0] > 3.0:
            why.append("load average above 3 at the end, more than this benchmark's own server and clients")
        lines.append(f"- **The machine was shared while this ran** ({'; '.join(why)}); "
                     "the numbers are lower and noisier than on a quiet machine.")
    lines += [
        "",
        f"## Batch prediction ({n_images} preprocessed real test images; batch 1 times the first 64)",
        "",
        "`Predictor.probabilities` on (N, S, S) uint8 arrays: model + temperature calibration, no decoding.",
        "Median of " + str(args.repeats) + " timed passes after a warm-up pass.",
        "",
        "| engine | batch 1 (images/s) | batch 32 (images/s) |",
        "| --- | ---: | ---: |",
    ]
    for engine in ENGINES:
        lines.append(f"| {engine} | {rates[(engine, 1)]:.1f} | {rates[(engine, 32)]:.1f} |")
    lines += [
        "",
        f"## Web app: single-image requests from {CLIENTS} concurrent local clients",
        "",
        f"`pneumoscan serve RUN --engine E` on 127.0.0.1; each client posts one JPEG per request "
        f"(`POST /api/predict`, Grad-CAM off) on a keep-alive connection; {args.requests} requests per engine "
        "after one warm-up request. Latency includes upload, decoding, preprocessing, inference and JSON.",
        "",
        "| engine | requests | failed | p50 latency (ms) | p99 latency (ms) | requests/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for engine in ENGINES:
        r = app[engine]
        lines.append(f"| {engine} | {r['n']} | {r['failed']} | {r['p50']:.0f} | {r['p99']:.0f} | {r['rps']:.1f} |")
    failures = [f"{e}: {app[e]['first_failure']}" for e in ENGINES if app[e]["failed"]]
    if failures:
        lines += ["", "First failure per engine: " + "; ".join(failures)]
    lines += ["", "Reproduce: `" + command + "`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="trained run directory (default: train a small one first)")
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA", str(HERE.parent.parent / "shared" / "data")))
    parser.add_argument("--images", type=int, default=256, help="test images for the throughput passes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400, help="requests per engine against the app")
    parser.add_argument("--out", default=str(HERE / "results" / "inference.md"))
    parser.add_argument("--allow-busy", action="store_true",
                        help="run even while the quality benchmark, a training or a test run is going on")
    args = parser.parse_args(argv)
    command = "python benchmarks/inference.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    busy = busy_processes()
    if busy and not args.allow_busy:
        print("other heavy jobs are running; the numbers would measure them too:\n  " + "\n  ".join(busy)
              + "\nwait for them, or pass --allow-busy (the results file then says the machine was shared)",
              file=sys.stderr)
        return 3
    if args.requests < CLIENTS:
        parser.error(f"--requests must be at least {CLIENTS}")

    load = {"before": os.getloadavg()}
    data = Path(args.data)
    with tempfile.TemporaryDirectory(prefix="pneumoscan-bench-") as scratch:
        os.environ.setdefault("PNEUMOSCAN_CACHE", str(Path(scratch) / "cache"))
        run = Path(args.run) if args.run else small_run(str(data), Path(scratch) / "run")
        from pneumoscan.imaging import load_image
        from pneumoscan.runs import Run

        size = Run(run).config().data.image_size
        files = test_images(data, args.images)
        arrays = np.stack([load_image(p, size).array for p in files])
        print(f"throughput on {len(arrays)} images at {size} px", flush=True)
        rates = throughput(run, arrays, args.repeats)
        print(f"app latency, {CLIENTS} clients, {args.requests} requests per engine", flush=True)
        app = app_latency(run, files, args.requests)
        load["after"] = os.getloadavg()
        busy += [b for b in busy_processes() if b not in busy]  # jobs that started while this ran
        report = render(args, run, not args.run, len(arrays), rates, app, load, busy, command)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
