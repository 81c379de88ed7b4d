#!/usr/bin/env python3
"""gpt-oss as a whole model against llama.cpp and the float64 reference (issue 18).

The goldens (tools/make_arch_golden.py) check every layer's arithmetic on a tiny model; this
checks the whole model at a size where its parts meet real shapes: a random GptOssForCausalLM
(4 layers of 256, heads of 64, 8 experts of which 2 a token, sliding window 128 on every other
layer, sinks, every bias) with llama-spm's 32,000-token vocabulary, converted by llama.cpp's own
convert_hf_to_gguf.py (f32), then quantized by llama-quantize to MXFP4_MOE (experts MXFP4, the
other matrices Q8_0). For each file: `twinfer perplexity` (default, f32 activations, llama.cpp's
int8 scheme, the float64 reference) beside `llama-perplexity` (f32 KV cache, flash attention
off), and 24 greedy tokens from `twinfer run` beside `llama-simple`.

Two RoPE settings: none (the weights and everything else compared exactly), and YaRN as gpt-oss
has it (factor 32, truncate false), where llama.cpp rounds the ramp's ends and transformers (and
twinfer, following the model's definition) do not.

Usage: python3 tools/cross_check_gpt_oss.py --llama-src LLAMA_CPP_DIR --llama-bin LLAMA_BUILD/bin
    --twinfer build/apps/twinfer --text FILE [--work DIR]
Needs torch, transformers, safetensors (as tools/make_arch_golden.py), and a llama.cpp CPU build
(llama-quantize, llama-perplexity, llama-simple) from the llama-cpp-python 0.3.36 sdist, made
outside the repository. Prints a markdown table.
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_arch_golden as golden  # noqa: E402

SHAPE = dict(vocab_size=32000, hidden_size=256, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2, head_dim=64, num_local_experts=8, num_experts_per_tok=2, sliding_window=128,
             max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True)
ROPE = {
    "no scaling": dict(rope_type="default", rope_theta=150000.0),
    "YaRN": dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                 original_max_position_embeddings=256),
}
PROMPT = "Once upon a time there was"


def make_files(name, rope, args):
    f32 = args.work / f"gpt-oss-{name}-f32.gguf"
    mxfp4 = args.work / f"gpt-oss-{name}-mxfp4.gguf"
    if not f32.exists():
        model, _ = golden.build("gpt_oss", dict(SHAPE, rope_parameters=rope), torch.Generator().manual_seed(7))
        hf = args.work / f"gpt-oss-{name}-hf"
        model.to(torch.float32).save_pretrained(hf, safe_serialization=True)
        golden.convert(args.llama_src, hf, f32)
    if not mxfp4.exists():
        subprocess.run([str(args.llama_bin / "llama-quantize"), str(f32), str(mxfp4), "MXFP4_MOE"], check=True,
                       capture_output=True)
    return {"f32": f32, "MXFP4_MOE": mxfp4}


def perplexity(command):
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr).group(1))


def generated(command, strip):
    text = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return text[text.index(strip) + len(strip):] if strip in text else text


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--llama-src", type=Path, required=True)
    p.add_argument("--llama-bin", type=Path, required=True)
    p.add_argument("--twinfer", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/gpt-oss-cross-check"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    common = ["-f", args.text, "-c", "512", "-t", "2"]
    print("| RoPE | file | float64 reference | twinfer default | twinfer f32 activations | twinfer int8 (llama.cpp's scheme) "
          "| llama.cpp | 24 greedy tokens, twinfer beside llama.cpp |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, rope in ROPE.items():
        for kind, path in make_files(name.split()[0].lower(), rope, args).items():
            twinfer = [args.twinfer, "perplexity", "-m", str(path), "--no-progress"] + common
            ppl = {what: perplexity(twinfer + extra) for what, extra in (
                ("f64", ["--precision", "f64"]), ("default", []), ("f32", ["--activations", "f32"]),
                ("int8", ["--activations", "int8"]))}
            llama = perplexity([str(args.llama_bin / "llama-perplexity"), "-m", str(path), "-ctk", "f32", "-ctv", "f32",
                                "-fa", "off"] + common)
            ours = generated([args.twinfer, "run", "-m", str(path), "-p", PROMPT, "-n", "24", "--temp", "0"], PROMPT)
            theirs = generated([str(args.llama_bin / "llama-simple"), "-m", str(path), "-n", "24", PROMPT], PROMPT)
            same = 0
            while same < min(len(ours), len(theirs)) and ours[same] == theirs[same]:
                same += 1
            agree = "the same text" if ours.strip() == theirs.strip() else f"differ from character {same}"
            rel = lambda v: f"{v:,.4f} ({(v - ppl['f64']) / ppl['f64']:+.1e})"  # noqa: E731
            print(f"| {name} | {kind} | {ppl['f64']:,.4f} | {rel(ppl['default'])} | {rel(ppl['f32'])} | {rel(ppl['int8'])} "
                  f"| {rel(llama)} | {agree} |", flush=True)


if __name__ == "__main__":
    main()
