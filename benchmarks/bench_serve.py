"""``pyimgcls serve`` end to end on this machine (loopback only, bounded request loops).

Cases (each server is a real ``pyimgcls serve`` subprocess on a free loopback port, CPU kernels):

1. ResNet-18 on 32x32 digits, 16 concurrent clients: throughput with dynamic batching
   (``--max-batch-size 32 --max-delay-ms 5``) and with ``--max-batch-size 1``, side by side; the ratio
   (target >= 2x), p50 / p99 latency of each.
2. LeNet-5 on 32x32 digits, one client, sequential requests: p50 / p99 latency (target p50 <= 5 ms).
3. LeNet-5, 1,000 requests from 8 clients, every 10th malformed: every request answered (200 or
   400), the server still ready, the metrics consistent with what the clients saw.

Clients are threads of this process, each on its own keep-alive HTTP/1.1 connection, posting one PNG
per request (``Content-Type: image/png``); latency is measured by the client from request to the last
byte of the answer. The checkpoints are built here (seeded, untrained: speed does not depend on the
weights) with the digits data set's metadata; requests are digits images from scikit-learn.

    python benchmarks/bench_serve.py                 # full run, writes benchmarks/results/serve_<date>_<sha>.json
    python benchmarks/bench_serve.py --quick         # fewer requests
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import http.client
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

SCHEMA = "pyimgcls-serve-bench/1"


def digits_pngs(n: int) -> list[bytes]:
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    out = []
    for img in d.images[:n]:
        b = io.BytesIO()
        Image.fromarray((img * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.BILINEAR).save(b, "PNG")
        out.append(b.getvalue())
    return out


def make_checkpoint(path: str, model: str, in_channels: int) -> str:
    import torch

    from pyimgcls.training import checkpoint as ckpt_mod
    from pyimgcls.training.loop import build_model
    torch.manual_seed(0)
    net = build_model(model, 10, in_channels)
    meta = {"dataset": "digits", "num_classes": 10, "in_channels": in_channels, "image_size": 32,
            "class_names": [str(i) for i in range(10)], "mean": [0.3] * in_channels, "std": [0.32] * in_channels,
            "model": model}
    ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "meta": meta, "model": net.state_dict()}, path)
    return path


class Server:
    def __init__(self, checkpoint: str, *args, log_dir: str):
        self.log = open(os.path.join(log_dir, f"serve-{os.path.basename(checkpoint)}-{time.time_ns()}.log"), "w")
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "pyimgcls", "serve", "--checkpoint", checkpoint,
                                      "--port", "0", "--kernels", "cpu", *map(str, args)],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on http://([\d.]+):(\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"server did not start: {line!r}")
        self.host, self.port = m.group(1), int(m.group(2))
        t_end = time.monotonic() + 300
        while self.get("/readyz")[0] != 200:
            if time.monotonic() > t_end or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("server not ready")
            time.sleep(0.1)

    def get(self, path: str):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def metrics(self) -> str:
        return self.get("/metrics")[1].decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{.*\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
    return total


def load(server: Server, bodies: list[bytes], clients: int, per_client: int, bad_every: int = 0):
    """``clients`` threads x ``per_client`` requests; returns (wall seconds, [(bad, status, seconds)])."""
    start = threading.Barrier(clients + 1)

    def client(c: int):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        out = []
        start.wait()
        for i in range(per_client):
            k = c * per_client + i
            bad = bool(bad_every) and k % bad_every == bad_every - 1
            body = b"\x89PNG this is not an image" if bad else bodies[k % len(bodies)]
            t0 = time.perf_counter()
            conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "image/png"})
            r = conn.getresponse()
            r.read()
            out.append((bad, r.status, time.perf_counter() - t0))
        conn.close()
        return out

    with cf.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, c) for c in range(clients)]
        start.wait()
        t0 = time.perf_counter()
        results = [x for f in futures for x in f.result()]
        wall = time.perf_counter() - t0
    return wall, results


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def throughput_case(name, server, bodies, clients, per_client) -> dict:
    before = server.metrics()
    load(server, bodies, clients, max(2, per_client // 10))          # warm the connections and the pool
    before = server.metrics()
    wall, res = load(server, bodies, clients, per_client)
    after = server.metrics()
    ok = [s for _, st, s in res if st == 200]
    batches = metric(after, "pyimgcls_batch_size_count") - metric(before, "pyimgcls_batch_size_count")
    images = metric(after, "pyimgcls_batch_size_sum") - metric(before, "pyimgcls_batch_size_sum")
    return {"case": name, "clients": clients, "requests": len(res), "ok": len(ok), "wall_s": round(wall, 3),
            "requests_per_s": round(len(ok) / wall, 2), "p50_ms": round(pct(ok, 50), 2),
            "p99_ms": round(pct(ok, 99), 2), "mean_batch": round(images / batches, 2) if batches else None}


def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench_serve_")
    bodies = digits_pngs(64)
    resnet = make_checkpoint(os.path.join(tmp, "resnet18-digits.pt"), "resnet18", 3)
    lenet = make_checkpoint(os.path.join(tmp, "lenet5-digits.pt"), "lenet5", 1)
    per_client = 8 if args.quick else 25
    cases = []
    load_before = os.getloadavg()

    for label, batch in (("resnet18 batching (max-batch 32, delay 5 ms)", 32), ("resnet18 max-batch-size 1", 1)):
        srv = Server(resnet, "--max-batch-size", batch, "--max-delay-ms", 5, "--threads", args.threads, log_dir=tmp)
        try:
            cases.append(throughput_case(label, srv, bodies, 16, per_client))
        finally:
            srv.stop()
        print(json.dumps(cases[-1]), flush=True)
    ratio = cases[0]["requests_per_s"] / cases[1]["requests_per_s"]

    srv = Server(lenet, log_dir=tmp)
    try:
        n = 60 if args.quick else 300
        load(srv, bodies, 1, 20)
        wall, res = load(srv, bodies, 1, n)
        lat = [s for _, st, s in res if st == 200]
        cases.append({"case": "lenet5 single client", "clients": 1, "requests": n, "ok": len(lat),
                      "wall_s": round(wall, 3), "requests_per_s": round(len(lat) / wall, 2),
                      "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3), "mean_batch": 1.0})
        print(json.dumps(cases[-1]), flush=True)

        before = srv.metrics()
        wall, res = load(srv, bodies, 8, 125, bad_every=10)
        after = srv.metrics()
        bad = sum(b for b, _, _ in res)
        statuses = {}
        for _, st, _ in res:
            statuses[str(st)] = statuses.get(str(st), 0) + 1
        d = {s: int(metric(after, "pyimgcls_requests_total", endpoint="/v1/predict", status=s)
                    - metric(before, "pyimgcls_requests_total", endpoint="/v1/predict", status=s))
             for s in ("200", "400")}
        images = int(metric(after, "pyimgcls_images_total") - metric(before, "pyimgcls_images_total"))
        ready = srv.get("/readyz")[0] == 200
        consistent = (d["200"] == statuses.get("200", 0) and d["400"] == statuses.get("400", 0)
                      and images == statuses.get("200", 0))
        all_answered = (len(res) == 1000 and all((st == 400) if b else (st == 200) for b, st, _ in res))
        robust = {"case": "lenet5 1000 requests, 10% malformed", "clients": 8, "requests": len(res),
                  "malformed": bad, "statuses": statuses, "metrics_requests": d, "metrics_images": images,
                  "all_answered_as_documented": all_answered, "ready_after": ready,
                  "metrics_consistent": consistent, "wall_s": round(wall, 3)}
        cases.append(robust)
        print(json.dumps(robust), flush=True)
    finally:
        srv.stop()

    from report import device_name, git_commit, versions
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    return {"schema": SCHEMA, "date": now.isoformat(), "commit": git_commit(), "device": device_name("cpu"),
            "cpus": os.cpu_count(), "python": platform.python_version(), "versions": versions(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "note": "CPU kernels, loopback; the machine was shared with other jobs (see load averages)",
            "resnet18_threads": args.threads,
            "batching_speedup": round(ratio, 2),
            "targets": {"batching_speedup_ge_2": ratio >= 2.0, "lenet5_p50_le_5ms": cases[2]["p50_ms"] <= 5.0,
                        "nothing_lost": robust["all_answered_as_documented"] and robust["ready_after"]
                        and robust["metrics_consistent"]},
            "cases": cases}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer requests per case")
    p.add_argument("--threads", type=int, default=1,
                   help="serve --threads for the ResNet-18 servers (0: serve's default, all cores; OpenMP on all "
                        "cores collapses when other processes keep them busy)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the results JSON")
    args = p.parse_args(argv)
    res = run(args)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"serve_{res['date'][:10]}_{(res['commit'] or 'nogit')[:7]}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"batching speedup {res['batching_speedup']}x; targets {res['targets']}; wrote {path}")
    return 0 if all(res["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
