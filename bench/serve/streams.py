#!/usr/bin/env python3
"""Aggregate decode rate and time to first token of an OpenAI-compatible server at N concurrent
greedy streams.

    python3 bench/serve/streams.py --url http://127.0.0.1:8080 --streams 1 4 16 [--tokens 128]

Each stream is one /v1/completions request (a distinct ~100-token prompt, never sent before, so
no server can answer it from a prefix or prompt cache; temperature 0, max_tokens = --tokens,
ignore_eos so every stream decodes all of them), all N sent at once, one thread each, the threads
spread over worker processes (half the machine's cores at most): one Python process parses about
3,000 streamed events a second, fewer than a fast server sends at 64 streams. Two rates per
N: "wall" = completion tokens of all streams / time from the first send to the last answer
(prompt reading included), and "decode" = the same tokens after each stream's first, over the
time between the first stream's first token and the last stream's last token (streamed responses
give those times). Time to first token (TTFT) of a stream = from just before its request is sent
to its first streamed text; p50 and p99 over the N streams by linear interpolation between the
sorted values (numpy's default: at N = 1 both are the one value; for N up to 100, p99 lies
between the two largest). Every stream is checked: a failed request, or a stream whose streamed
usage is missing or counts other than --tokens completion tokens, is printed as a PROBLEM and the
run exits with status 1 at the end; fewer text chunks than tokens is only noted. Works against
twinfer serve and llama.cpp's llama-server (both take ignore_eos). Standard library only.

The memory soak (issue 19: RSS + swap within 5% across 5 rounds of 64 streams), with the server on
this machine:

    python3 bench/serve/streams.py --streams 64 --rounds 5 --server-pid "$(pgrep -f 'twinfer serve')"
"""
import argparse
import json
import multiprocessing
import os
import random
import sys
import threading
import time
import urllib.request

from serve_client import DONE, server_memory_kib, sse_events, story_prompt


class Ids:
    """Prompt numbers never used before in this process (nor, from a random start, in an earlier
    one), so that no stream finds its prompt already in a server's prefix or prompt cache."""

    def __init__(self, first):
        self.next = first

    def take(self, n):
        self.next += n
        return range(self.next - n, self.next)


