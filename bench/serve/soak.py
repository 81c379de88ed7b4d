#!/usr/bin/env python3
"""A soak of an OpenAI-compatible server (issue 20): N concurrent clients for a long time, some
hanging up mid-answer, some sending bad requests; every completed answer must equal the same
request sent alone, every error must be an intended one, and the server's memory must stay flat.

    # start a server and soak it (the benchmark: 16 clients, 10 minutes)
    python3 bench/serve/soak.py --twinfer build/apps/twinfer --model models/SmolLM2-135M-Instruct.Q4_1.gguf
    # or attach to a running one (same machine for the memory check)
    python3 bench/serve/soak.py --url http://127.0.0.1:8080 --server-pid PID --max-body-kib 4096

Started by the script, the server is `twinfer serve -m MODEL --port 0 --parallel CLIENTS -c 2048
--max-body 256 --no-progress` plus --server-args.

1. References: each request of a fixed pool (--pool distinct requests: chat with and without a
   shared system prompt, completions of short and ~100-token prompts, max_tokens 8..--max-tokens,
   some with ignore_eos, a stop string, or a `model` the server does not have; most greedy, every
   sixth sampled at temperature 0.7 with a fixed seed) is sent alone, streamed, one after another,
   before any load. Its answer = the text, every token with its logprob (chat: `logprobs`;
   completions: `logprobs: 0`), the finish reason and the usage's prompt and completion tokens.
   Then the fill (unless --no-fill): --clients requests at once, each longer than any request of
   the soak (~750 prompt tokens + 32), read whole, so that every slot's KV cache is written up to
   the longest sequence the soak will make (with --parallel = --clients, one a slot).
2. Load: --clients threads for --seconds, each looping over a random choice (seeded by --seed):
   - a pool request (~70%), streamed or (one in five) not; its answer must equal the reference,
     logprobs bit for bit (the server computes a row alone whatever else runs);
   - a hang-up (~15%), three kinds in turn: a stream closed after 1-6 events (mid-answer); a
     stream of a ~650-token prompt closed after 0-300 ms with no event yet (while its prompt is
     read or it waits for a slot; one that already had an event is counted as mid-answer); a
     non-streamed request closed after 0-300 ms;
   - a bad request (~15%), each of a fixed list in turn: bad JSON, wrong types, negative and huge numbers, a
     number beyond double, unknown token ids, a prompt or max_tokens past the context, an
     unsupported field, a body over --max-body-kib, an unknown route, a wrong method, and with
     --api-key a wrong key; each must get its intended 4xx and an OpenAI error object
     `{"error": {"message", "type", "param", "code"}}` with the intended param/code.
   With --every-kind the clients go on past --seconds with bad requests and hang-ups only, until
   each bad request and each kind of hang-up was sent (a short run on a slow build).
   Anything else is an unintended error: another status, an error event in a stream, a stream
   without `data: [DONE]`, a connection that fails or times out, an answer that differs.
3. After: the server must count no 5xx response (its /metrics `twinfer_requests_total`) and as many
   4xx other than 499 (its log of a plain request hung up on) as bad requests were sent, return to
   no running or queued sequence within 10 s, answer /health, and each pool request alone must
   still equal its reference.
4. Memory: the server's VmRSS + VmSwap (/proc/PID/status) every --sample-every seconds during the
   load. Compared: the samples after --warmup seconds of load (default 60, a quarter of a shorter
   run), max against min. The server grows by design until it has seen the soak's largest work: the
   CPU KV cache maps its pages as each slot first reaches a length (SmolLM2-135M, f32 cache: 46 KB a
   position, ~36 MB for a slot of ~780 positions), passes size their activation buffers by the
   most rows they have held, and each HTTP thread's malloc arena grows on first use. The fill
   takes the KV cache to its final size; the warm-up leaves the rest out. After both, growth would
   be a leak. More than --memory-spread (5%) fails, unless --no-memory-check.

Exit status 0 when everything holds, 1 otherwise; the summary (markdown) goes to stdout, progress
and problems to stderr, and with --json PATH the counts as JSON. Standard library only.
"""
import argparse
import http.client
import json
import random
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

