#!/usr/bin/env python3
"""Golden files for TransformerModel and the float64 reference on the architectures beyond Llama
and GPT-2 (tests/models/transformer_model_test.cpp).

For each case: a small random model of that architecture built with Hugging Face transformers,
run in float64, and converted to GGUF by llama.cpp's own convert_hf_to_gguf.py (not by code of
ours, so that a converter bug and a loader bug cannot agree):
  tests/models/golden_arch/<case>/model.gguf   (convert_hf_to_gguf.py --outtype f32)
  tests/models/golden_arch/<case>/golden.bin   (transformers' float64 logits; format of
                                                tools/make_golden.py, without hidden states)

float64 throughout: transformers keeps some steps in float32 even in a float64 model (norms,
rotary tables, softmax, router weights). While the golden logits are computed, every request for
float32 (Tensor.float(), .to(torch.float32), softmax(dtype=float32), torch.tensor of a Python
float) is answered in float64 instead. The weights are float32 values (the GGUF holds them
exactly), norm gains multiples of 1/64 (Gemma's converter adds 1 to them: still exact).

The converter needs a tokenizer; the random models have none, so each model class's set_vocab is
replaced by the converter's own _set_vocab_builtin("llama-spm") (the first vocab_size tokens of
llama.cpp's ggml-vocab-llama-spm.gguf). Only the vocabulary comes from there: every tensor and
hyper-parameter is the converter's.

Usage: python3 tools/make_arch_golden.py --llama LLAMA_CPP_DIR [--out tests/models/golden_arch] [CASE ...]
Needs torch, transformers, safetensors, numpy, and a llama.cpp source tree (convert_hf_to_gguf.py,
conversion/, gguf-py/, models/ggml-vocab-llama-spm.gguf) from the llama-cpp-python 0.3.36 sdist.
"""
import argparse
import contextlib
import copy
import json
import math
import shutil
import struct
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

SEED = 20261205
GOLDEN_MAGIC = b"TWGL"
GOLDEN_VERSION = 1
SEQUENCE_LENGTHS = (1, 5, 24)

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)

# Each case covers what the description of its architecture adds.
CASES = {
    # QKV biases, GQA, a large RoPE base, untied output.
    "qwen2": ("qwen2", dict(rope_theta=1e6, tie_word_embeddings=False, rms_norm_eps=1e-6)),
    # QK-norm (RMSNorm per head before RoPE), head_dim != hidden/heads, tied output.
    "qwen3": ("qwen3", dict(head_dim=16, rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6)),
    # Mixture of experts: 4 experts, top-2 routing with normalized weights, QK-norm.
    "qwen3moe": ("qwen3_moe", dict(head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                   norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                                   tie_word_embeddings=False, rms_norm_eps=1e-6)),
    # 5 sliding-window layers : 1 global (7 layers: the pattern repeats), window 5, sandwich norms,
    # QK-norm, GeGLU (tanh), embedding scale sqrt(E), local RoPE base 10000 / global 1e6, one KV head.
    "gemma3": ("gemma3_text", dict(num_hidden_layers=7, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                                   sliding_window=5, rope_theta=1e6, rope_local_base_freq=10000.0,
                                   hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                                   rms_norm_eps=1e-6, final_logit_softcapping=None, attn_logit_softcapping=None)),
    # Fused QKV and fused gate/up, partial rotary (half of each head).
    "phi3": ("phi3", dict(partial_rotary_factor=0.5, original_max_position_embeddings=64, sliding_window=None,
                          tie_word_embeddings=False, rms_norm_eps=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
                          attention_dropout=0.0)),
    # No RoPE in every 4th layer.
    "smollm3": ("smollm3", dict(num_hidden_layers=4, no_rope_layer_interval=4, rope_theta=2e6, tie_word_embeddings=True,
                                use_sliding_window=False, rms_norm_eps=1e-6)),
    # LayerNorm with bias, QKV biases, a quarter of each head rotated, SwiGLU.
    "stablelm": ("stablelm", dict(hidden_size=64, partial_rotary_factor=0.25, use_qkv_bias=True, qk_layernorm=False,
                                  use_parallel_residual=False, layer_norm_eps=1e-5, tie_word_embeddings=False,
                                  hidden_act="silu")),
    # YaRN (rope_type "yarn"): a base of 100 and heads of 16 put the ramp between the corrected
    # dimensions (beta_fast 32, beta_slow 1 of 64 original positions) over pairs 0..5, so pairs 1-4
    # blend the interpolated and extrapolated frequencies; attention factor 0.1 ln(4) + 1.
    "qwen2_yarn": ("qwen2", dict(hidden_size=64, max_position_embeddings=256, tie_word_embeddings=False, rms_norm_eps=1e-6,
                                 rope_parameters=dict(rope_type="yarn", rope_theta=100.0, factor=4.0,
                                                      original_max_position_embeddings=64))),
    # LongRoPE (Phi-3.5/Phi-4-mini): per-pair short and long factors (float32 values), half of each
    # head rotated, 16 original positions. transformers picks the long factors for sequences longer
    # than 16 (here the 24-token one), llama.cpp for contexts longer than 16: the test runs each
    # sequence in a context of its own length, where the two agree. 512 / 16 positions make the
    # attention factor sqrt(1 + ln 32 / ln 16) = 1.5, which the converter's float32 holds exactly.
    "phi3_longrope": ("phi3", dict(hidden_size=64, partial_rotary_factor=0.5, original_max_position_embeddings=16,
                                   max_position_embeddings=512, sliding_window=None, tie_word_embeddings=False,
                                   rms_norm_eps=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                                   rope_parameters=dict(rope_type="longrope", rope_theta=100.0, partial_rotary_factor=0.5,
                                                        short_factor=[1.0, 1.25, 1.5, 2.0],
                                                        long_factor=[1.0, 3.0, 6.0, 12.0]))),
    # Parallel attention and MLP residual, fused per-head QKV with biases, GELU (erf), half rotary.
    "gptneox": ("gpt_neox", dict(rotary_pct=0.5, use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5,
                                 tie_word_embeddings=False, attention_bias=True, num_key_value_heads=None)),
    # LayerNorm with bias, biases everywhere, plain GELU (tanh) MLP, GQA.
    "starcoder2": ("starcoder2", dict(use_bias=True, norm_epsilon=1e-5, hidden_act="gelu_pytorch_tanh",
                                      sliding_window=None, tie_word_embeddings=True, rope_theta=1e5,
                                      residual_dropout=0.0, embedding_dropout=0.0)),
    # gpt-oss: attention sinks (randomize: N(0, 2) logits), layers sliding (window 6 of the 24-token
    # sequence), full, sliding (transformers' default layer_types; llama.cpp's pattern of 2), QKV,
    # output, router and expert biases, 4 experts of which 2 a token (softmax over the chosen
    # logits), the clamped SwiGLU (alpha 1.702, limit 7: randomize makes the gate/up values reach
    # past 7), YaRN as gpt-oss has it (factor 32, beta_fast 32, beta_slow 1, truncate false) over
    # 64 original positions with base 100 and heads of 16, so pairs 1-4 lie on the ramp, whose
    # upper end (4.03) truncation would round to 5. The converter writes the experts as F32 (they
    # are not MXFP4 blocks in the checkpoint).
    "gpt_oss": ("gpt_oss", dict(num_hidden_layers=3, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                intermediate_size=32, sliding_window=6, max_position_embeddings=256,
                                rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True,
                                rope_parameters=dict(rope_type="yarn", rope_theta=100.0, factor=32.0, beta_fast=32.0,
                                                     beta_slow=1.0, truncate=False,
                                                     original_max_position_embeddings=64))),
}


