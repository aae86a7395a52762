"""``pyimgcls serve``: the real server, started as a subprocess on a free loopback port (``--port 0``;
it prints the address it bound), driven over HTTP with the standard library.

Three servers: a LeNet-5 one (every endpoint, the numbers of ``pyimgcls predict``, the v2 protocol,
every 4xx, batching under concurrent load, malformed traffic, the page in headless chromium), a slow
ResNet-18 one with an API key and a 2-request queue (readiness during warm-up, 401, 503 queue full,
504 timeout), and a ResNet-18 one with a 5 s batching delay (SIGTERM answers the queued requests at
once, then exits). Checkpoints are built in-process (seeded, untrained) and saved in the checkpoint
format; kernel outputs are poisoned with NaN in the servers (PYIMGCLS_POISON=1)."""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import http.client
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import pyimgcls
from pyimgcls import cli
from pyimgcls.data import load_image
from pyimgcls.training import checkpoint as ckpt_mod
from pyimgcls.training.loop import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "s3cret-key_123"


# ------------------------------------------------------------------------------------- helpers
def make_checkpoint(path, model: str, in_channels: int, classes: list[str], seed: int, scale: float = 1.0,
                    image_size: int = 32):
    torch.manual_seed(seed)
    net = build_model(model, len(classes), in_channels)
    if scale != 1.0:   # sharper scores, so the top-k order is far from ties
        last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(scale)
    meta = {"dataset": "synthetic", "num_classes": len(classes), "in_channels": in_channels, "image_size": image_size,
            "class_names": classes, "mean": [0.45] * in_channels, "std": [0.25] * in_channels, "model": model}
    ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "meta": meta, "model": net.state_dict()}, str(path))
    return path


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, fmt)
    return b.getvalue()