from serve_client import DONE, server_memory_kib, sse_events, story_prompt

SYSTEM = "You are a helpful assistant. Answer in one or two short sentences."
QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow.", "Why is the sky blue?",
             "What do bees make?", "How many legs does a spider have?", "What is twelve times twelve?",
             "Give me a word that rhymes with cat.", "What is the opposite of hot?", "Who wrote Romeo and Juliet?",
             "What is water made of?", "Suggest a name for a kitten.", "Which season comes after winter?"]
TIMEOUT_S = 300   # one request, on the socket


class Unintended(Exception):
    """A response the soak did not intend: the request's error, not the script's."""


def pool_request(i, max_tokens):
    """The i-th request of the pool: (path, body without `stream`)."""
    tokens = 8 + (i * 7) % (max_tokens - 7)
    kind = i % 4
    if kind < 2:
        n = i // 4 * 2 + kind   # 0, 1, 2, ...: each question once, then again numbered
        q = QUESTIONS[n % len(QUESTIONS)] + (f" (question {n})" if n >= len(QUESTIONS) else "")
        messages = [{"role": "system", "content": SYSTEM}] if kind == 0 else []
        messages.append({"role": "user", "content": q})
        path, body = "/v1/chat/completions", {"messages": messages, "max_tokens": tokens, "logprobs": True}
    else:
        short = f"Story {i}: once upon a time, a {QUESTIONS[i % len(QUESTIONS)].lower()}"
        text = short if kind == 2 else story_prompt(i)
        path, body = "/v1/completions", {"prompt": text, "max_tokens": tokens, "logprobs": 0}
    body["temperature"] = 0
    if i % 6 == 5:
        body.update(temperature=0.7, seed=1000 + i)
    if i % 8 == 3:
        body["ignore_eos"] = True
    if i % 8 == 6:
        body["stop"] = ["."]
    if i % 5 == 4:
        body["model"] = "no-such-model"   # the server does not check it (docs/serving.md)
    return path, body


def long_request(i):
    """A ~650-token completion prompt, for hanging up before its first event."""
    return "/v1/completions", {"prompt": " ".join(story_prompt(10000 + i * 6 + k) for k in range(6)), "max_tokens": 32,
                               "temperature": 0}


def fill_request(i):
    """Longer than any request of the soak (seven stories against long_request's six), read whole."""
    return "/v1/completions", {"prompt": " ".join(story_prompt(20000 + i * 7 + k) for k in range(7)), "max_tokens": 32,
                               "temperature": 0, "ignore_eos": True}


