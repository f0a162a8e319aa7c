#!/usr/bin/env python3
"""Document bombs against the extraction cage (issue #15, point 2): a real `dashgate serve` in
front of `dashgate simulate`, on 127.0.0.1 only.

    python3 bench/extract_probe.py          # DASHGATE_BIN picks the binary (default target/debug)

Each run uploads a document (its text is extracted at upload, in a worker process), then asks
about it through an upstream without a files API, 8 times at once. Prints per run: what the
client got, time to the refusal, peak RSS of the gateway (VmHWM) and of the extraction worker
(sampled every 2 ms), and a normal chat after. Standard library only; figures are this machine's.
"""
import concurrent.futures as cf
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib

BIN = os.environ.get("DASHGATE_BIN", os.path.join(os.path.dirname(__file__), "..", "target", "debug", "dashgate"))
KEY = "sk-probe-test"
ROWS = []


def start(args, cwd):
    p = subprocess.Popen([BIN] + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = p.stdout.readline().strip().rsplit(" ", 1)[-1]
    host, port = url.replace("http://", "").split(":")
    return p, (host, int(port))


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class WorkerWatch(threading.Thread):
    """The largest RSS any extract-worker child of `parent` reached while watched."""

    def __init__(self, parent):
        super().__init__(daemon=True)
        self.parent, self.peak_kb, self.seen, self.stop = str(parent), 0, 0, threading.Event()

    def run(self):
        known = set()
        while not self.stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        ppid = f.read().rsplit(")", 1)[1].split()[1]
                    if ppid != self.parent:
                        continue
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if b"extract-worker" not in f.read():
                            continue
                except (OSError, IndexError):
                    continue
                known.add(pid)
                self.peak_kb = max(self.peak_kb, status_kb(pid, "VmHWM:"))
            self.seen = len(known)
            time.sleep(0.002)


def config(dir, sim, files=""):
    path = os.path.join(dir, "dashgate.toml")
    with open(path, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:0"

[store]
url = "sqlite://{dir}/dashgate.db"

[usage]
journal_path = "{dir}/usage.journal"

[files]
dir = "{dir}/files"
{files}

[[keys]]
name = "probe"
key = "{KEY}"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "http://{sim[0]}:{sim[1]}"
api_key = "sk-any"
models = ["qwen-plus"]

[[upstreams]]
name = "plain"
provider = "openai"
base_url = "http://{sim[0]}:{sim[1]}/v1"
api_key = "sk-any"
models = ["local-long"]
""")
    return path


def request(addr, method, path, body, content_type, timeout=120):
    c = http.client.HTTPConnection(*addr, timeout=timeout)
    t = time.monotonic()
    try:
        c.request(method, path, body, {"Authorization": f"Bearer {KEY}", "Content-Type": content_type})
        r = c.getresponse()
        return r.status, r.read(), time.monotonic() - t
    finally:
        c.close()


def upload(addr, name, data):
    boundary = "probe-boundary-7c1"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfile-extract\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, reply, took = request(addr, "POST", "/v1/files", body, f"multipart/form-data; boundary={boundary}")
    return status, json.loads(reply).get("id", ""), took


def chat(addr, model, system):
    body = json.dumps({"model": model, "messages": [{"role": "system", "content": system},
                                                    {"role": "user", "content": "what does it say?"}]})
    return request(addr, "POST", "/v1/chat/completions", body, "application/json")


def pdf(streams, deflated):
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               ("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> "
                "/Contents [%s] >>" % " ".join(f"{5 + i} 0 R" for i in range(len(streams)))).encode(),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier >>"]
    filt = b" /Filter /FlateDecode" if deflated else b""
    objects += [b"<< /Length %d%s >>\nstream\n" % (len(s), filt) + s + b"\nendstream" for s in streams]
    out, offsets = bytearray(b"%PDF-1.5\n"), []
    for i, o in enumerate(objects):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % (i + 1) + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf_bomb():
    one = zlib.compress(b" " * (16 << 20), 9)
    return pdf([one] * 64, True)  # 1 GiB of spaces


def docx_bomb(words):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("word/document.xml", "w") as part:
            part.write(b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>')
            para = b"<w:p><w:r><w:t>" + b"word " * 200 + b"</w:t></w:r></w:p>"
            for _ in range(words // 200):
                part.write(para)
            part.write(b"</w:body></w:document>")
    return buf.getvalue()


def run(sim, root, name, filename, data, files=""):
    dir = tempfile.mkdtemp(dir=root)
    gw, addr = start(["serve", "--config", config(dir, sim, files)], dir)
    watch = WorkerWatch(gw.pid)
    watch.start()
    try:
        before = status_kb(gw.pid, "VmRSS:") / 1024
        status, id, up = upload(addr, filename, data)
        with cf.ThreadPoolExecutor(8) as pool:
            asks = list(pool.map(lambda _: chat(addr, "local-long", f"fileid://{id}"), range(8)))
        watch.stop.set()
        watch.join()
        normal = chat(addr, "qwen-plus", "You are a helpful assistant.")
        first = json.loads(asks[0][1]).get("error", {}).get("message", "200 (text)").split(": ", 1)[-1]
        statuses = sorted({a[0] for a in asks})
        ROWS.append((f"{name} ({len(data) / 1e6:.2f} MB)",
                     f"upload {status} in {up:.2f} s; 8 chats {statuses} in max {max(a[2] for a in asks) * 1e3:.0f} ms "
                     f"(\"{first}\"); gateway RSS {before:.0f} -> peak {status_kb(gw.pid, 'VmHWM:') / 1024:.0f} MB; "
                     f"workers {watch.seen}, peak {watch.peak_kb / 1024:.0f} MB; normal chat {normal[0]} after"))
    finally:
        gw.kill()
        gw.wait()


def main():
    root = tempfile.mkdtemp(prefix="dashgate-extract-probe-")
    sim, sim_addr = start(["simulate", "--listen", "127.0.0.1:0"], root)
    try:
        run(sim_addr, root, "PDF, 64 flate streams = 1 GiB", "bomb.pdf", pdf_bomb())
        run(sim_addr, root, "same PDF, decompressed cap lifted (memory backstop)", "bomb.pdf", pdf_bomb(),
            "max_extract_bytes = 100000000000")
        run(sim_addr, root, "DOCX, document.xml = 1.0 GB", "bomb.docx", docx_bomb(200_000_000))
        run(sim_addr, root, "DOCX under the 32 MiB cap, 25 MB of text", "words.docx", docx_bomb(5_000_000))
        run(sim_addr, root, "clean PDF", "fine.pdf", pdf([b"BT /F1 24 Tf 100 600 Td (Quarterly figures) Tj ET"], False))
    finally:
        sim.kill()
        sim.wait()
    print("| run | result |")
    print("| --- | --- |")
    for name, result in ROWS:
        print(f"| {name} | {result} |")


if __name__ == "__main__":
    sys.exit(main())