def stream_one(url, i, pid, tokens, out):
    body = json.dumps({"prompt": story_prompt(pid), "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    first = last = None
    chunks = 0
    usage = None
    sent = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        for chunk in sse_events(response):
            if chunk == DONE:
                continue
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    out[i] = {"sent": sent, "first": first, "last": last, "done": time.perf_counter(), "chunks": chunks,
              "tokens": usage["completion_tokens"] if usage else chunks,
              "prompt_tokens": usage["prompt_tokens"] if usage else None}


def percentile(values, p):
    # Linear interpolation between the closest ranks (numpy.percentile's default).
    v = sorted(values)
    x = (len(v) - 1) * p / 100
    lo = int(x)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (x - lo)


def guarded(url, i, pid, tokens, out, errors):
    try:
        stream_one(url, i, pid, tokens, out)
    except Exception as e:  # noqa: BLE001 - every failure is reported, none hidden
        errors[i] = f"{type(e).__name__}: {e}"


def worker(url, jobs, tokens, barrier, results):
    """One process's streams (jobs: (index, prompt number) pairs), each in a thread, started when
    every process is ready; puts {index: result} and {index: error} on the results queue."""
    out, errors = {}, {}
    threads = [threading.Thread(target=guarded, args=(url, i, pid, tokens, out, errors)) for i, pid in jobs]
    barrier.wait()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((out, errors))


def run(url, n, tokens, ids):
    # time.perf_counter is the system's monotonic clock: the processes' times compare.
    context = multiprocessing.get_context("fork")
    jobs = list(enumerate(ids.take(n)))
    n_processes = min(n, max(1, (os.cpu_count() or 2) // 2))
    barrier = context.Barrier(n_processes + 1)
    results = context.Queue()
    processes = [context.Process(target=worker, args=(url, jobs[p::n_processes], tokens, barrier, results))
                 for p in range(n_processes)]
    for p in processes:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    out = [None] * n
    errors = [None] * n
    for _ in processes:   # read before join: a process exits once its results are taken
        part_out, part_errors = results.get()
        for i, o in part_out.items():
            out[i] = o
        for i, e in part_errors.items():
            errors[i] = e
    for p in processes:
        p.join()
    end = max([o["done"] for o in out if o] + [start])
    problems = [f"stream {i}: {e}" for i, e in enumerate(errors) if e]
    problems += [f"stream {i}: no token streamed" for i, o in enumerate(out) if o and o["first"] is None]
    problems += [f"stream {i}: no usage in the stream" for i, o in enumerate(out) if o and o["prompt_tokens"] is None]
    problems += [f"stream {i}: {o['tokens']} completion tokens (usage), expected {tokens}"
                 for i, o in enumerate(out) if o and o["first"] is not None and o["tokens"] != tokens]
    # A token whose text is an incomplete UTF-8 sequence may come with the next chunk, so fewer
    # text chunks than tokens is a note, not a failure.
    notes = [f"stream {i}: {o['chunks']} text chunks for {o['tokens']} tokens"
             for i, o in enumerate(out) if o and o["chunks"] != o["tokens"]]
    out = [o for o in out if o and o["first"] is not None]
    if not out:
        return {"streams": n, "problems": problems, "notes": notes}
    total = sum(o["tokens"] for o in out)
    first = min(o["first"] for o in out)
    last = max(o["last"] for o in out)
    decode_tokens = sum(o["tokens"] - 1 for o in out)
    ttft = [o["first"] - o["sent"] for o in out]
    return {"streams": n, "ok": len(out), "tokens": total, "prompt_tokens": out[0]["prompt_tokens"],
            "wall_s": end - start, "wall_tok_s": total / (end - start),
            "decode_tok_s": decode_tokens / (last - first) if last > first else float("nan"),
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99), "problems": problems,
            "notes": notes}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--server-pid", type=int, default=None,
                        help="the server's process (same machine): its RSS + swap after every round; "
                             "more than --memory-spread between rounds fails")
    parser.add_argument("--memory-spread", type=float, default=0.05)
    parser.add_argument("--first-id", type=int, default=None,
                        help="number of the first prompt (default: random, so reruns share no prompt)")
    args = parser.parse_args()
    first_id = args.first_id if args.first_id is not None else random.randrange(1000, 900000, 1000)
    print(f"prompts from number {first_id}", file=sys.stderr, flush=True)
    ids = Ids(first_id)
    run(args.url, 1, 8, ids)   # warm-up
    print("| streams | ok | prompt tokens each | completion tokens | wall s | wall tok/s | decode tok/s "
          "| TTFT p50 ms | TTFT p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    failed = False
    memory = []
    for _ in range(args.rounds):
        for n in args.streams:
            r = run(args.url, n, args.tokens, ids)
            for p in r["problems"]:
                print(f"PROBLEM ({n} streams): {p}", file=sys.stderr, flush=True)
            for p in r["notes"]:
                print(f"note ({n} streams): {p}", file=sys.stderr, flush=True)
            failed = failed or bool(r["problems"])
            if "tokens" not in r:
                print(f"| {n} | 0 | | | | | | | |", flush=True)
                continue
            print(f"| {r['streams']} | {r['ok']} | {r['prompt_tokens']} | {r['tokens']} | {r['wall_s']:.2f} | "
                  f"{r['wall_tok_s']:.1f} | {r['decode_tok_s']:.1f} | {1000 * r['ttft_p50_s']:.0f} | "
                  f"{1000 * r['ttft_p99_s']:.0f} |", flush=True)
        if args.server_pid:
            memory.append(server_memory_kib(args.server_pid))
            print(f"server RSS + swap after round {len(memory)}: {memory[-1] / 1024:.1f} MiB", flush=True)
    if len(memory) >= 2:
        spread = (max(memory) - min(memory)) / min(memory)
        print(f"server memory over {len(memory)} rounds: {min(memory) / 1024:.1f} .. {max(memory) / 1024:.1f} MiB, "
              f"spread {100 * spread:.1f}% (allowed {100 * args.memory_spread:.0f}%)", flush=True)
        failed = failed or spread > args.memory_spread
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
