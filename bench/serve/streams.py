#!/usr/bin/env python3
"""Aggregate decode rate of an OpenAI-compatible server at N concurrent greedy streams.

    python3 bench/serve/streams.py --url http://127.0.0.1:8080 --streams 1 4 16 [--tokens 128]

Each stream is one /v1/completions request (a distinct ~100-token prompt, temperature 0,
max_tokens = --tokens, ignore_eos so every stream decodes all of them), all N sent at once from N
threads. Two rates per N: "wall" = completion tokens of all streams / time from the first send to
the last answer (prompt reading included), and "decode" = the same tokens after each stream's
first, over the time between the first stream's first token and the last stream's last token
(streamed responses give those times). Works against twinfer serve and llama.cpp's llama-server
(both take ignore_eos). Standard library only.
"""
import argparse
import json
import threading
import time
import urllib.request

WORDS = ("river stone lantern orchard copper meadow harbor violet thunder candle pepper marble "
         "falcon willow saddle granite velvet comet basket ember").split()


def prompt(i):
    # ~100 tokens of plain words, different for every stream so that no prefix is shared.
    words = [WORDS[(i * 7 + k * 13 + k * k) % len(WORDS)] for k in range(90)]
    return f"Story {i}: " + " ".join(words) + ". Continue the story:"


def stream_one(url, i, tokens, out):
    body = json.dumps({"prompt": prompt(i), "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    first = last = None
    chunks = 0
    usage = None
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    out[i] = {"first": first, "last": last, "chunks": chunks,
              "tokens": usage["completion_tokens"] if usage else chunks,
              "prompt_tokens": usage["prompt_tokens"] if usage else None}


def run(url, n, tokens):
    out = [None] * n
    threads = [threading.Thread(target=stream_one, args=(url, i, tokens, out)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.perf_counter()
    total = sum(o["tokens"] for o in out)
    first = min(o["first"] for o in out)
    last = max(o["last"] for o in out)
    decode_tokens = sum(o["tokens"] - 1 for o in out)
    return {"streams": n, "tokens": total, "prompt_tokens": out[0]["prompt_tokens"], "wall_s": end - start,
            "wall_tok_s": total / (end - start), "decode_tok_s": decode_tokens / (last - first)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    run(args.url, 1, 8)   # warm-up
    print("| streams | prompt tokens each | completion tokens | wall s | wall tok/s | decode tok/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for _ in range(args.rounds):
        for n in args.streams:
            r = run(args.url, n, args.tokens)
            print(f"| {r['streams']} | {r['prompt_tokens']} | {r['tokens']} | {r['wall_s']:.2f} | "
                  f"{r['wall_tok_s']:.1f} | {r['decode_tok_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
