#!/usr/bin/env python3
"""A real out-of-GPU-memory check of `twinfer serve` (docs/reliability.md, "Out of memory").

    build-gpu/tools/twinfer_make_random_model smollm2-135m Q4_1 .device/smollm2-vocab.gguf M.gguf
    python3 bench/serve/gpu_out_of_memory.py --twinfer build-gpu/apps/twinfer --model M.gguf
    # CPU dry run, no GPU touched: ends "no step ran out of memory", exit 1, as it must
    python3 bench/serve/gpu_out_of_memory.py --no-hog --device cpu --twinfer build/apps/twinfer \\
        --model tests/data/third_party/models/stories260K.gguf -k 4 --prompt-words 80 -c 512
    # the same with --server-args "--max-activation-memory 1": every prompt step runs out (the
    # activation limit, the CPU's stand-in for the device) and the run passes

Starts `twinfer serve -m MODEL --device cuda --parallel K -c 2048 --prompt-chunk 65536` (its log in
--server-log). Every request is a non-streamed greedy /v1/completions of one of K long prompts
(~1,400 tokens on SmolLM2's vocabulary) with max_tokens, ignore_eos and logprobs.
1. alone: each prompt alone, one after another; its answer (text, every token with its logprob,
   finish, usage) is the reference.
2. hogged: this process takes GPU memory (cudaMalloc through ctypes on libcudart, else torch.empty)
   until cudaMemGetInfo says only --leave-mib is free, and sends the K prompts at once: the
   batched step needs far more activation memory than is left. Each answer must be its reference
   exactly or a 503 with code out_of_memory (a sequence whose single token did not fit); the
   server must then be alive and answer /health.
3. recovered: the memory freed, the K prompts at once again (prefixes reused from the slots 2 wrote),
   then once more computed anew (the batched step at full size): each must equal its reference.
Before 2 and the last round, --parallel short "flush" requests at once overwrite every slot so
that no prompt prefix is reused (checked in /metrics).
Exit 1 (the reasons listed) on any other status, a difference, a dead server, a 5xx other than
those 503s in /metrics, or when twinfer_steps_out_of_memory_total did not grow in round 2 (then
nothing was tested). Differences in the last round too (no memory pressure there) mean that a
row's result on CUDA depends on its batch, not on the memory (--ids-only leaves the logprobs out).
A 500 "the model failed" in round 2 is a CUDA error under memory pressure other than
cudaErrorMemoryAllocation. Exit 77 (skip): no CUDA device, or neither libcudart nor torch. Exit
0: everything held. Standard library only (torch an optional fallback for the allocations).
"""
import argparse
import ctypes
import ctypes.util
import http.client
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from serve_client import WORDS
from soak import Server, Unintended, difference, normalized, request_counts   # bench/serve/soak.py

SKIP, MIB = 77, 1 << 20


class CudartHog:
    """Device memory taken with libcudart's cudaMalloc (this process's own CUDA context)."""

    def __init__(self, lib):
        self.lib, self.blocks = lib, []
        lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        lib.cudaFree.argtypes = [ctypes.c_void_p]
        lib.cudaMemGetInfo.argtypes = [ctypes.POINTER(ctypes.c_size_t)] * 2

    def info(self):
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if rc := self.lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)):
            raise RuntimeError(f"cudaMemGetInfo: CUDA error {rc}")
        return free.value, total.value

    def allocate(self, n):
        p = ctypes.c_void_p()
        if self.lib.cudaMalloc(ctypes.byref(p), n) != 0:
            self.lib.cudaGetLastError()
            return False
        self.blocks.append(p)
        return True

    def release(self):
        for p in self.blocks:
            self.lib.cudaFree(p)
        self.blocks = []


class TorchHog:
    def __init__(self, torch):
        self.torch, self.blocks = torch, []

    def info(self):
        return self.torch.cuda.mem_get_info()

    def allocate(self, n):
        try:
            self.blocks.append(self.torch.empty(n, dtype=self.torch.uint8, device="cuda"))
            return True
        except RuntimeError:   # torch.cuda.OutOfMemoryError
            return False

    def release(self):
        self.blocks = []
        self.torch.cuda.empty_cache()


def open_hog(path):
    """A hog on the first library that sees a device (no context made yet); exit 77 if none."""
    names = [path] if path else ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0",
                                 ctypes.util.find_library("cudart"), "/usr/local/cuda/lib64/libcudart.so"]
    reasons = []
    for name in dict.fromkeys(n for n in names if n):
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            reasons.append(str(e))
            continue
        count = ctypes.c_int()
        if (rc := lib.cudaGetDeviceCount(ctypes.byref(count))) == 0 and count.value > 0:
            return CudartHog(lib), name
        reasons.append(f"{name}: cudaGetDeviceCount gave error {rc}, {count.value} devices")
    try:
        import torch
        if torch.cuda.is_available():
            return TorchHog(torch), f"torch {torch.__version__}"
        reasons.append("torch: torch.cuda.is_available() is False")
    except ImportError as e:
        reasons.append(f"torch: {e}")
    print("SKIP: no CUDA device, or nothing to allocate with:\n  " + "\n  ".join(reasons), file=sys.stderr)
    sys.exit(SKIP)


