#!/usr/bin/env python3
"""Two `twinfer serve` replicas behind nginx (tests/server/nginx_replicas.conf, the setup of
docs/serving.md): plain and streamed chat completions pass through, both replicas serve, a client
that hangs up on a stream cancels its sequence behind the proxy, and with one replica killed every
request still succeeds (proxy_next_upstream).

Usage: replicas_test.py --twinfer build/apps/twinfer --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--nginx /usr/sbin/nginx]
Exits non-zero on the first failed check (unittest)."""
import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

ARGS = None
CONFIG = Path(__file__).with_name("nginx_replicas.conf")
BODY = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16, "temperature": 0}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url, process=None):
    for _ in range(600):
        if process and process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy")


def post(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, r.read().decode()


def served(url):
    """Chat completions this replica answered with 200, from its /metrics."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    match = re.search(r'^twinfer_requests_total\{route="/v1/chat/completions",status="200"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def settled(read, expected):
    """read() once it equals expected, or its last value after 10 s: a replica counts a streamed
    request when it has finished writing it, which may be after its client read the last event."""
    for _ in range(100):
        value = read()
        if value == expected:
            break
        time.sleep(0.1)
    return value


def metric(url, name):
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


class Replicas(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.replicas, cls.urls = [], []
        for _ in range(2):
            p = subprocess.Popen([ARGS.twinfer, "serve", "-m", ARGS.model, "--port", "0", "--parallel", "2", "-c", "1024",
                                  "--no-progress"],
                                 stdout=subprocess.PIPE, text=True)
            cls.replicas.append(p)
            cls.urls.append("http://127.0.0.1:" + p.stdout.readline().strip().rsplit(":", 1)[1])
        for p, url in zip(cls.replicas, cls.urls):
            wait_healthy(url, p)
        cls.scratch = tempfile.TemporaryDirectory()
        port = free_port()
        config = CONFIG.read_text()
        for name, value in {"DIR": cls.scratch.name, "PORT": port, "PORT_A": cls.urls[0].rsplit(":", 1)[1],
                            "PORT_B": cls.urls[1].rsplit(":", 1)[1]}.items():
            config = config.replace(f"@{name}@", str(value))
        conf = Path(cls.scratch.name) / "nginx.conf"
        conf.write_text(config)
        error_log = Path(cls.scratch.name) / "error.log"
        cls.nginx = subprocess.Popen([ARGS.nginx, "-p", cls.scratch.name, "-c", str(conf), "-e", str(error_log)])
        cls.proxy = f"http://127.0.0.1:{port}"
        wait_healthy(cls.proxy, cls.nginx)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.terminate()
        cls.nginx.wait(timeout=30)
        for p in cls.replicas:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
        cls.scratch.cleanup()

    def stream(self, body, hang_up_after=None):
        """The data of each server-sent event of a streamed request through the proxy; with
        hang_up_after, closes the connection after that many events."""
        host, port = self.proxy.rsplit("/", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertTrue(r.getheader("Content-Type").startswith("text/event-stream"))
        events = []
        for line in r:
            if line.startswith(b"data: "):
                events.append(line[6:].strip().decode())
                if hang_up_after and len(events) == hang_up_after:
                    break
                if events[-1] == "[DONE]":
                    break
        conn.close()
        return events

    def test_replicas(self):
        before = [served(u) for u in self.urls]
        # Plain answers through the proxy equal a replica's own (greedy: both replicas agree).
        direct = json.loads(post(self.urls[0], BODY)[1])["choices"][0]["message"]["content"]
        for _ in range(6):
            status, text = post(self.proxy, BODY)
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(text)["choices"][0]["message"]["content"], direct)
        events = self.stream(BODY)
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertGreater(len(chunks), 2)
        self.assertEqual("".join(c["choices"][0]["delta"].get("content", "") for c in chunks), direct)
        # Round robin: each replica answered some of the 7 (the direct request counts for the first).
        self.assertEqual(settled(lambda: sum(served(u) for u in self.urls) - sum(before), 8), 8)
        after = [served(u) for u in self.urls]
        self.assertGreaterEqual(after[0] - before[0], 2)
        self.assertGreaterEqual(after[1] - before[1], 1)

        # A client that hangs up on a stream behind the proxy: nginx closes the replica's
        # connection, and that replica cancels the sequence.
        cancelled = sum(metric(u, "twinfer_sequences_cancelled_total") for u in self.urls)
        long_body = {**BODY, "max_tokens": 200, "ignore_eos": True}
        self.assertEqual(len(self.stream(long_body, hang_up_after=2)), 2)
        self.assertEqual(settled(lambda: sum(metric(u, "twinfer_sequences_cancelled_total") for u in self.urls), cancelled + 1),
                         cancelled + 1)

        # One replica killed: every request still succeeds, served by the other.
        self.replicas[0].send_signal(signal.SIGKILL)
        self.replicas[0].wait(timeout=30)
        survivor = served(self.urls[1])
        for _ in range(4):
            status, text = post(self.proxy, BODY)
            self.assertEqual(status, 200)
            self.assertEqual(json.loads(text)["choices"][0]["message"]["content"], direct)
        self.assertEqual(self.stream(BODY)[-1], "[DONE]")
        self.assertEqual(settled(lambda: served(self.urls[1]) - survivor, 5), 5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--twinfer", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--nginx", default="/usr/sbin/nginx")
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest)