def fetch(url: str, method: str, path: str, body=None, headers=None, timeout: float = 60):
    """(status, lower-case headers, body bytes, parsed JSON or None)."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {},
                     encode_chunked=body is not None and not isinstance(body, (bytes, str)))
        r = conn.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()
    parsed = None
    if hdrs.get("content-type", "").startswith("application/json"):
        parsed = json.loads(data)
    return r.status, hdrs, data, parsed


def multipart(field: str, filename: str, data: bytes, ctype: str = "image/png") -> tuple[bytes, dict]:
    boundary = "----pyimgclsTestBoundary7MA4YWxk"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def metric(text: str, name: str, _missing_ok: bool = False, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (no such sample: an error, or 0
    with ``_missing_ok``, for a snapshot taken before the first such request)."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{.*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == str(v) for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    assert found or _missing_ok, f"no sample {name}{labels} in /metrics"
    return total


def prior(text: str, name: str, **labels) -> float:
    return metric(text, name, _missing_ok=True, **labels)


class Serve:
    """``pyimgcls serve ARGS --port 0`` as a subprocess; ``url`` once it prints its address."""

    def __init__(self, tmp_path, *args, launcher: str | None = None):
        """``launcher``: Python source run with ``-c`` in place of ``-m pyimgcls`` (it gets the CLI
        arguments in sys.argv[1:])."""
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYIMGCLS_POISON="1")
        self.stderr_path = tmp_path / "serve.stderr"
        self._stderr = open(self.stderr_path, "w")
        start = ["-m", "pyimgcls"] if launcher is None else ["-c", launcher]
        self.proc = subprocess.Popen([sys.executable, *start, "serve", "--port", "0", "--kernels", "cpu",
                                      *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in self.proc.stdout], daemon=True).start()
        try:
            self.banner = lines.get(timeout=120)
        except queue.Empty:
            self.stop()
            pytest.fail(f"server printed no address in 120 s; stderr: {self.stderr()}")
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.banner)
        assert m, f"unexpected banner {self.banner!r}; stderr: {self.stderr()}"
        self.url = m.group(1)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_ready(self, timeout: float = 120) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if fetch(self.url, "GET", "/readyz")[0] == 200:
                return
            assert self.proc.poll() is None, f"server exited: {self.stderr()}"
            time.sleep(0.05)
        pytest.fail("server not ready in time")

    def get(self, path, **kw):
        return fetch(self.url, "GET", path, **kw)

    def post(self, path, body, headers, **kw):
        return fetch(self.url, "POST", path, body=body, headers=headers, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._stderr.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three test images: 32x32 grayscale PNG, 45x37 RGB JPEG (resized and converted by the server
    exactly as by predict), 7x50 RGBA PNG."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    files = {"gray.png": png(rng.integers(0, 256, (32, 32), dtype=np.uint8)),
             "color.jpg": png(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8), "JPEG"),
             "rgba.png": png(rng.integers(0, 256, (50, 7, 4), dtype=np.uint8))}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d, files


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    d = tmp_path_factory.mktemp("lenet")
    ck = make_checkpoint(d / "lenet.pt", "lenet5", 1, [f"digit{i}" for i in range(10)], seed=5, scale=20.0)
    srv = Serve(d, "--checkpoint", ck, "--max-batch-size", 8, "--max-delay-ms", 20, "--max-body-mb", 0.1)
    try:
        srv.wait_ready()
        srv.checkpoint = ck
        yield srv
    finally:
        srv.stop()


def predicted(srv, data: bytes, top_k=None, multipart_name=None, headers=None):
    q = "" if top_k is None else f"?top_k={top_k}"
    if multipart_name:
        body, h = multipart("image", multipart_name, data)
    else:
        body, h = data, {"Content-Type": "image/png"}
    return srv.post("/v1/predict" + q, body, {**h, **(headers or {})})


# ------------------------------------------------------------------------------------- LeNet server
def test_open_endpoints(lenet):
    assert lenet.get("/healthz")[3] == {"status": "alive"}
    assert lenet.get("/readyz")[3] == {"status": "ready"}
    status, _, _, info = lenet.get("/v1/models")
    m = info["models"][0]
    assert status == 200 and m["name"] == "lenet5" and m["classes"] == [f"digit{i}" for i in range(10)]
    assert m["checkpoint_sha256"] == hashlib.sha256(lenet.checkpoint.read_bytes()).hexdigest()
    assert m["input"] == {"channels": 1, "height": 32, "width": 32, "mean": [0.45], "std": [0.25]}
    assert m["kernels"] == "cpu" and m["padded_batch_sizes"] == [1, 2, 4, 8] and m["auth_required"] is False
    assert lenet.get("/v2")[3]["name"] == "pyimgcls"
    assert lenet.get("/v2/health/live")[3] == {"live": True}
    assert lenet.get("/v2/health/ready")[3] == {"ready": True}
    meta = lenet.get("/v2/models/lenet5")[3]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 32, 32]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert "normalised" in meta["parameters"]["input_preprocessing"]
    assert lenet.get("/v2/models/lenet5/ready")[3] == {"name": "lenet5", "ready": True}
    status, hdrs, body, _ = lenet.get("/")
    assert status == 200 and hdrs["content-type"].startswith("text/html") and b"v1/predict" in body
    for path in ("/v2/models/other", "/v2/models/other/ready", "/nope"):
        status, _, _, err = lenet.get(path)
        assert status == 404 and "error" in err, path
    # responses are not held back by Nagle + delayed ACK (~40 ms each): TCP_NODELAY on the connections
    host, port = lenet.url.rsplit("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        times.append(time.perf_counter() - t0)
    conn.close()
    assert sorted(times)[7] < 0.025, f"median /healthz round trip {1000 * sorted(times)[7]:.1f} ms"
    status, hdrs, _, err = lenet.get("/v1/predict")
    assert status == 405 and "POST" in hdrs.get("allow", "") and "not allowed" in err["error"]
    text = lenet.get("/metrics")[2].decode()
    assert metric(text, "pyimgcls_requests_total", endpoint="/v1/predict", status="405") == 1
    assert metric(text, "pyimgcls_requests_total", endpoint="other", status="404") == 1
    assert metric(text, "pyimgcls_requests_total", endpoint="/v2/models/{name}", status="404") == 1


def test_v1_predict_equals_cli_predict(lenet, images, tmp_path):
    folder, files = images
    wants = {}
    for name, data in files.items():
        out = tmp_path / f"{name}.json"
        pyimgcls.set_backend("auto")
        assert cli.main(["predict", "--checkpoint", str(lenet.checkpoint), str(folder / name), "--top", "5",
                         "--kernels", "cpu", "--output", str(out)]) == 0
        want = [{"index": t["index"], "label": t["class"], "probability": t["probability"]}
                for t in json.loads(out.read_text())[0]["top"]]
        for kw in ({}, {"multipart_name": name}):
            status, _, _, got = predicted(lenet, data, **kw)
            assert status == 200, got
            assert got == {"model": "lenet5", "predictions": want}, (name, kw)
        wants[name] = want
    status, _, _, got = predicted(lenet, files["gray.png"], top_k=3)
    assert status == 200 and got["predictions"] == wants["gray.png"][:3]
    status, _, _, got = predicted(lenet, files["gray.png"], top_k=100)   # clamped to the classes, as predict
    assert status == 200 and len(got["predictions"]) == 10
    assert abs(sum(p["probability"] for p in got["predictions"]) - 1) < 1e-4


def _normalised(path) -> torch.Tensor:
    return (load_image(str(path), 32, 1) - 0.45) / 0.25


def test_v2_infer(lenet, images):
    folder, files = images
    x = torch.stack([_normalised(folder / n) for n in files])          # [3, 1, 32, 32]
    req = {"id": "req-7", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                      "data": x.reshape(-1).tolist()}],
           "outputs": [{"name": "probabilities"}]}
    status, _, _, ans = lenet.post("/v2/models/lenet5/infer", json.dumps(req), {"Content-Type": "application/json"})
    assert status == 200, ans
    assert ans["model_name"] == "lenet5" and ans["id"] == "req-7"
    out = ans["outputs"][0]
    assert out["name"] == "probabilities" and out["datatype"] == "FP32" and out["shape"] == [3, 10]
    probs = np.array(out["data"]).reshape(3, 10)
    for row, data in zip(probs, files.values()):
        v1 = predicted(lenet, data, top_k=10)[3]["predictions"]
        want = np.zeros(10)
        for p in v1:
            want[p["index"]] = p["probability"]
        np.testing.assert_allclose(row, want, atol=2e-6)
    # nested data is accepted too
    req["inputs"][0]["data"] = x.tolist()
    assert lenet.post("/v2/models/lenet5/infer", json.dumps(req), {})[0] == 200


def _v2(x_shape=(1, 1, 32, 32), **over):
    t = {"name": "input", "datatype": "FP32", "shape": list(x_shape), "data": [0.5] * int(np.prod(x_shape))}
    t.update(over)
    return {"inputs": [t]}


@pytest.mark.parametrize("body, status, words", [
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "JSON object"),
    (json.dumps({"inputs": []}), 400, "exactly one tensor"),
    (json.dumps(_v2(name="x")), 400, "input name"),
    (json.dumps(_v2(datatype="FP16")), 400, "datatype"),
    (json.dumps(_v2(shape=[1, 3, 32, 32])), 400, "shape must be"),
    (json.dumps(_v2(shape=[0, 1, 32, 32], data=[])), 400, "shape must be"),
    (json.dumps(_v2((9, 1, 32, 32))), 400, "--max-batch-size"),
    (json.dumps(_v2(data=[0.5] * 5)), 400, "holds 5 numbers"),
    (json.dumps(_v2(data="abc")), 400, "list of numbers"),
    (json.dumps(_v2(data=[float("nan")] * 1024)), 400, "NaN"),
    (json.dumps({**_v2(), "outputs": [{"name": "logits"}]}), 400, "only output"),
    (json.dumps(_v2(parameters={"binary_data_size": 4096})), 400, "binary tensor extension"),
    (json.dumps({**_v2(), "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}), 400,
     "binary tensor extension"),
])
def test_v2_infer_errors(lenet, body, status, words):
    got_status, _, raw, err = lenet.post("/v2/models/lenet5/infer", body, {"Content-Type": "application/json"})
    assert got_status == status and words in err["error"], err
    assert b"Traceback" not in raw


def test_v2_infer_binary_and_media_errors(lenet):
    hdr = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "120"}
    status, _, _, err = lenet.post("/v2/models/lenet5/infer", b"\0" * 200, hdr)
    assert status == 400 and "binary tensor extension" in err["error"]
    status, _, _, err = lenet.post("/v2/models/lenet5/infer", json.dumps(_v2()), {"Content-Type": "text/csv"})
    assert status == 415 and "application/json" in err["error"]
    status, _, _, err = lenet.post("/v2/models/resnet/infer", json.dumps(_v2()), {})
    assert status == 404 and "lenet5" in err["error"]


def test_v1_errors(lenet, images):
    _, files = images
    cases = [
        (files["gray.png"], {"Content-Type": "text/plain"}, 415, "Content-Type"),
        (files["gray.png"], {}, 415, "Content-Type"),
        (b"definitely not an image", {"Content-Type": "image/png"}, 400, "cannot decode image file request body"),
        (b"", {"Content-Type": "image/png"}, 400, "empty image"),
        (*multipart("picture", "a.png", files["gray.png"]), 400, "field 'image'"),
        (b"--x\r\nbroken", {"Content-Type": "multipart/form-data; boundary=x"}, 400, ""),
        (*multipart("image", "bad.png", b"GIF89a garbage"), 400, "bad.png"),
        # a 5000 x 5000 bitmap: 3 kB of PNG, 25 megapixels declared: refused from the header
        (png(np.zeros((5000, 5000), dtype=bool)), {"Content-Type": "image/png"}, 400, "decompression bomb"),
        (b"\0" * 120_000, {"Content-Type": "image/png"}, 413, "--max-body-mb"),
        (iter([b"\0" * 20_000] * 6), {"Content-Type": "image/png"}, 413, "--max-body-mb"),   # chunked, no length
    ]
    for body, headers, status, words in cases:
        got, _, raw, err = lenet.post("/v1/predict", body, headers)
        assert got == status and words in err["error"], (status, err)
        assert b"Traceback" not in raw and b"File \"" not in raw
    for q, words in (("0", "positive"), ("abc", "positive"), ("-2", "positive")):
        got, _, _, err = predicted(lenet, files["gray.png"], top_k=q)
        assert got == 400 and "top_k" in err["error"] and words in err["error"]
    assert lenet.get("/readyz")[0] == 200


def _load(srv, data: bytes, clients: int, per_client: int, bad_every: int = 0):
    """``clients`` threads, each sending ``per_client`` raw-PNG requests on its own keep-alive
    connection; every ``bad_every``-th request (0: none) is undecodable. Returns the statuses."""
    def client(c):
        host, port = srv.url.rsplit("//", 1)[1].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        out = []
        for i in range(per_client):
            bad = bad_every and (c * per_client + i) % bad_every == 0
            conn.request("POST", "/v1/predict", body=b"not a png" if bad else data,
                         headers={"Content-Type": "image/png"})
            r = conn.getresponse()
            r.read()
            out.append((bool(bad), r.status))
        conn.close()
        return out
    with cf.ThreadPoolExecutor(clients) as pool:
        return [s for part in pool.map(client, range(clients)) for s in part]


def test_batching_under_concurrent_load(lenet, images):
    _, files = images
    before = lenet.get("/metrics")[2].decode()
    statuses = _load(lenet, files["gray.png"], clients=16, per_client=10)
    assert [s for _, s in statuses] == [200] * 160
    text = lenet.get("/metrics")[2].decode()
    batches = metric(text, "pyimgcls_batch_size_count") - prior(before, "pyimgcls_batch_size_count")
    singles = (metric(text, "pyimgcls_batch_size_bucket", le="1.0")
               - prior(before, "pyimgcls_batch_size_bucket", le="1.0"))
    assert batches < 160 and singles < batches, "no batch of more than one image under 16 concurrent clients"
    assert metric(text, "pyimgcls_batch_size_bucket", le="8.0") == metric(text, "pyimgcls_batch_size_count")
    images_done = metric(text, "pyimgcls_images_total") - prior(before, "pyimgcls_images_total")
    assert images_done == 160
    assert metric(text, "pyimgcls_batch_size_sum") == metric(text, "pyimgcls_images_total")
    assert metric(text, "pyimgcls_images_per_second") > 0
    assert metric(text, "pyimgcls_queue_depth") == 0
    assert metric(text, "pyimgcls_model_load_seconds") > 0 and metric(text, "pyimgcls_model_warmup_seconds") > 0
    assert metric(text, "pyimgcls_model_ready") == 1
    ok = metric(text, "pyimgcls_requests_total", endpoint="/v1/predict", status="200")
    assert ok - prior(before, "pyimgcls_requests_total", endpoint="/v1/predict", status="200") == 160
    assert metric(text, "pyimgcls_request_duration_seconds_count", endpoint="/v1/predict") >= 160


def test_malformed_traffic_keeps_server_ready(lenet, images):
    _, files = images
    before = lenet.get("/metrics")[2].decode()
    statuses = _load(lenet, files["color.jpg"], clients=8, per_client=25, bad_every=10)
    assert len(statuses) == 200 and sum(bad for bad, _ in statuses) == 20
    assert all(s == (400 if bad else 200) for bad, s in statuses)
    assert lenet.get("/readyz")[0] == 200
    text = lenet.get("/metrics")[2].decode()
    for status, n in (("200", 180), ("400", 20)):
        d = (metric(text, "pyimgcls_requests_total", endpoint="/v1/predict", status=status)
             - prior(before, "pyimgcls_requests_total", endpoint="/v1/predict", status=status))
        assert d == n, status
    assert metric(text, "pyimgcls_images_total") - prior(before, "pyimgcls_images_total") == 180


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("headless browser absent: Debian's chromium + chromium-driver are not installed "
                    "(.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=900,900"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_page_in_headless_browser(lenet, images):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    folder, files = images
    want = predicted(lenet, files["color.jpg"], top_k=5)[3]["predictions"]
    browser = _browser()
    try:
        browser.get(lenet.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: "lenet5" in b.find_element(By.ID, "model").text)
        assert not browser.find_element(By.ID, "key-row").is_displayed()   # no API key on this server

        def rows():
            return [(r.find_element(By.CLASS_NAME, "label").text, r.find_element(By.CLASS_NAME, "pct").text,
                     r.find_element(By.CLASS_NAME, "bar").get_attribute("style"))
                    for r in browser.find_elements(By.CSS_SELECTOR, "tr.prediction")]

        expected = [(p["label"], f"{100 * p['probability']:.2f}%", f"width: {100 * p['probability']:.2f}%;")
                    for p in want]
        # 1) the file chooser
        browser.execute_script("document.getElementById('file').hidden = false")
        browser.find_element(By.ID, "file").send_keys(str(folder / "color.jpg"))
        wait.until(lambda b: len(rows()) == 5)
        assert rows() == expected
        assert "color.jpg" in browser.find_element(By.ID, "status").text
        # 2) a dropped file (a real drop event carrying the same bytes)
        browser.execute_script("document.querySelector('#results tbody').replaceChildren()")
        browser.execute_script("""
            const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        """, __import__("base64").b64encode(files["color.jpg"]).decode())
        wait.until(lambda b: len(rows()) == 5 and "dropped.jpg" in b.find_element(By.ID, "status").text)
        assert rows() == expected
        # 3) an undecodable file shows the server's error
        browser.execute_script("""
            const dt = new DataTransfer();
            dt.items.add(new File(["plain text"], "notes.png", {type: "image/png"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        """)
        wait.until(lambda b: "error 400" in b.find_element(By.ID, "status").text)
        assert "notes.png" in browser.find_element(By.ID, "status").text
    finally:
        browser.quit()


# ------------------------------------------------------------------------------------- guarded server
GUARDED_SIZE = 112


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, images):
    """ResNet-18 on GUARDED_SIZE x GUARDED_SIZE images (its batches take long enough to queue requests
    behind them: at 32x32 a batch of 4 on our CPU kernels ended before two requests could be queued)
    with an API key, a 2-request queue, a 4 s timeout, a 15 s batching delay and one CPU thread (steady
    batch times when other processes load the machine). What it answers while warming up
    is recorded before waiting for readiness."""
    _, files = images
    d = tmp_path_factory.mktemp("guarded")
    ck = make_checkpoint(d / "resnet18.pt", "resnet18", 3, ["cat", "dog", "owl", "fox"], seed=1,
                         image_size=GUARDED_SIZE)
    keyfile = d / "key.txt"
    keyfile.write_text(f"\n  {KEY}\n")
    srv = Serve(d, "--checkpoint", ck, "--api-key-file", keyfile, "--max-batch-size", 4, "--max-delay-ms", 15000,
                "--max-queue", 2, "--request-timeout", 4, "--threads", 1)
    try:
        srv.warming = {"readyz": srv.get("/readyz"), "v2_ready": srv.get("/v2/health/ready"),
                       "healthz": srv.get("/healthz"),
                       "predict": predicted(srv, files["gray.png"], headers={"Authorization": f"Bearer {KEY}"})}
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_readiness_auth_queue_full_and_timeout(guarded, images):
    _, files = images
    srv, auth = guarded, {"Authorization": f"Bearer {KEY}"}
    # while warming up: alive, not ready, predictions refused
    status, hdrs, _, err = srv.warming["readyz"]
    assert status == 503 and hdrs["retry-after"] == "1" and "warming up" in err["error"]
    assert srv.warming["v2_ready"][0] == 503 and srv.warming["healthz"][0] == 200
    status, _, _, err = srv.warming["predict"]
    assert status == 503 and "not ready" in err["error"]
    # the API key guards the prediction endpoints only
    x = json.dumps(_v2((1, 3, GUARDED_SIZE, GUARDED_SIZE)))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}x"}):
        status, hdrs, _, err = predicted(srv, files["gray.png"], headers=headers)
        assert status == 401 and hdrs["www-authenticate"].startswith("Bearer") and "API key" in err["error"]
        assert srv.post("/v2/models/resnet18/infer", x, headers)[0] == 401
    status, _, _, ans = predicted(srv, files["color.jpg"], headers=auth, top_k=2)
    assert status == 200 and len(ans["predictions"]) == 2
    assert {p["label"] for p in ans["predictions"]} <= {"cat", "dog", "owl", "fox"}
    assert srv.post("/v2/models/resnet18/infer", x, auth)[0] == 200
    for path in ("/healthz", "/readyz", "/v1/models", "/metrics", "/", "/v2/models/resnet18", "/v2/health/live"):
        assert srv.get(path)[0] == 200, path
    assert srv.get("/v1/models")[3]["models"][0]["auth_required"] is True
    # queue full and timeout: while a 4-image batch runs, of 5 requests 2 are queued (they wait for the 15 s
    # batching delay, past the 4 s timeout: 504) and 3 are refused at once (503)
    # (a quick machine can end the batch before the 5 requests arrive, and the idle worker then answers
    # one at once with 200: that attempt is repeated)
    with cf.ThreadPoolExecutor(6) as pool:
        for _attempt in range(5):
            busy = pool.submit(srv.post, "/v2/models/resnet18/infer", json.dumps(_v2((4, 3, GUARDED_SIZE, GUARDED_SIZE))), auth)
            t_end = time.monotonic() + 30
            while metric(srv.get("/metrics")[2].decode(), "pyimgcls_model_busy") != 1 and not busy.done():
                assert time.monotonic() < t_end, "pyimgcls_model_busy never reached 1"
                time.sleep(0.005)
            rest = [pool.submit(predicted, srv, files["gray.png"], headers=auth) for _ in range(5)]
            answers = [f.result() for f in rest]
            assert busy.result()[0] == 200
            if 200 not in [a[0] for a in answers]:
                break
    assert sorted(a[0] for a in answers) == [503, 503, 503, 504, 504]
    for status, hdrs, _, err in answers:
        if status == 503:
            assert hdrs["retry-after"] == "1" and "--max-queue" in err["error"]
        else:
            assert "--request-timeout" in err["error"]
    text = srv.get("/metrics")[2].decode()
    assert metric(text, "pyimgcls_requests_total", endpoint="/v1/predict", status="504") == 2
    assert metric(text, "pyimgcls_requests_total", endpoint="/v1/predict", status="503") == 4   # + warming up
    # the timed-out requests left nothing behind: an idle worker answers the next one at once
    t0 = time.monotonic()
    assert predicted(srv, files["gray.png"], headers=auth)[0] == 200
    assert time.monotonic() - t0 < 4
    # a full batch does not wait for the delay: 4 queued rows go as soon as the worker is free
    with cf.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(srv.post, "/v2/models/resnet18/infer", json.dumps(_v2((4, 3, GUARDED_SIZE, GUARDED_SIZE))), auth)
        # (a quick machine can finish that batch between two polls of the metric: then the full batch
        # meets an idle worker, which must not wait for the delay either)
        t_end = time.monotonic() + 30
        while metric(srv.get("/metrics")[2].decode(), "pyimgcls_model_busy") != 1 and not busy.done():
            assert time.monotonic() < t_end, "pyimgcls_model_busy never reached 1"
            time.sleep(0.005)
        full = pool.submit(srv.post, "/v2/models/resnet18/infer", json.dumps(_v2((4, 3, GUARDED_SIZE, GUARDED_SIZE))), auth)
        assert busy.result()[0] == 200 and full.result()[0] == 200


def test_sigterm_answers_queued_requests_then_exits(guarded, images):
    _, files = images
    srv, auth = guarded, {"Authorization": f"Bearer {KEY}"}
    with cf.ThreadPoolExecutor(4) as pool:
        # Two requests must be queued behind a running batch; on a fast (or unevenly loaded) machine the
        # batch can end before both are queued (the idle worker then takes them at once): try again.
        for _attempt in range(5):
            busy = pool.submit(srv.post, "/v2/models/resnet18/infer", json.dumps(_v2((4, 3, GUARDED_SIZE, GUARDED_SIZE))), auth)
            t_end = time.monotonic() + 30
            while metric(srv.get("/metrics")[2].decode(), "pyimgcls_model_busy") != 1 and not busy.done():
                assert time.monotonic() < t_end, "pyimgcls_model_busy never reached 1"
                time.sleep(0.005)
            if busy.done():
                continue
            queued = [pool.submit(predicted, srv, files[n], headers=auth) for n in ("gray.png", "color.jpg")]
            t_end = time.monotonic() + 30
            while metric(srv.get("/metrics")[2].decode(), "pyimgcls_queue_depth") != 2 and not busy.done():
                assert time.monotonic() < t_end, "pyimgcls_queue_depth never reached 2"
                time.sleep(0.01)
            if not busy.done() and metric(srv.get("/metrics")[2].decode(), "pyimgcls_queue_depth") == 2:
                break
            [f.result() for f in [busy, *queued]]
        else:
            pytest.fail("the running batch always ended before two requests were queued behind it")
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        answers = [f.result() for f in [busy, *queued]]
        answered_s = time.monotonic() - t0
    # every request answered, well before the 15 s batching delay would have released the queued ones
    assert [a[0] for a in answers] == [200] * 3, [a[3] for a in answers]
    assert answered_s < 10
    assert all(len(a[3]["predictions"]) == 4 for a in answers[1:])
    srv.proc.wait(30)
    assert srv.proc.returncode in (0, -signal.SIGTERM), srv.stderr()
    assert "Traceback" not in srv.stderr()
    with pytest.raises(OSError):
        srv.get("/healthz", timeout=5)


# ------------------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("argv, words", [
    (["--checkpoint", "/nonexistent/ck.pt"], "not found"),
    (["--checkpoint", "{notckpt}"], "not a pyimgcls checkpoint"),
    (["--checkpoint", "{ckpt}", "--api-key-file", "{empty}"], "--api-key-file"),
    (["--checkpoint", "{ckpt}", "--api-key-file", "/nonexistent/key"], "--api-key-file"),
    (["--checkpoint", "{ckpt}", "--port", "{busy_port}"], "cannot listen"),
    (["--checkpoint", "{ckpt}", "--host", "no.such.host.invalid"], "cannot listen"),
    (["--checkpoint", "{ckpt}", "--max-batch-size", "0"], "--max-batch-size"),
    (["--checkpoint", "{ckpt}", "--max-delay-ms", "-1"], "--max-delay-ms"),
    (["--checkpoint", "{ckpt}", "--kernels", "bogus"], "--kernels"),
])
def test_cli_errors_one_line_exit_2(argv, words, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ck.pt", "lenet5", 1, list("0123456789"), seed=0)
    (tmp_path / "not.pt").write_bytes(b"junk")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "notckpt.pt")
    (tmp_path / "empty.key").write_text("  \n")
    busy = socket.create_server(("127.0.0.1", 0))
    subs = {"ckpt": str(ckpt), "notckpt": str(tmp_path / "notckpt.pt"), "empty": str(tmp_path / "empty.key"),
            "busy_port": str(busy.getsockname()[1])}
    try:
        with pytest.raises(SystemExit) as e:
            cli.main(["serve", "--port", "0", *[a.format(**subs) for a in argv]])
    finally:
        busy.close()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err, err


# A server whose model fails once it is ready (the warm-up passes): what a kernel error at run time
# looks like to clients. The patch wraps the loaded model; everything else is the real server.
_FAILING_MODEL = r"""
import sys
from pyimgcls.serve import runner
_load = runner.ModelRunner.load
def load(self):
    _load(self)
    model = self.model
    def forward(x):
        if self.ready.is_set():
            raise RuntimeError("planted kernel failure")
        return model(x)
    self.model = forward
runner.ModelRunner.load = load
from pyimgcls.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kernel_failure_answers_500_and_server_stays_up(tmp_path, images):
    """A failing batch answers its requests 500 with a one-line JSON error (no stack trace in the
    response; the log has it), is counted under status 500, and the server stays alive and ready."""
    _, files = images
    ck = make_checkpoint(tmp_path / "lenet.pt", "lenet5", 1, [f"digit{i}" for i in range(10)], seed=5)
    srv = Serve(tmp_path, "--checkpoint", ck, "--max-batch-size", 2, launcher=_FAILING_MODEL)
    try:
        srv.wait_ready()
        for _ in range(2):
            status, _, body, _ = srv.post("/v1/predict", files["gray.png"], {"Content-Type": "image/png"})
            assert status == 500, (status, body)
            assert json.loads(body) == {"error": "inference failed (see the server log)"}
            status, _, body, _ = srv.post("/v2/models/lenet5/infer", json.dumps(_v2()).encode(),
                                       {"Content-Type": "application/json"})
            assert status == 500 and b"Traceback" not in body, (status, body)
        assert srv.get("/readyz")[0] == 200 and srv.proc.poll() is None
        text = srv.get("/metrics")[2].decode()
        assert metric(text, "pyimgcls_requests_total", endpoint="/v1/predict", status="500") == 2
        assert "planted kernel failure" in srv.stderr()
    finally:
        srv.stop()
