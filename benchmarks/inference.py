"""Inference benchmark: batch throughput (Keras, ONNX Runtime float32 and int8) and the web
app's latency with and without micro-batching, under load and overload.

    python benchmarks/inference.py --run RUN_DIR [--data ../shared/data]

Measures, side by side in one run on this machine:
1. images per second of ``Predictor.probabilities`` on preprocessed real test images for the
   keras, onnx and onnx-int8 engines at batch 1 and 32 (decoding excluded); the int8 model is
   made first by ``pneumoscan export RUN --format onnx --quantize int8``, and its quality check
   on validation (label agreement, ROC-AUC change) is reported;
2. the app (``pneumoscan serve`` as a subprocess on 127.0.0.1), for each engine, unbatched
   (``--max-batch 1``: every request scored alone, as before micro-batching) and batched (the
   defaults): single-image ``POST /api/predict`` requests from 8 and from 32 concurrent
   clients, p50 / p99 latency, requests per second and failures; Grad-CAM requests separately;
3. overload: 256 concurrent clients against the batched app: how many answers were 200, 503
   (with Retry-After) or failures, and whether the app answers normally afterwards.

Without ``--run`` a small run of the default model is trained first (speed depends on the
architecture and input size, not on the training; the int8 quality check then means little).
Writes benchmarks/results/inference.md. Every request goes to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shlex
import shutil
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
from pneumoscan.runs import cpu_model as cpu_name

HERE = Path(__file__).resolve().parent
ENGINES = ("keras", "onnx", "onnx-int8")  # batch throughput
APP_ENGINES = ("keras", "onnx")
APP_MODES = {"unbatched": ["--max-batch", "1"], "batched": []}
BATCH_SIZES = (1, 32)
CLIENT_COUNTS = (8, 32)
OVERLOAD_CLIENTS = 256
TARGETS = {"p99_ms_8": 100.0, "rps_ratio_8": 2.0}


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

def quantize(run: Path) -> dict | None:
    """Make the int8 model (as `pneumoscan export --quantize int8` does) and return its quality check."""
    from pneumoscan.deploy.quantize import quantize_int8
    from pneumoscan.errors import ExportError

    try:
        target = quantize_int8(run)
    except ExportError as exc:
        print(f"int8: {exc}", flush=True)
        return None
    return json.loads((target.parent / "preprocessing.json").read_text())["exports"]["onnx-int8"]["check"]


def throughput(run: Path, arrays: np.ndarray, repeats: int, with_int8: bool) -> dict[tuple[str, int], float]:
    """Images per second, the median of ``repeats`` timed passes after one warm-up pass."""
    from pneumoscan.inference.predictor import Predictor

    out = {}
    for engine in ENGINES if with_int8 else ENGINES[:2]:
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


def start_app(run: Path, engine: str, port: int, extra: list[str], source: Path | None = None) -> subprocess.Popen:
    """``pneumoscan serve`` in a child process; ``source``: another checkout's src/ to run instead."""
    cli = Path(sys.executable).with_name("pneumoscan")
    cmd = [str(cli), "serve", str(run), "--host", "127.0.0.1", "--port", str(port), "--engine", engine, *extra]
    env = {**os.environ, "PYTHONPATH": str(source)} if source else None
    # The app logs a line per request: into a file, never a pipe nobody reads (a full pipe would block it).
    log = tempfile.NamedTemporaryFile(prefix="pneumoscan-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pneumoscan serve exited early: {Path(log.name).read_text()[-2000:]}")
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