def make_config(model_type, overrides):
    kwargs = dict(COMMON)
    kwargs.update(overrides)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("final_logit_softcapping",
                                                                       "attn_logit_softcapping", "sliding_window")}
    config = AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = "eager"
    return config


def is_gemma(model):
    return "gemma" in type(model).__name__.lower()


def randomize(model, generator):
    """Weights far from transformers' init, each a float32 value (the GGUF holds it exactly)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith("bias"):
                v = 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)
            elif name.endswith("sinks"):  # gpt-oss's attention sinks: logits as large as the scores
                v = 2.0 * torch.randn(shape, generator=generator, dtype=torch.float64)
            elif p.dim() == 1:  # norm gains: multiples of 1/64 (Gemma's converter adds 1: still exact)
                k = torch.randint(-12, 13, shape, generator=generator).to(torch.float64) / 64
                v = k if is_gemma(model) else 1.0 + k
            elif "embed" in name:
                v = torch.randn(shape, generator=generator, dtype=torch.float64)
            else:  # Linear [out, in], or stacked experts [n, out, in] / [n, in, out]
                v = torch.randn(shape, generator=generator, dtype=torch.float64) / math.sqrt(min(shape[-1], shape[-2]))
                if name.endswith("experts.gate_up_proj"):  # gpt-oss: past its activation's clamps at 7
                    v = 8.0 * v
            p.copy_(v.to(torch.float32).to(torch.float64))


@contextlib.contextmanager
def float64_everywhere():
    """Every float32 request inside answered in float64 (see the module's docstring): casts
    (Tensor.to, .float(), .type), factories given a dtype (torch.arange, zeros, ones, full, empty,
    tensor: rotary tables are made with torch.arange(..., dtype=torch.float)) and softmax's dtype."""
    low = (torch.float32, torch.float16, torch.bfloat16)

    def widen(kwargs):
        if kwargs.get("dtype") in low:
            kwargs["dtype"] = torch.float64
        return kwargs

    patched = []

    def patch(owner, name, make):
        original = getattr(owner, name)
        patched.append((owner, name, original))
        setattr(owner, name, make(original))

    patch(torch.Tensor, "to", lambda f: lambda self, *a, **k: f(self, *(torch.float64 if x in low else x for x in a), **widen(k)))
    patch(torch.Tensor, "float", lambda f: lambda self, *a, **k: self.to(torch.float64))
    patch(torch.Tensor, "type", lambda f: lambda self, *a, **k: f(self, *(torch.float64 if x in low else x for x in a), **widen(k)))
    patch(torch.Tensor, "softmax", lambda f: lambda self, *a, **k: f(self, *a, **widen(k)))
    for name in ("arange", "zeros", "ones", "full", "empty", "tensor", "softmax"):
        patch(torch, name, lambda f: lambda *a, **k: f(*a, **widen(k)))
    patch(torch.nn.functional, "softmax", lambda f: lambda *a, **k: f(*a, **widen(k)))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
        torch.set_default_dtype(default)


def build(model_type, overrides, generator):
    config = make_config(model_type, overrides)
    with float64_everywhere():   # buffers made at init (rotary inv_freq, embedding scales) in float64
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float64)
    model = model.eval()
    # Mixture of experts: transformers 5's default grouped product has no float64 kernel; the
    # eager backend loops over the experts in plain matmuls. from_config picks the backend, so it
    # is set afterwards on every config the experts read.
    for module in model.modules():
        if hasattr(module, "config"):
            module.config._experts_implementation = "eager"
    randomize(model, generator)
    return model, config


