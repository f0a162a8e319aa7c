#!/usr/bin/env python3
"""Abuse probe for issue #15: the hostile-fleet runs, redone against a real `dashgate serve`
in front of `dashgate simulate`, on 127.0.0.1 only, each bounded in connections and time.

    python3 bench/abuse_probe.py            # DASHGATE_BIN picks the binary (default target/debug)

Prints one table row per run: slowloris, connection cap, slow body, image bombs beside a clean
frame, 30 concurrent streams on a 200-token quota, SIGKILL mid-load, store outage then SIGKILL.
Standard library only. Figures are timings of this machine: they belong here, not in tests.
"""
import concurrent.futures as cf
import http.client
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

BIN = os.environ.get("DASHGATE_BIN", os.path.join(os.path.dirname(__file__), "..", "target", "debug", "dashgate"))
KEY = "sk-probe-test"
QUOTA_KEY = "sk-quota-probe"
ROWS = []


def start(args, cwd):
    p = subprocess.Popen([BIN] + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline().strip()
    url = line.rsplit(" ", 1)[-1]
    host, port = url.replace("http://", "").split(":")
    return p, (host, int(port))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def config(dir, sim, server="", extra=""):
    path = os.path.join(dir, "dashgate.toml")
    with open(path, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:0"
{server}

[store]
url = "sqlite://{dir}/dashgate.db"

[usage]
journal_path = "{dir}/usage.journal"

[[keys]]
name = "probe"
key = "{KEY}"

[[keys]]
name = "quota"
key = "{QUOTA_KEY}"
token_quota = 200
quota_period = "day"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "http://{sim[0]}:{sim[1]}"
api_key = "sk-any"
models = ["qwen-plus", "qwen-vl-plus"]
{extra}
""")
    return path


def chat(addr, body, key=KEY, timeout=30):
    c = http.client.HTTPConnection(*addr, timeout=timeout)
    t = time.monotonic()
    try:
        c.request("POST", "/compatible-mode/v1/chat/completions", json.dumps(body),
                  {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        return r.status, data, time.monotonic() - t, r.getheader("x-request-id")
    except Exception:
        return 0, b"", time.monotonic() - t, None
    finally:
        c.close()


def ask(text="hello"):
    return {"model": "qwen-plus", "messages": [{"role": "user", "content": text}]}


def slow_connections(addr, n, first):
    socks = []
    for _ in range(n):
        s = socket.create_connection(addr)
        s.sendall(first)
        socks.append(s)
    return socks


def wait_closed(socks, limit):
    """Seconds until each socket was closed by the server (None: still open at `limit`)."""
    t0 = time.monotonic()
    out = [None] * len(socks)
    for s in socks:
        s.setblocking(False)
    while time.monotonic() - t0 < limit and any(o is None for o in out):
        for i, s in enumerate(socks):
            if out[i] is not None:
                continue
            try:
                d = s.recv(65536)
                if d == b"" or d:
                    # Data (a 400) or EOF: the server ended it.
                    out[i] = (time.monotonic() - t0, d[:12])
            except BlockingIOError:
                pass
            except OSError:
                out[i] = (time.monotonic() - t0, b"reset")
        time.sleep(0.05)
    for s in socks:
        s.close()
    return out


def run_slowloris(sim, dir):
    cfg = config(dir, sim, "header_timeout_ms = 2000")
    gw, addr = start(["serve", "--config", cfg], dir)
    try:
        socks = slow_connections(addr, 500, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        lat = [chat(addr, ask())[2] * 1e3 for _ in range(20)]
        closed = wait_closed(socks, 10)
        held = sum(1 for c in closed if c is None)
        when = max((c[0] for c in closed if c), default=0)
        ROWS.append(("slowloris: 500 conns, headers never finished", f"{500 - held}/500 closed, last at {when:.1f} s; 20 normal requests meanwhile: max {max(lat):.0f} ms"))
    finally:
        gw.kill()
        gw.wait()


def run_cap(sim, dir):
    cfg = config(dir, sim, "max_connections = 200\nheader_timeout_ms = 30000")
    gw, addr = start(["serve", "--config", cfg], dir)
    try:
        socks = slow_connections(addr, 300, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        closed = wait_closed(socks[200:], 3)
        refused = sum(1 for c in closed if c is not None)
        for s in socks[:200]:
            s.close()
        time.sleep(0.3)
        c = http.client.HTTPConnection(*addr, timeout=5)
        c.request("GET", "/metrics")
        metrics = c.getresponse().read().decode()
        line = next((l for l in metrics.splitlines() if l.startswith("dashgate_client_connections_refused_total")), "?")
        ok = chat(addr, ask())[0]
        ROWS.append(("connection cap 200, 300 idle conns", f"{refused}/100 over the cap closed at once; metric `{line}`; next request {ok}"))
    finally:
        gw.kill()
        gw.wait()


def run_slow_body(sim, dir):
    cfg = config(dir, sim, "body_idle_timeout_ms = 2000")
    gw, addr = start(["serve", "--config", cfg], dir)
    try:
        before = rss_mb(gw.pid)
        head = (f"POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 20000000\r\n\r\n" + "{" * 40).encode()
        socks = slow_connections(addr, 100, head)
        time.sleep(0.5)
        during = rss_mb(gw.pid)
        lat = [chat(addr, ask())[2] * 1e3 for _ in range(10)]
        closed = wait_closed(socks, 10)
        got400 = sum(1 for c in closed if c and c[1].startswith(b"HTTP/1.1 400"))
        when = max((c[0] for c in closed if c), default=0)
        ROWS.append(("slow body: 100 conns declaring 20 MB, 40 bytes sent", f"RSS {before:.0f} -> {during:.0f} MB; {got400}/100 answered 400, last at {when:.1f} s; normal requests max {max(lat):.0f} ms"))
    finally:
        gw.kill()
        gw.wait()


def png(w, h):
    raw = b"".join(b"\x00" + bytes((x * 7 + y) % 256 for x in range(w * 3)) for y in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def image_body(mime, data):
    import base64
    url = f"data:{mime};base64," + base64.b64encode(data).decode()
    return {"model": "qwen-vl-plus", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what"}]}]}


def run_bombs(sim, dir):
    cfg = config(dir, sim)
    gw, addr = start(["serve", "--config", cfg], dir)
    try:
        # 35 bytes: an 8000x8000 logical screen with a two-colour table.
        bomb = b"GIF89a" + struct.pack("<HH", 8000, 8000) + bytes([0x80, 0, 0]) + b"\x00\x00\x00\xff\xff\xff" + \
            b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x4c\x01\x00\x3b"
        clean = png(64, 48)
        before = rss_mb(gw.pid)
        with cf.ThreadPoolExecutor(16) as pool:
            bombs = [pool.submit(chat, addr, image_body("image/gif", bomb)) for _ in range(8)]
            time.sleep(0.05)
            frame = pool.submit(chat, addr, image_body("image/png", clean)).result()
            results = [b.result() for b in bombs]
        after = rss_mb(gw.pid)
        statuses = sorted({r[0] for r in results})
        msg = json.loads(results[0][1] or b"{}").get("error", {}).get("message", "")[:80]
        ROWS.append((f"8 GIF bombs ({len(bomb)} B, 8000x8000) + a clean {len(clean)} B PNG", f"bombs {statuses} in max {max(r[2] for r in results) * 1e3:.0f} ms (\"{msg}\"); clean frame {frame[0]} in {frame[2] * 1e3:.0f} ms; RSS {before:.0f} -> {after:.0f} MB"))
    finally:
        gw.kill()
        gw.wait()


def records(dir):
    db = sqlite3.connect(os.path.join(dir, "dashgate.db"), timeout=30)
    try:
        return db.execute("SELECT request_id, total_tokens, key_name FROM usage_records").fetchall()
    finally:
        db.close()


def run_quota(sim, dir):
    cfg = config(dir, sim)
    gw, addr = start(["serve", "--config", cfg], dir)
    try:
        body = ask("tell me a story")
        body["stream"] = True
        body["sim"] = {"chunk_delay_ms": 5, "chunks": 8}
        with cf.ThreadPoolExecutor(30) as pool:
            res = list(pool.map(lambda _: chat(addr, body, QUOTA_KEY), range(30)))
        time.sleep(1)
        spent = sum(r[1] for r in records(dir) if r[2] == "quota")
        ok = sum(1 for r in res if r[0] == 200)
        ROWS.append(("30 concurrent streams on a 200-token quota", f"{ok} admitted, {sum(1 for r in res if r[0] == 429)} got 429; tokens spent {spent}"))
    finally:
        gw.kill()
        gw.wait()


def load_then_kill(addr, gw, total, parallel, kill_at):
    done = []
    lock = threading.Lock()
    killed = threading.Event()

    def one(n):
        if killed.is_set():
            return
        status, data, _, rid = chat(addr, ask(f"request {n}"), timeout=10)
        if status == 200 and data.endswith(b"}") and rid:
            with lock:
                done.append(rid)
                if len(done) >= kill_at and not killed.is_set():
                    killed.set()
                    os.kill(gw.pid, signal.SIGKILL)
    with cf.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(total)))
    gw.wait()
    return done


def count_after_restart(dir, cfg, done):
    gw, _ = start(["serve", "--config", cfg], dir)
    try:
        deadline = time.monotonic() + 30
        while True:
            ids = {r[0] for r in records(dir)}
            missing = [d for d in done if d not in ids]
            if not missing or time.monotonic() > deadline:
                return len(ids), len(missing)
            time.sleep(0.2)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait()


def run_sigkill(sim, dir):
    cfg = config(dir, sim)
    gw, addr = start(["serve", "--config", cfg], dir)
    done = load_then_kill(addr, gw, 2000, 16, 1000)
    found, lost = count_after_restart(dir, cfg, done)
    ROWS.append(("2,000 requests, SIGKILL at 1,000 completed", f"{len(done)} completed for the client, {found} records after restart, records lost: {lost}"))


def run_outage_sigkill(sim, dir):
    cfg = config(dir, sim)
    gw, addr = start(["serve", "--config", cfg], dir)
    chat(addr, ask())  # the store exists and has its tables
    time.sleep(0.5)
    lock = sqlite3.connect(os.path.join(dir, "dashgate.db"), timeout=30, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    done = load_then_kill(addr, gw, 600, 16, 500)
    lock.execute("ROLLBACK")
    lock.close()
    found, lost = count_after_restart(dir, cfg, done)
    ROWS.append(("store write-locked, 500 completed, SIGKILL", f"{len(done)} completed for the client, {found} records after restart, records lost: {lost}"))


def main():
    root = tempfile.mkdtemp(prefix="dashgate-probe-")
    sim, sim_addr = start(["simulate", "--listen", "127.0.0.1:0"], root)
    try:
        for run in (run_slowloris, run_cap, run_slow_body, run_bombs, run_quota, run_sigkill, run_outage_sigkill):
            dir = tempfile.mkdtemp(dir=root)
            t = time.monotonic()
            run(sim_addr, dir)
            print(f"# {run.__name__} took {time.monotonic() - t:.1f} s", file=sys.stderr)
    finally:
        sim.kill()
        sim.wait()
    print("| run | result |")
    print("| --- | --- |")
    for name, result in ROWS:
        print(f"| {name} | {result} |")


if __name__ == "__main__":
    main()