def bad_requests(max_body_kib, api_key, n_ctx):
    """(name, method, path, body bytes, headers, status, param, code); param/code None: not checked."""
    chat = {"messages": [{"role": "user", "content": "Hi"}]}
    big = json.dumps({"prompt": "a " * (max_body_kib * 512 + 1024), "max_tokens": 1}).encode()
    cases = [
        ("bad JSON", "POST", "/v1/chat/completions", b'{"messages": [', {}, 400, None, "invalid_json"),
        ("not an object", "POST", "/v1/completions", b"[1, 2]", {}, 400, None, None),
        ("messages a string", "POST", "/v1/chat/completions", {"messages": "hi"}, {}, 400, "messages", None),
        ("content a number", "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, {}, 400,
         "messages[0].content", None),
        ("unknown role", "POST", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, {}, 400,
         "messages[0].role", None),
        ("max_tokens a string", "POST", "/v1/completions", {"prompt": "x", "max_tokens": "5"}, {}, 400, "max_tokens", None),
        ("negative max_tokens", "POST", "/v1/chat/completions", {**chat, "max_tokens": -1}, {}, 400, "max_tokens", None),
        ("huge max_tokens", "POST", "/v1/completions", {"prompt": "x", "max_tokens": 10 ** 12}, {}, 400, "max_tokens", None),
        ("negative temperature", "POST", "/v1/chat/completions", {**chat, "temperature": -0.5}, {}, 400, "temperature", None),
        ("top_k 2^32", "POST", "/v1/chat/completions", {**chat, "top_k": 2 ** 32}, {}, 400, "top_k", None),
        ("n 1.5", "POST", "/v1/completions", {"prompt": "x", "n": 1.5}, {}, 400, "n", None),
        ("stream 1", "POST", "/v1/completions", {"prompt": "x", "stream": 1}, {}, 400, "stream", None),
        ("seed beyond double", "POST", "/v1/completions", b'{"prompt": "x", "seed": 2e308}', {}, 400, None, "invalid_json"),
        ("unknown token id", "POST", "/v1/completions", {"prompt": [1, 99999999]}, {}, 400, "prompt", None),
        ("negative logit_bias id", "POST", "/v1/chat/completions", {**chat, "logit_bias": {"-1": 5}}, {}, 400, None, None),
        ("prompt past the context", "POST", "/v1/completions", {"prompt": [1000] * (n_ctx + 1), "max_tokens": 1}, {}, 400,
         None, "context_length_exceeded"),
        ("max_tokens past the context", "POST", "/v1/completions", {"prompt": [1000] * 10, "max_tokens": n_ctx - 5}, {},
         400, None, "context_length_exceeded"),
        ("suffix", "POST", "/v1/completions", {"prompt": "x", "suffix": "y"}, {}, 400, "suffix", "unsupported_parameter"),
        ("body over the limit", "POST", "/v1/completions", big, {}, 413, None, "body_too_large"),
        ("unknown route", "POST", "/v1/nothing", b"{}", {}, 404, None, None),
        ("GET on a POST route", "GET", "/v1/completions", None, {}, 404, None, None),
    ]
    if api_key:
        cases.append(("wrong key", "POST", "/v1/completions", {"prompt": "x"}, {"Authorization": "Bearer wrong"}, 401,
                      None, "invalid_api_key"))
    return [(name, method, path, body if body is None or isinstance(body, bytes) else json.dumps(body).encode(), headers,
             status, param, code) for name, method, path, body, headers, status, param, code in cases]


