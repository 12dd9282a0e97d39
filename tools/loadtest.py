#!/usr/bin/env python3
"""Load test of `llamagen serve` on loopback (standard library only).

Starts the server with the given flags on a free 127.0.0.1 port, then for each client count C runs C threads that
each send `--requests` requests of one image (class and seed vary) back to back, bounded in count and time. Reports
images/s and p50/p99 request latency per C, and the ratio to C = 1 (the same images generated one request at a
time), as a markdown table. Every response is checked (200, one PNG).

    tools/loadtest.py --clients 1 8 32 --requests 8                       # the demo model
    tools/loadtest.py --clients 1 8 32 --requests 2 -- --gpt-model GPT-B --vq-model VQ-16 --synthetic-weights \
        --dtype bf16 --max-batch 32
"""
import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(binary, flags):
    p = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", "0", *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    if not m:
        p.kill()
        sys.exit(f"loadtest: the server did not start (first line: {line!r})")
    return p, m.group(1)


def post(url, body, timeout):
    req = urllib.request.Request(url + "/v1/images/generations", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = json.load(r)
    dt = time.perf_counter() - t
    png = base64.b64decode(data["data"][0]["b64_json"])
    if not png.startswith(b"\x89PNG"):
        raise RuntimeError("not a PNG")
    return dt


def run(url, clients, requests, num_classes, timeout, deadline):
    lat, errors = [], []
    lock = threading.Lock()

    def client(c):
        for r in range(requests):
            if time.monotonic() > deadline:
                return
            k = c * requests + r
            body = {"class": k % num_classes, "n": 1, "seed": 1000 + k}
            try:
                dt = post(url, body, timeout)
                with lock:
                    lat.append(dt)
            except (urllib.error.URLError, RuntimeError, KeyError, OSError) as e:
                with lock:
                    errors.append(repr(e))

    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return lat, errors, wall


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/llamagen"))
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per request")
    ap.add_argument("--budget", type=float, default=900, help="seconds for the whole test")
    ap.add_argument("--min-ratio", type=float, default=0, help="fail unless the largest C reaches this × C = 1")
    ap.add_argument("flags", nargs="*", help="serve flags (after --)")
    a = ap.parse_args()
    if any(c < 1 or c > 256 for c in a.clients) or not 1 <= a.requests <= 1000:
        sys.exit("loadtest: clients must be in 1..=256 and requests in 1..=1000")
    p, url = start(a.binary, a.flags)
    deadline = time.monotonic() + a.budget
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
            model = json.load(r)["data"][0]
        num_classes = max(1, model["num_classes"])
        post(url, {"class": 0, "n": 1}, a.timeout)  # warm-up (first-image preparation)
        rows, base, failed = [], None, 0
        for c in a.clients:
            lat, errors, wall = run(url, c, a.requests, num_classes, a.timeout, deadline)
            failed += len(errors)
            if errors:
                print(f"loadtest: {len(errors)} failed requests with {c} clients, e.g. {errors[0]}", file=sys.stderr)
            if not lat:
                continue
            ips = len(lat) / wall
            base = base if base is not None else (ips if c == 1 else None)
            rows.append((c, len(lat), wall, ips, pct(lat, 0.5), pct(lat, 0.99), ips / base if base else None))
    finally:
        p.terminate()
        p.wait(timeout=120)
    print(f"model {model['id']} ({model['image_size']} px, {model['tokens_per_image']} tokens), "
          f"device {model['device']} {model['dtype']}, max batch {model['max_batch']}")
    print("| clients | images | seconds | images/s | p50 latency (s) | p99 latency (s) | vs 1 client |")
    print("|---|---|---|---|---|---|---|")
    for c, n, wall, ips, p50, p99, ratio in rows:
        r = f"{ratio:.2f}×" if ratio else "—"
        print(f"| {c} | {n} | {wall:.2f} | {ips:.2f} | {p50:.3f} | {p99:.3f} | {r} |")
    ratio = rows[-1][6] if rows and rows[-1][6] else 0
    ok = failed == 0 and ratio >= a.min_ratio
    print(f"{len(rows) - (0 if ok else 1)} passed, {0 if ok else 1} failed"
          + ("" if ok else f" (failed requests {failed}, ratio {ratio:.2f} < {a.min_ratio})"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