def convert(llama_dir, hf_dir, out_path):
    """llama.cpp's convert_hf_to_gguf.py, in this process, with set_vocab as the module docstring says."""
    sys.path.insert(0, str(llama_dir))
    sys.path.insert(1, str(llama_dir / "gguf-py"))
    import convert_hf_to_gguf as converter

    original = converter.get_model_class

    def get_model_class(*args, **kwargs):
        cls = original(*args, **kwargs)
        cls.set_vocab = lambda self: self._set_vocab_builtin("llama-spm", self.hparams["vocab_size"])
        return cls

    converter.get_model_class = get_model_class
    # This converter reads GPT-NeoX's rotary fraction as "rotary_pct", which transformers 5's
    # GPTNeoXConfig.to_dict() writes as rope_parameters["partial_rotary_factor"]: the same value
    # under the older name.
    load_hparams = converter.ModelBase.load_hparams

    def load_hparams_with_rotary_pct(*args, **kwargs):
        config = load_hparams(*args, **kwargs)
        if config.get("model_type") == "gpt_neox" and "rotary_pct" not in config:
            rope = config.get("rope_parameters") or {}
            config["rotary_pct"] = config.get("partial_rotary_factor", rope.get("partial_rotary_factor"))
        return config

    converter.ModelBase.load_hparams = staticmethod(load_hparams_with_rotary_pct)
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(hf_dir), "--outtype", "f32", "--outfile", str(out_path)]
    try:
        converter.main()
    finally:
        sys.argv = argv
        converter.get_model_class = original
        converter.ModelBase.load_hparams = staticmethod(load_hparams)


def write_golden(model, vocab_size, path, generator):
    with open(path, "wb") as f:
        f.write(GOLDEN_MAGIC + struct.pack("<II", GOLDEN_VERSION, len(SEQUENCE_LENGTHS)))
        for n in SEQUENCE_LENGTHS:
            tokens = torch.randint(0, vocab_size, (1, n), generator=generator)
            with torch.no_grad(), float64_everywhere():
                logits = model(tokens, use_cache=False).logits[0]
            assert logits.dtype == torch.float64, logits.dtype
            logits = logits.numpy()
            f.write(struct.pack("<I", n) + tokens[0].numpy().astype("<i4").tobytes())
            f.write(struct.pack("<I", logits.shape[1]) + logits.astype("<f8").tobytes())
            f.write(struct.pack("<II", 0, 0))
            print(f"  {n:2d} tokens: max|logit| = {np.abs(logits).max():.3f}")


def make_case(name, llama_dir, out_root):
    model_type, overrides = CASES[name]
    generator = torch.Generator().manual_seed(SEED)
    model, config = build(model_type, overrides, generator)
    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    hf_dir = out_root / f".hf_{name}"
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    copy.deepcopy(model).to(torch.float32).save_pretrained(hf_dir, safe_serialization=True)
    # Gemma's converter counts the vocabulary in tokenizer.json to drop padding rows.
    (hf_dir / "tokenizer.json").write_text(json.dumps(
        {"model": {"vocab": {f"<t{i}>": i for i in range(config.vocab_size)}}, "added_tokens": []}))
    convert(llama_dir, hf_dir, out / "model.gguf")
    write_golden(model, config.vocab_size, out / "golden.bin", generator)
    (out / "config.json").write_text((hf_dir / "config.json").read_text())
    shutil.rmtree(hf_dir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama", type=Path, required=True, help="llama.cpp source tree (convert_hf_to_gguf.py)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/models/golden_arch")
    parser.add_argument("cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    failed = []
    for name in args.cases:
        print(name)
        try:
            make_case(name, args.llama.resolve(), args.out)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{total / 1e6:.2f} MB in {args.out}; failed: {failed or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