def fill(hog, leave):
    """Allocates until at most `leave` bytes (+ 2 MiB) are free; (free, total) after."""
    chunk = 1 << 30
    for _ in range(100000):
        excess = (hog.info()[0] - leave) // (2 * MIB) * (2 * MIB)
        if excess <= 0:
            break
        if not hog.allocate(min(chunk, excess)):
            if chunk <= 2 * MIB:
                break
            chunk //= 2
    return hog.info()


def prompt(i, words, lead="Story"):
    """Plain words, different for every i from the third token on."""
    return f"{lead} {i}: " + " ".join(WORDS[(i * 7 + k * 13 + k * k + k // 20) % len(WORDS)] for k in range(words)) + "."


def log_tail(args, n=30):
    try:
        with open(args.server_log, errors="replace") as f:
            lines = f.readlines()[-n:]
        print(f"--- the server log's last {len(lines)} lines ({args.server_log}):\n" + "".join(lines) + "---", file=sys.stderr)
    except OSError:
        pass


def start_server(args):
    command = [args.twinfer, "serve", "-m", args.model, "--device", args.device, "--port", "0", "--parallel",
               str(args.parallel), "-c", str(args.ctx_size), "--prompt-chunk", str(args.prompt_chunk),
               "--no-progress"] + shlex.split(args.server_args)
    print("server: " + " ".join(command) + f"\nserver log: {args.server_log}", file=sys.stderr, flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(args.server_log, "w"), text=True)
    line = process.stdout.readline().strip()   # "twinfer serve: listening on http://127.0.0.1:PORT"
    url = line[line.index("http://"):] if "http://" in line else None
    for _ in range(3000 if url else 0):
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    log_tail(args)
    sys.exit(f"FAIL: the server did not become healthy (first line {line!r}, exit {process.wait()})")


def post(server, body, timeout):
    """(status or None, bytes) of one non-streamed /v1/completions request."""
    conn = server.connect(timeout)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body).encode(), server.headers())
        r = conn.getresponse()
        return r.status, r.read()
    except (OSError, http.client.HTTPException) as e:
        return None, f"{type(e).__name__}: {e}".encode()
    finally:
        conn.close()


def at_once(server, bodies, timeout):
    """Every body sent at the same moment, a thread each; their (status, bytes) in order."""
    results, barrier = [None] * len(bodies), threading.Barrier(len(bodies))

    def one(i):
        barrier.wait()
        results[i] = post(server, bodies[i], timeout)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--twinfer", required=True, help="the twinfer binary (a CUDA build)")
    p.add_argument("--model", required=True, help="a GGUF, e.g. a random-weight SmolLM2-135M (above)")
    p.add_argument("--device", default="cuda", help="the server's --device (cpu for the dry run only)")
    p.add_argument("-k", "--prompts", type=int, default=8, help="K: distinct prompts, sent at once")
    p.add_argument("--parallel", type=int, help="the server's --parallel (default K)")
    p.add_argument("-c", "--ctx-size", type=int, default=2048, help="the server's -c (prompt + max tokens must fit)")
    p.add_argument("--prompt-words", type=int, default=1350, help="words a prompt (~1,400 tokens on SmolLM2)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompt-chunk", type=int, default=65536, help="the server's --prompt-chunk (whole prompts a step)")
    p.add_argument("--leave-mib", type=int, default=64, help="GPU memory the hog leaves free")
    p.add_argument("--cudart", help="the libcudart to load (default: the usual names, then torch)")
    p.add_argument("--server-args", default="", help="more arguments for the server (one string)")
    p.add_argument("--server-log", default=os.path.join(tempfile.gettempdir(), f"twinfer-oom-{os.getpid()}.log"))
    p.add_argument("--timeout", type=float, default=600, help="seconds a request may take")
    p.add_argument("--ids-only", action="store_true", help="compare text, tokens, finish and usage, not logprobs")
    p.add_argument("--no-hog", action="store_true", help="the CPU dry run: allocate nothing (nothing runs out)")
    args = p.parse_args()
    args.parallel = args.parallel or args.prompts
    hog, hog_name = (None, "none (--no-hog)") if args.no_hog else open_hog(args.cudart)
    process, url = start_server(args)
    server = Server(url, None)
    bodies = [{"prompt": prompt(i, args.prompt_words), "max_tokens": args.max_tokens, "temperature": 0, "logprobs": 0,
               "ignore_eos": True} for i in range(args.prompts)]
    # 64 tokens each: long enough to run together, so that each takes a slot of its own.
    flush = [{"prompt": prompt(j, 12, "Note"), "max_tokens": 64, "temperature": 0, "ignore_eos": True}
             for j in range(args.parallel)]
    problems, rows, reference, free = [], [], [None] * len(bodies), None

    def problem(message):
        problems.append(message)
        print(f"PROBLEM: {message}", file=sys.stderr, flush=True)

    def metrics():
        try:
            return server.metrics()
        except (OSError, http.client.HTTPException, ValueError, Unintended) as e:   # a dead server: checked after
            print(f"/metrics: {type(e).__name__}: {e}", file=sys.stderr)
            return {}

    def flush_slots():
        for j, (status, raw) in enumerate(at_once(server, flush, args.timeout)):
            if status != 200:
                problem(f"flush request {j}: status {status}: {raw[:300]!r}")

    def run_round(name, together, oom_allowed=False, fresh=True):
        """The K prompts (at once, or one after another), each answer checked, a row of the table;
        returns the steps that ran out of memory meanwhile."""
        before, t0 = metrics(), time.monotonic()
        results = at_once(server, bodies, args.timeout) if together else [post(server, b, args.timeout) for b in bodies]
        seconds, after, counts = time.monotonic() - t0, metrics(), {"same": 0, "oom": 0, "other": 0}
        for i, (status, raw) in enumerate(results):
            try:
                body = json.loads(raw) if status in (200, 503) else {}
                if status == 200:
                    got = normalized(False, body)
                    got = got[:1] + (tuple(t for t, _ in got[1]),) + got[2:] if args.ids_only else got
                    reference[i] = reference[i] or got   # round 1 sets it
                    d = difference(got, reference[i])
                    counts["other" if d else "same"] += 1
                    if d:
                        problem(f"{name}, prompt {i}: {d}")
                    continue
                if oom_allowed and status == 503 and body["error"]["code"] == "out_of_memory":
                    counts["oom"] += 1
                    print(f"{name}, prompt {i}: 503 out_of_memory: {body['error']['message'][:300]}", file=sys.stderr)
                    continue
            except (ValueError, KeyError, TypeError, IndexError):
                pass
            counts["other"] += 1
            problem(f"{name}, prompt {i}: status {status}: {raw[:300]!r}")
        served = {k: v - request_counts(before).get(k, 0) for k, v in request_counts(after).items()}
        if other := {f"{route} {status}": v for (route, status), v in served.items() if v and status >= 500 and status != 503}:
            problem(f"{name}: the server counted 5xx responses other than 503: {other}")
        oom, reused = (after[k] - before.get(k, 0) if k in after else float("nan")   # nan: no /metrics after
                       for k in ("twinfer_steps_out_of_memory_total", "twinfer_prompt_tokens_cached_total"))
        if fresh and reused > 0.05 * sum(r[3] for r in reference if r):
            problem(f"{name}: {reused:.0f} prompt tokens came from the slots: the flush did not overwrite them")
        rows.append((name, len(results), counts["same"], counts["oom"], counts["other"], oom, reused, seconds))
        return oom

    try:
        run_round("1 alone", together=False, fresh=False)
        if tokens := sorted(r[3] for r in reference if r):
            print(f"alone: prompts of {tokens[0]}..{tokens[-1]} tokens, {args.max_tokens} generated each", file=sys.stderr)
        if all(reference):
            flush_slots()
            if hog:
                try:
                    free, total = fill(hog, args.leave_mib * MIB)
                    print(f"hog ({hog_name}): {free / MIB:.0f} of {total / MIB:.0f} MiB left free", file=sys.stderr, flush=True)
                except RuntimeError as e:   # e.g. a GPU in exclusive-process mode
                    problem(f"the hog could not take GPU memory: {e}")
            oom = run_round("2 hogged", together=True, oom_allowed=True)
            if process.poll() is not None:
                problem(f"the server died in round 2 (exit {process.returncode})")
            elif server.get("/health")[0] != 200:
                problem("/health after round 2 is not 200")
            if hog:
                hog.release()
            if oom == 0:
                left = "; with --no-hog that is expected" if args.no_hog else f" ({free / MIB:.0f} MiB were free)" if free else ""
                problem("no step ran out of memory: the check tested nothing. Leave less free (--leave-mib), or make the "
                        "batched step larger (--prompt-words, --prompts)" + left)
            if process.poll() is None:
                run_round("3 again, prefixes reused", together=True, fresh=False)
                flush_slots()
                run_round("3 again, computed anew", together=True)
    finally:
        if hog:
            hog.release()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        elif not any("server died" in m for m in problems):
            problem(f"the server died (exit {process.returncode})")

    print(f"### twinfer serve out of GPU memory: {args.prompts} prompts, --device {args.device}, hog {hog_name}"
          + (f", {free / MIB:.0f} MiB left free" if free is not None else ""))
    print("\n| round | requests | same as alone | 503 out_of_memory | other | steps out of memory | prompt tokens reused | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, n, same, oom, other, steps, reused, seconds in rows:
        print(f"| {name} | {n} | {same} | {oom} | {other} | {steps:.0f} | {reused:.0f} | {seconds:.1f} |")
    if problems:
        log_tail(args)
    print(f"\nresult: **{'FAIL' if problems else 'pass'}**" + "".join(f"\n- {m}" for m in problems[:20]), flush=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