class Server:
    """Where the server is, and the client side of one request."""

    def __init__(self, url, api_key):
        parts = urllib.parse.urlsplit(url)
        self.url, self.host, self.port = url.rstrip("/"), parts.hostname, parts.port or 80
        self.api_key = api_key

    def connect(self, timeout=TIMEOUT_S):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def headers(self, extra=None):
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        h.update(extra or {})
        return h

    def get(self, path):
        conn = self.connect(30)
        try:
            conn.request("GET", path, headers=self.headers())
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()

    def n_ctx(self):
        """The context of a slot, from /v1/models (twinfer's `meta.n_ctx`)."""
        status, text = self.get("/v1/models")
        if status != 200:
            raise Unintended(f"/v1/models answered {status}")
        return json.loads(text)["data"][0]["meta"]["n_ctx"]

    def metrics(self):
        status, text = self.get("/metrics")
        if status != 200:
            raise Unintended(f"/metrics answered {status}")
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def answer(self, path, body, stream):
        """The answer to one request read to its end: (text, ((token, logprob), ...), finish,
        prompt tokens, completion tokens). Raises Unintended for anything but a whole answer."""
        chat = path == "/v1/chat/completions"
        body = {**body, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        conn = self.connect()
        try:
            conn.request("POST", path, json.dumps(body).encode(), self.headers())
            r = conn.getresponse()
            if r.status != 200:
                raise Unintended(f"status {r.status}: {r.read()[:300]!r}")
            if not stream:
                return normalized(chat, json.loads(r.read()))
            text, tokens, finish, usage, done = [], [], None, None, False
            for event in sse_events(r):
                if done:
                    raise Unintended("an event after data: [DONE]")
                if event == DONE:
                    done = True
                    continue
                if "error" in event:
                    raise Unintended(f"error event: {json.dumps(event)[:300]}")
                usage = event.get("usage") or usage
                for c in event.get("choices", []):
                    text.append((c.get("delta", {}).get("content") if chat else c.get("text")) or "")
                    tokens += logprob_pairs(chat, c.get("logprobs"))
                    finish = c.get("finish_reason") or finish
            if not done:
                raise Unintended("the stream ended without data: [DONE]")
            if usage is None:
                raise Unintended("the stream had no usage chunk")
            return "".join(text), tuple(tokens), finish, usage["prompt_tokens"], usage["completion_tokens"]
        finally:
            conn.close()


def logprob_pairs(chat, logprobs):
    if not logprobs:
        return []
    if chat:
        return [(t["token"], t["logprob"]) for t in logprobs.get("content") or []]
    return list(zip(logprobs["tokens"], logprobs["token_logprobs"]))


def normalized(chat, response):
    c = response["choices"][0]
    text = c["message"]["content"] if chat else c["text"]
    return (text or "", tuple(logprob_pairs(chat, c.get("logprobs"))), c["finish_reason"],
            response["usage"]["prompt_tokens"], response["usage"]["completion_tokens"])


def difference(got, want):
    """How an answer differs from its reference, or None."""
    if got == want:
        return None
    names = ("text", "tokens", "finish_reason", "prompt_tokens", "completion_tokens")
    parts = [n for n, a, b in zip(names, got, want) if a != b]
    if parts == ["tokens"] and [t for t, _ in got[1]] == [t for t, _ in want[1]]:
        parts = ["logprobs only"]
    return f"{', '.join(parts)} differ: got {got[0][:80]!r} ({got[2]}, {got[4]} tokens), " \
           f"alone {want[0][:80]!r} ({want[2]}, {want[4]} tokens)"


class Soak:
    def __init__(self, args, server, pid):
        self.args, self.server, self.pid = args, server, pid
        self.pool = [pool_request(i, args.max_tokens) for i in range(args.pool)]
        self.bad = bad_requests(args.max_body_kib, args.api_key, server.n_ctx())
        self.reference = []
        self.lock = threading.Lock()
        self.counts = {k: 0 for k in ("answers", "answers_streamed", "answers_plain", "answers_sampled", "mismatches",
                                      "hangups_mid_stream", "hangups_before_first_event", "hangups_plain",
                                      "hangups_after_the_end", "bad_requests",
                                      "unintended", "completion_tokens")}
        self.bad_counts = {case[0]: 0 for case in self.bad}
        self.problems = []
        self.turns = {}
        self.marks = {}   # memory (KiB) before and after the fill
        self.memory = []   # (seconds into the load, KiB)
        self.start = self.deadline = None

    def next(self, kind):
        """0, 1, 2, ... for each kind, over all clients: every bad request and every kind of hang-up
        comes in turn, so that even a short run has each."""
        with self.lock:
            self.turns[kind] = self.turns.get(kind, -1) + 1
            return self.turns[kind]

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def problem(self, key, message):
        with self.lock:
            self.counts[key] += 1
            self.problems.append(message)
            if len(self.problems) <= 20:
                print(f"PROBLEM: {message}", file=sys.stderr, flush=True)

    # --- the three kinds of client request ------------------------------------------------

    def pool_answer(self, rng):
        i = rng.randrange(len(self.pool))
        stream = rng.random() >= 0.2
        path, body = self.pool[i]
        try:
            got = self.server.answer(path, body, stream)
        except (Unintended, OSError, http.client.HTTPException, ValueError) as e:
            self.problem("unintended", f"pool request {i} ({'stream' if stream else 'plain'}): {type(e).__name__}: {e}")
            return
        self.count("answers")
        self.count("answers_streamed" if stream else "answers_plain")
        self.count("completion_tokens", got[4])
        if body["temperature"] != 0:
            self.count("answers_sampled")
        d = difference(got, self.reference[i])
        if d:
            self.problem("mismatches", f"pool request {i} ({'stream' if stream else 'plain'}): {d}")

    def hang_up(self, rng):
        kind = self.next("hang_up") % 3
        if kind == 1:
            path, body = long_request(rng.randrange(1000))
        else:
            path, body = self.pool[rng.randrange(len(self.pool))]
        body = {**body, "stream": kind != 2}
        conn = self.server.connect()
        try:
            conn.request("POST", path, json.dumps(body).encode(), self.server.headers())
            if kind == 2:   # a non-streamed request: hang up while it runs (the server answers 499 to no one)
                time.sleep(rng.uniform(0, 0.3))
                self.count("hangups_plain")
                return
            r = conn.getresponse()
            if r.status != 200:
                raise Unintended(f"status {r.status}: {r.read()[:300]!r}")
            if kind == 1:
                conn.sock.settimeout(rng.uniform(0.01, 0.3))
                try:
                    r.readline()   # the first line of the first event, if it comes in time
                except (socket.timeout, TimeoutError):
                    self.count("hangups_before_first_event")
                    return
                self.count("hangups_mid_stream")   # it had begun: hang up after its first event
                return
            events, after = 0, rng.randint(1, 6)
            for event in sse_events(r):
                if event == DONE:
                    self.count("hangups_after_the_end")   # fewer events than `after`: read whole, not checked
                    return
                if "error" in event:
                    raise Unintended(f"error event: {json.dumps(event)[:300]}")
                events += 1
                if events >= after:
                    self.count("hangups_mid_stream")
                    return
            raise Unintended("the stream ended without data: [DONE]")
        except (Unintended, OSError, http.client.HTTPException, ValueError) as e:
            self.problem("unintended", f"hang-up ({path}): {type(e).__name__}: {e}")
        finally:
            conn.close()

    def bad_request(self, rng):
        name, method, path, body, headers, status, param, code = self.bad[self.next("bad") % len(self.bad)]
        conn = self.server.connect(60)
        try:
            try:
                conn.request(method, path, body, self.server.headers(headers))
            except (BrokenPipeError, ConnectionResetError):
                pass   # the server may answer (413) before reading the whole body, then close
            r = conn.getresponse()
            text = r.read()
            if r.status != status:
                raise Unintended(f"status {r.status}, intended {status}: {text[:300]!r}")
            error = json.loads(text).get("error")
            if not (isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]
                    and isinstance(error.get("type"), str) and "param" in error and "code" in error):
                raise Unintended(f"not an OpenAI error object: {text[:300]!r}")
            if param is not None and error["param"] != param:
                raise Unintended(f"param {error['param']!r}, intended {param!r}")
            if code is not None and error["code"] != code:
                raise Unintended(f"code {error['code']!r}, intended {code!r}")
            with self.lock:
                self.counts["bad_requests"] += 1
                self.bad_counts[name] += 1
        except (Unintended, OSError, http.client.HTTPException, ValueError) as e:
            self.problem("unintended", f"bad request '{name}': {type(e).__name__}: {e}")
        finally:
            conn.close()

    # --- phases ---------------------------------------------------------------------------

    def references(self):
        """Each pool request alone, streamed, one after another."""
        answers = []
        for i, (path, body) in enumerate(self.pool):
            try:
                answers.append(self.server.answer(path, body, True))
            except (Unintended, OSError, http.client.HTTPException, ValueError) as e:
                self.problem("unintended", f"pool request {i} alone: {type(e).__name__}: {e}")
                answers.append(None)
        return answers

    def fill(self):
        """--clients fill requests at once, each read whole: with one slot a client (the server's
        --parallel), every slot's KV cache is then written up to the soak's longest sequence, so
        that the pages it maps as it first reaches a length are all mapped before the load."""
        def one(i):
            try:
                got = self.server.answer(*fill_request(i), True)
                if got[4] != 32:
                    raise Unintended(f"{got[4]} completion tokens, asked 32 with ignore_eos")
            except (Unintended, OSError, http.client.HTTPException, ValueError) as e:
                self.problem("unintended", f"fill request {i}: {type(e).__name__}: {e}")
        threads = [threading.Thread(target=one, args=(i,)) for i in range(self.args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def missing_kinds(self):
        """With --every-kind: "bad" while some bad request has not been sent, "hang_up" while some
        kind of hang-up has not been tried; None when each has."""
        with self.lock:
            if self.turns.get("bad", -1) + 1 < len(self.bad):
                return "bad"
            if self.turns.get("hang_up", -1) + 1 < 3:
                return "hang_up"
        return None

    def client(self, n):
        rng = random.Random(self.args.seed * 1000 + n)
        while time.monotonic() < self.deadline:
            r = rng.random()
            if r < self.args.bad:
                self.bad_request(rng)
            elif r < self.args.bad + self.args.hang_ups:
                self.hang_up(rng)
            else:
                self.pool_answer(rng)
        # A short run on a slow build (sanitizers) may end before every kind came in turn.
        while self.args.every_kind and (missing := self.missing_kinds()):
            if missing == "bad":
                self.bad_request(rng)
            else:
                self.hang_up(rng)

    def sampler(self, stop):
        next_progress = 60
        while not stop.wait(self.args.sample_every):
            t = time.monotonic() - self.start
            if self.pid:
                try:
                    self.memory.append((t, server_memory_kib(self.pid)))
                except OSError as e:
                    self.problem("unintended", f"cannot read the server's memory: {e}")
            if t >= next_progress:
                next_progress += 60
                with self.lock:
                    c = dict(self.counts)
                mem = f", RSS+swap {self.memory[-1][1] / 1024:.1f} MiB" if self.memory else ""
                print(f"{t:5.0f} s: {c['answers']} answers, {c['mismatches']} mismatches, "
                      f"{c['hangups_mid_stream'] + c['hangups_before_first_event'] + c['hangups_plain']} hang-ups, "
                      f"{c['bad_requests']} bad requests, {c['unintended']} unintended{mem}", file=sys.stderr, flush=True)

    def load(self):
        self.start = time.monotonic()
        self.deadline = self.start + self.args.seconds
        stop = threading.Event()
        sampler = threading.Thread(target=self.sampler, args=(stop,), daemon=True)
        sampler.start()
        clients = [threading.Thread(target=self.client, args=(n,)) for n in range(self.args.clients)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        stop.set()
        sampler.join()
        return time.monotonic() - self.start

    def settle(self):
        """The server with nothing running or queued (within 10 s), healthy."""
        for _ in range(100):
            m = self.server.metrics()
            if m.get("twinfer_sequences_running", 0) == 0 and m.get("twinfer_queue_depth", 0) == 0:
                break
            time.sleep(0.1)
        else:
            self.problem("unintended", f"10 s after the load: {m.get('twinfer_sequences_running')} sequences running, "
                                       f"{m.get('twinfer_queue_depth')} queued")
        status, text = self.server.get("/health")
        if status != 200:
            self.problem("unintended", f"/health after the load: {status} {text[:200]}")
        return m


def request_counts(metrics):
    """{(route, status): count} from twinfer_requests_total."""
    out = {}
    for name, value in metrics.items():
        m = re.fullmatch(r'twinfer_requests_total\{route="([^"]*)",status="(\d+)"\}', name)
        if m:
            out[(m.group(1), int(m.group(2)))] = value
    return out


def start_server(args):
    command = [args.twinfer, "serve", "-m", args.model, "--port", "0", "--parallel", str(args.clients), "-c", "2048",
               "--max-body", str(args.max_body_kib), "--no-progress"] + shlex.split(args.server_args)
    if args.api_key:
        command += ["--api-key", args.api_key]
    print("server: " + " ".join(command), file=sys.stderr, flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()   # "twinfer serve: listening on http://127.0.0.1:PORT"
    if "http://" not in line:
        process.kill()
        sys.exit(f"the server did not print its address: {line!r}")
    url = line[line.index("http://"):]
    for _ in range(1200):
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        sys.exit("the server did not become healthy in 2 minutes")
    return process, url


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server (default: start one with --twinfer and --model)")
    p.add_argument("--server-pid", type=int, help="with --url: the server's process, for its memory (same machine)")
    p.add_argument("--twinfer", help="the twinfer binary, to start a server")
    p.add_argument("--model", help="the model for the server started")
    p.add_argument("--server-args", default="", help="more arguments for the server started (one string)")
    p.add_argument("--api-key", help="the server's key (started: given to it); also sends a wrong one as a bad request")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--pool", type=int, default=32, help="distinct pool requests")
    p.add_argument("--max-tokens", type=int, default=48, help="the pool's largest max_tokens (at least 9)")
    p.add_argument("--bad", type=float, default=0.15, help="fraction of bad requests")
    p.add_argument("--hang-ups", type=float, default=0.15, help="fraction of requests hung up on")
    p.add_argument("--max-body-kib", type=int, default=256, help="the server's --max-body (a body over it must get 413)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sample-every", type=float, default=5, help="seconds between memory samples")
    p.add_argument("--warmup", type=float, default=60, help="seconds of load left out of the memory comparison")
    p.add_argument("--memory-spread", type=float, default=0.05)
    p.add_argument("--no-memory-check", action="store_true", help="report the memory, do not fail on it")
    p.add_argument("--no-fill", action="store_true", help="no fill requests before the load")
    p.add_argument("--every-kind", action="store_true",
                   help="after --seconds, go on until every bad request and every kind of hang-up was sent once")
    p.add_argument("--json", help="write the counts here as JSON")
    args = p.parse_args()
    if args.max_tokens < 9:
        p.error("--max-tokens must be at least 9")
    process = None
    if args.url:
        url, pid = args.url, args.server_pid
    elif args.twinfer and args.model:
        process, url = start_server(args)
        pid = process.pid
    else:
        p.error("give --url, or --twinfer and --model")
    warmup = min(args.warmup, args.seconds / 4)
    server = Server(url, args.api_key)
    soak = Soak(args, server, pid)
    try:
        t0 = time.monotonic()
        soak.reference = soak.references()
        print(f"references: {len(soak.pool)} pool requests alone in {time.monotonic() - t0:.1f} s", file=sys.stderr,
              flush=True)
        if any(r is None for r in soak.reference):
            sys.exit(1)
        if not args.no_fill:
            t0 = time.monotonic()
            soak.marks["before the fill"] = server_memory_kib(pid) if pid else None
            soak.fill()
            soak.marks["after the fill"] = server_memory_kib(pid) if pid else None
            print(f"fill: {args.clients} long requests at once in {time.monotonic() - t0:.1f} s", file=sys.stderr,
                  flush=True)
        before = server.metrics()
        load_s = soak.load()
        after = soak.settle()
        again = soak.references()   # each alone again, after the load
        after_mismatches = [i for i, (a, r) in enumerate(zip(again, soak.reference)) if a is not None and a != r]
        for i in after_mismatches:
            soak.problem("mismatches", f"pool request {i} alone after the load: {difference(again[i], soak.reference[i])}")
    finally:
        if process:
            process.terminate()
            process.wait(timeout=60)
    report(args, soak, url, pid, warmup, load_s, before, after)


def report(args, soak, url, pid, warmup, load_s, before, after):
    c = soak.counts
    served = {k: v - request_counts(before).get(k, 0) for k, v in request_counts(after).items()}
    served = {k: v for k, v in served.items() if v}
    server_5xx = sum(v for (_, status), v in served.items() if status >= 500)
    # Every 4xx the server sent, but the 499s it logs for hung-up plain requests, must be a bad request's.
    server_4xx = sum(v for (_, status), v in served.items() if 400 <= status < 500 and status != 499)
    hangups = c["hangups_mid_stream"] + c["hangups_before_first_event"] + c["hangups_plain"] + c["hangups_after_the_end"]
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in (
        "twinfer_sequences_cancelled_total", "twinfer_sequences_failed_total", "twinfer_sequences_timed_out_total",
        "twinfer_generated_tokens_total")}
    memory = [(t, kib) for t, kib in soak.memory if t >= warmup]
    kib = [k for _, k in memory]
    spread = (max(kib) - min(kib)) / min(kib) if len(kib) >= 2 else None
    failed_memory = spread is not None and spread > args.memory_spread and not args.no_memory_check
    failed = bool(c["unintended"] or c["mismatches"] or server_5xx or failed_memory or server_4xx != c["bad_requests"]
                  or delta["twinfer_sequences_failed_total"] or delta["twinfer_sequences_timed_out_total"])
    print(f"### Soak: {args.clients} clients, {load_s:.0f} s, {url}")
    print()
    print(f"- requests: {c['answers'] + hangups + c['bad_requests'] + c['unintended']} "
          f"({c['answers'] / load_s * 60:.0f} answers a minute)")
    print(f"- completed pool answers: {c['answers']} ({c['answers_streamed']} streamed, {c['answers_plain']} not; "
          f"{c['answers_sampled']} seeded at temperature 0.7, the rest greedy; {c['completion_tokens']} tokens), "
          f"**{c['mismatches']} differ from the same request alone** (pool of {len(soak.pool)}, each also alone again "
          f"after the load)")
    print(f"- hang-ups: {hangups} ({c['hangups_mid_stream']} mid-stream after 1-6 events, "
          f"{c['hangups_before_first_event']} before the first event, {c['hangups_plain']} non-streamed, "
          f"{c['hangups_after_the_end']} streams that ended before their hang-up); "
          f"the server cancelled {delta['twinfer_sequences_cancelled_total']:.0f} sequences")
    print(f"- bad requests: {c['bad_requests']} answered as intended, over {len(soak.bad)} kinds "
          f"(fewest of one kind: {min(soak.bad_counts.values())})")
    print(f"- **unintended errors: {c['unintended']}**; the server's responses: "
          + ", ".join(f"{route} {status}: {v:.0f}" for (route, status), v in sorted(served.items()))
          + f"; 4xx but 499: {server_4xx:.0f} (bad requests: {c['bad_requests']}); 5xx: {server_5xx:.0f}; "
            f"sequences failed {delta['twinfer_sequences_failed_total']:.0f}, "
            f"timed out {delta['twinfer_sequences_timed_out_total']:.0f}")
    if len(kib) >= 2:
        print(f"- server RSS + swap (pid {pid}), {len(kib)} samples every {args.sample_every:g} s after {warmup:.0f} s "
              f"of load: first {kib[0] / 1024:.1f}, last {kib[-1] / 1024:.1f}, min {min(kib) / 1024:.1f}, "
              f"max {max(kib) / 1024:.1f} MiB, **spread (max - min) / min {100 * spread:.2f}%** "
              f"(allowed {100 * args.memory_spread:g}%{', not checked' if args.no_memory_check else ''}); "
              f"all {len(soak.memory)} samples, the warm-up's included: {min(k for _, k in soak.memory) / 1024:.1f} .. "
              f"{max(k for _, k in soak.memory) / 1024:.1f} MiB"
              + "".join(f"; {name} {kib / 1024:.1f} MiB" for name, kib in soak.marks.items() if kib))
    else:
        print("- server memory: not compared (no --server-pid, or fewer than 2 samples after the warm-up)")
    print(f"- result: **{'FAIL' if failed else 'pass'}**", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"failed": failed, "seconds": load_s, "clients": args.clients, "counts": c,
                       "bad_counts": soak.bad_counts, "server_responses": {f"{r} {s}": v for (r, s), v in served.items()},
                       "metrics_delta": delta, "memory_kib": soak.memory, "memory_marks_kib": soak.marks, "warmup_s": warmup, "memory_spread": spread,
                       "problems": soak.problems}, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