def latency(port: int, files: list[Path], requests: int, clients: int, query: str = "") -> dict:
    """``requests`` single-image POSTs from ``clients`` threads, each on its own keep-alive connection."""
    bodies = [multipart(p) for p in files]
    per_client = max(1, requests // clients)
    statuses: dict[int, int] = {}
    timings: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for i in range(per_client):
            body, content_type = bodies[(index * per_client + i) % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/predict" + query, body=body, headers={"Content-Type": content_type})
                response = conn.getresponse()
                payload = response.read()
                with lock:
                    statuses[response.status] = statuses.get(response.status, 0) + 1
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

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(timings) * 1000
    return {"n": len(timings), "failed": len(failures), "first_failure": failures[0] if failures else "",
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "clients": clients,
            "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
            "rps": len(timings) / wall}


def health(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def app_latency(run: Path, files: list[Path], requests: int, before: Path | None) -> dict[str, dict]:
    """{"engine/mode": {clients: latency, "gradcam": latency, "overload": ...}}; mode "before" is
    the app of another checkout (``before``: its root), served from a copy of the run."""
    out = {}
    modes = dict(APP_MODES)
    if before:
        modes = {"before": [], **modes}
        copy = Path(tempfile.mkdtemp(prefix="pneumoscan-before-run-")) / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "checkpoints"))  # its own ONNX export
    for engine in APP_ENGINES:
        for mode, extra in modes.items():
            port = free_port()
            proc = (start_app(copy, engine, port, [], before / "src") if mode == "before"
                    else start_app(run, engine, port, extra))
            key = f"{engine}/{mode}"
            try:
                out[key] = {str(c): latency(port, files, requests, c) for c in CLIENT_COUNTS}
                for c in CLIENT_COUNTS:
                    r = out[key][str(c)]
                    print(f"  app {key:<16} {c:>3} clients: p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, "
                          f"{r['rps']:.1f} req/s, {r['failed']} failed", flush=True)
                if mode == "batched":
                    out[key]["gradcam"] = latency(port, files, requests // 5, 8, "?gradcam=1")
                    print(f"  app {key} Grad-CAM: p50 {out[key]['gradcam']['p50']:.0f} ms", flush=True)
                    overload = latency(port, files, OVERLOAD_CLIENTS * 2, OVERLOAD_CLIENTS)
                    after = latency(port, files, 40, 4)
                    out[key]["overload"] = {**overload, "after": after, "alive": proc.poll() is None,
                                            "health": health(port)["status"]}
                    print(f"  app {key} overload: {overload['statuses']}, after: {after['statuses']}", flush=True)
                out[key]["batching"] = health(port).get("batching") if mode != "before" else None
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return out


# --- the report ---------------------------------------------------------------------------

def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def render(args, run: Path, trained_here: bool, n_images: int, rates: dict, int8: dict | None, app: dict,
           load: dict, busy: list[str], command: str) -> str:
    from pneumoscan.runs import Run

    cfg = Run(run).config()
    # Before: other jobs only. After: includes this benchmark's own server and clients.
    shared = busy or load["before"][0] > 1.0
    tf_version = version("tensorflow-cpu") if version("tensorflow-cpu") != "not installed" else version("tensorflow")
    lines = [
        "# Inference benchmark", "",
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Command: `{command}`",
        f"- Machine: {os.cpu_count()} CPU cores ({cpu_name()}), {platform.system()} {platform.machine()}, no GPU",
        f"- Versions: tensorflow {tf_version}, keras {version('keras')}, onnxruntime {version('onnxruntime')}, "
        f"tf2onnx {version('tf2onnx')}",
        f"- Model: `{cfg.model.name}` at {cfg.data.image_size} px, run `{run}`"
        + (" (a small run trained by this script: speed depends on the architecture and input size, not on the "
           "training)" if trained_here else ""),
        f"- Load average (1 min) before / after: {load['before'][0]:.2f} / {load['after'][0]:.2f}",
        "- The load generator (Python threads) runs on the same 2 cores as the app, as before.",
    ]
    if shared:
        lines.append(f"- **The machine was shared while this ran** ({'; '.join(busy) or 'load average above 1 before'}).")
    lines += ["", f"## Batch prediction ({n_images} preprocessed real test images; batch 1 times the first 64)", "",
              "`Predictor.probabilities` on (N, S, S) uint8 arrays: model + temperature calibration, no decoding. "
              f"Median of {args.repeats} timed passes after a warm-up pass.", "",
              "| engine | batch 1 (images/s) | batch 32 (images/s) |", "| --- | ---: | ---: |"]
    for engine in ENGINES:
        if (engine, 1) in rates:
            lines.append(f"| {engine} | {rates[(engine, 1)]:.1f} | {rates[(engine, 32)]:.1f} |")
    if int8:
        lines += ["", f"int8 quality check (`pneumoscan export RUN --format onnx --quantize int8`, calibrated on "
                  f"{int8['calibration_images']} validation images, checked on all {int8['images']}): labels agree with "
                  f"the float model on **{int8['label_agreement']:.2%}** (needs >= {int8['min_agreement']:.0%}), "
                  f"validation ROC-AUC {int8['roc_auc_float']:.4f} -> {int8['roc_auc_int8']:.4f} "
                  f"(**{int8['roc_auc_change']:+.4f}**, allowed ±{int8['max_auc_change']}), largest probability "
                  f"difference {int8['max_probability_difference']:.4f}"
                  + (f", out-of-scope verdicts agree on {int8['in_scope_agreement']:.2%}" if "in_scope_agreement" in int8 else "")
                  + "."]
    lines += ["", "## Web app", "",
              "`pneumoscan serve RUN --engine E` on 127.0.0.1: *before* (the app of the checkout given by `--before`, "
              "served from a copy of the run, when given), unbatched (`--max-batch 1`: each request scored alone, "
              "on today's server) and batched (defaults: at most 16 images a batch, 4 ms wait, 128 queued). Each client posts one JPEG per request (`POST /api/predict`) on a keep-alive connection, "
              f"{args.requests} requests per line after one warm-up request. Latency includes upload, decoding, "
              "inference and JSON.", "",
              "| engine | mode | clients | requests | failed | p50 (ms) | p99 (ms) | requests/s | images per batch |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, results in app.items():
        engine, mode = key.split("/")
        batching = results.get("batching") or {}
        per_batch = f"{batching['images'] / batching['batches']:.1f}" if batching.get("batches") else ""
        for c in CLIENT_COUNTS:
            r = results[str(c)]
            lines.append(f"| {engine} | {mode} | {c} | {r['n'] + r['failed']} | {r['failed']} | {r['p50']:.0f} | "
                         f"{r['p99']:.0f} | {r['rps']:.1f} | " + (f"{per_batch} |" if c == CLIENT_COUNTS[-1] else " |"))
    lines += ["", "Images per batch: over the app's whole life (all loads, warm-ups included), from `/health`.", "",
              "### Targets (8 clients, batched)", "", "| engine | p99 (ms) | target | requests/s vs before (unbatched without --before) | target | "
              "failed at 32 clients |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for engine in APP_ENGINES:
        b = app[f"{engine}/batched"]
        base = app.get(f"{engine}/before") or app[f"{engine}/unbatched"]
        ratio = b["8"]["rps"] / base["8"]["rps"]
        lines.append(f"| {engine} | {b['8']['p99']:.0f} | <= {TARGETS['p99_ms_8']:.0f} "
                     f"({'met' if b['8']['p99'] <= TARGETS['p99_ms_8'] else 'missed'}) | {ratio:.2f}x | >= 2x "
                     f"({'met' if ratio >= TARGETS['rps_ratio_8'] else 'missed'}) | {b['32']['failed']} |")
    lines += ["", "What limits requests/s at 8 clients: the model is a small part of a request. At batch 32 the "
              "model scores an image in about 2 ms (table above), while each request costs about 2 cores / "
              "(requests/s) of CPU in all, some 15 ms: HTTP and multipart parsing, JPEG decoding, JSON, the "
              "event loop, and the load generator's own Python threads on the same 2 cores. Batching removes "
              "only the model's per-call overhead, so it helps most where the queue is deep (32 clients).",
              "", "### Grad-CAM requests (8 clients, batched app, `?gradcam=1`)", "",
              "The first Grad-CAM request builds the gradient graph (about 2-3 s): that is the p99 below.", "",
              "| engine | requests | failed | p50 (ms) | p99 (ms) | requests/s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for engine in APP_ENGINES:
        r = app[f"{engine}/batched"]["gradcam"]
        lines.append(f"| {engine} | {r['n'] + r['failed']} | {r['failed']} | {r['p50']:.0f} | {r['p99']:.0f} | {r['rps']:.1f} |")
    lines += ["", f"### Overload: {OVERLOAD_CLIENTS} concurrent clients, 2 requests each (batched app)", "",
              "| engine | HTTP statuses | connection errors | app alive after | 4 clients after (statuses) |",
              "| --- | --- | ---: | --- | --- |"]
    for engine in APP_ENGINES:
        o = app[f"{engine}/batched"]["overload"]
        errors = o["n"] + o["failed"] - sum(o["statuses"].values())
        lines.append(f"| {engine} | {o['statuses']} | {errors} | {'yes' if o['alive'] and o['health'] == 'ok' else 'NO'} "
                     f"| {o['after']['statuses']} |")
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
    parser.add_argument("--before", metavar="CHECKOUT", help="also serve the app of this checkout (say, a git "
                        "worktree of the commit before micro-batching), side by side in this run")
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
    if args.requests < max(CLIENT_COUNTS):
        parser.error(f"--requests must be at least {max(CLIENT_COUNTS)}")

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
        int8 = quantize(run)
        print(f"throughput on {len(arrays)} images at {size} px", flush=True)
        rates = throughput(run, arrays, args.repeats, int8 is not None)
        print(f"app latency, {CLIENT_COUNTS} clients, {args.requests} requests per line", flush=True)
        app = app_latency(run, files, args.requests, Path(args.before) if args.before else None)
        load["after"] = os.getloadavg()
        busy += [b for b in busy_processes() if b not in busy]  # jobs that started while this ran
        report = render(args, run, not args.run, len(arrays), rates, int8, app, load, busy, command)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"rates": {f"{e}/{b}": v for (e, b), v in rates.items()}, "int8": int8, "app": app}, indent=1) + "\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
