#!/usr/bin/env python3
"""Golden files for the float64 reference (tests/models/gpt_model_test.cpp).

For each case: a small random GPT-2 or Llama built with transformers in float64, saved as
  tests/models/golden/<case>/config.json + model.safetensors   (as transformers saves it)
  tests/models/golden/<case>/model.gguf                          (converted here, as llama.cpp would)
  tests/models/golden/<case>/golden.bin                          (transformers' float64 outputs)

golden.bin, little endian:
  magic "TWGL" | u32 version (1) | u32 n_sequences
  per sequence: u32 n_tokens | i32 tokens[n_tokens]
                u32 n_vocab  | f64 logits[n_tokens][n_vocab]             (every position)
                u32 n_hidden | u32 n_embd | f64 hidden[n_hidden][n_tokens][n_embd]
  hidden are transformers' output_hidden_states: [0] the embeddings, [i] the output of block
  i-1 for 1 <= i < n_layer, [n_layer] the final norm's output (the last block's output is not
  among them: transformers applies the norm first).

transformers keeps some Llama steps in float32 even in a float64 model (RMSNorm, the rotary
tables, eager softmax), which would make the reference look wrong by ~1e-6. They are replaced
here by float64 versions of the same formulas, and attention runs through sdpa (float64 on CPU).

Usage: python3 tools/make_golden.py [--out tests/models/golden]
Needs torch, transformers, safetensors, gguf, numpy.
"""
import argparse
import json
import math
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

SEED = 20240611
GOLDEN_MAGIC = b"TWGL"
GOLDEN_VERSION = 1

# Small enough to commit (all cases together well under 5 MB), large enough to have several
# heads, GQA groups and RoPE frequencies. Each case covers something the others do not.
CASES = {
    # GPT-2: learned positions, LayerNorm with bias, fused QKV with bias, tied output.
    "gpt2": GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                       layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0),
    # Llama with grouped-query attention (4 query heads over 2 KV heads) and a tied output.
    "llama_gqa_tied": LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                                  tie_word_embeddings=True),
    # Llama with an untied output, attention biases, head_dim != hidden/heads, another RoPE base
    # and linear RoPE scaling.
    "llama_linear_rope": LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=48,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                     head_dim=16, attention_bias=True, max_position_embeddings=64,
                                     rms_norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=False,
                                     rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # Llama 3.1 frequency scaling, with an original context small enough that the 4 frequencies
    # of an 8-wide head fall in all three bands (kept, interpolated, stretched); one KV head.
    "llama3_rope": LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                               max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                               tie_word_embeddings=False,
                               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
}

SEQUENCE_LENGTHS = (1, 4, 24)


# --- float64 replacements for transformers' float32 steps -------------------------------------

def rms_norm_forward_f64(self, hidden_states):
    # LlamaRMSNorm.forward without the float32 round trip: x / sqrt(mean(x^2) + eps) * g.
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def rope_parameters(config):
    """(rope_theta, scaling dict) across transformers' old (rope_scaling) and new (rope_parameters) configs."""
    params = getattr(config, "rope_parameters", None)
    if params:
        return params["rope_theta"], params
    return config.rope_theta, (config.rope_scaling or {"rope_type": "default"})


def inv_freq_f64(config):
    """transformers' rope init functions (default, linear, llama3), line for line, in float64."""
    base, scaling = rope_parameters(config)
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif rope_type == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_context_len = scaling["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
        wavelen = 2 * math.pi / inv_freq
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth_factor = (old_context_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(is_medium, smoothed, inv_freq_llama)
    else:
        assert rope_type == "default", rope_type
    return inv_freq


def rotary_forward_f64(self, x, position_ids):
    # LlamaRotaryEmbedding.forward with the float64 inv_freq and no float32 cast.
    freqs = position_ids[..., None].to(torch.float64) * self.inv_freq_f64
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def use_float64_llama_steps():
    modeling_llama.LlamaRMSNorm.forward = rms_norm_forward_f64
    modeling_llama.LlamaRotaryEmbedding.forward = rotary_forward_f64


# --- models ------------------------------------------------------------------------------------

def randomize(model):
    """Weights far from transformers' init (std 0.02, unit norms, zero biases) so that every
    parameter, bias and norm gain shapes the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif p.dim() == 1:  # norm gains
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "wte" in name or "wpe" in name or "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            else:  # a Linear [out, in] or a GPT-2 Conv1D [in, out]
                fan_in = p.shape[0] if isinstance(model, GPT2LMHeadModel) else p.shape[1]
                p.copy_(torch.randn_like(p) / math.sqrt(fan_in))


def build(config):
    config._attn_implementation = "sdpa"
    model = (GPT2LMHeadModel if isinstance(config, GPT2Config) else LlamaForCausalLM)(config)
    model = model.to(torch.float64).eval()
    randomize(model)
    if isinstance(model, LlamaForCausalLM):
        rotary = model.model.rotary_emb
        rotary.inv_freq_f64 = inv_freq_f64(config)
        # The float64 formulas must be transformers' own: its float32 inv_freq agrees to float32.
        assert torch.allclose(rotary.inv_freq.to(torch.float64), rotary.inv_freq_f64, rtol=1e-6, atol=0)
    return model


# --- GGUF conversion (what llama.cpp's convert_hf_to_gguf.py does for these two architectures) --

def permute_for_normal_rope(w, n_head, n_head_kv):
    # llama.cpp LlamaModel.permute: HF's q/k rows are in the NeoX layout (pairs i, i + D/2);
    # GGUF Llama files use the Normal layout (pairs 2i, 2i + 1).
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(config):
    # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors (rope_freqs.weight), in float64.
    base, s = rope_parameters(config)
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low_freq_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_freq_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(factors, dtype=np.float64)


def write_gguf_llama(model, config, path):
    w = gguf.GGUFWriter(str(path), "llama")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    base, scaling = rope_parameters(config)
    w.add_rope_freq_base(base)
    w.add_vocab_size(config.vocab_size)
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])
    elif rope_type == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(config))

    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    h, hkv = config.num_attention_heads, config.num_key_value_heads
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        for kind in ("weight", "bias"):
            if p + f"self_attn.q_proj.{kind}" not in sd:
                continue
            w.add_tensor(b + f"attn_q.{kind}", permute_for_normal_rope(sd[p + f"self_attn.q_proj.{kind}"], h, h))
            w.add_tensor(b + f"attn_k.{kind}", permute_for_normal_rope(sd[p + f"self_attn.k_proj.{kind}"], h, hkv))
            w.add_tensor(b + f"attn_v.{kind}", sd[p + f"self_attn.v_proj.{kind}"])
            w.add_tensor(b + f"attn_output.{kind}", sd[p + f"self_attn.o_proj.{kind}"])
        w.add_tensor(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not config.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    finish(w)


def write_gguf_gpt2(model, config, path):
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_context_length(config.n_positions)
    w.add_embedding_length(config.n_embd)
    w.add_block_count(config.n_layer)
    w.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
    w.add_head_count(config.n_head)
    w.add_layer_norm_eps(config.layer_norm_epsilon)
    w.add_vocab_size(config.vocab_size)

    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    t = "transformer."
    w.add_tensor("token_embd.weight", sd[t + "wte.weight"])
    w.add_tensor("position_embd.weight", sd[t + "wpe.weight"])
    for i in range(config.n_layer):
        p, b = f"{t}h.{i}.", f"blk.{i}."
        # HF GPT-2's Conv1D weights are [in, out]; GGUF (like a Linear) wants [out, in].
        w.add_tensor(b + "attn_norm.weight", sd[p + "ln_1.weight"])
        w.add_tensor(b + "attn_norm.bias", sd[p + "ln_1.bias"])
        w.add_tensor(b + "attn_qkv.weight", np.ascontiguousarray(sd[p + "attn.c_attn.weight"].T))
        w.add_tensor(b + "attn_qkv.bias", sd[p + "attn.c_attn.bias"])
        w.add_tensor(b + "attn_output.weight", np.ascontiguousarray(sd[p + "attn.c_proj.weight"].T))
        w.add_tensor(b + "attn_output.bias", sd[p + "attn.c_proj.bias"])
        w.add_tensor(b + "ffn_norm.weight", sd[p + "ln_2.weight"])
        w.add_tensor(b + "ffn_norm.bias", sd[p + "ln_2.bias"])
        w.add_tensor(b + "ffn_up.weight", np.ascontiguousarray(sd[p + "mlp.c_fc.weight"].T))
        w.add_tensor(b + "ffn_up.bias", sd[p + "mlp.c_fc.bias"])
        w.add_tensor(b + "ffn_down.weight", np.ascontiguousarray(sd[p + "mlp.c_proj.weight"].T))
        w.add_tensor(b + "ffn_down.bias", sd[p + "mlp.c_proj.bias"])
    w.add_tensor("output_norm.weight", sd[t + "ln_f.weight"])
    w.add_tensor("output_norm.bias", sd[t + "ln_f.bias"])
    finish(w)


def finish(writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- golden outputs ------------------------------------------------------------------------------

def write_golden(model, config, path, generator):
    with open(path, "wb") as f:
        f.write(GOLDEN_MAGIC + struct.pack("<II", GOLDEN_VERSION, len(SEQUENCE_LENGTHS)))
        for n in SEQUENCE_LENGTHS:
            tokens = torch.randint(0, config.vocab_size, (1, n), generator=generator)
            with torch.no_grad():
                out = model(tokens, output_hidden_states=True, use_cache=False)
            logits = out.logits[0].numpy()
            hidden = torch.stack([h[0] for h in out.hidden_states]).numpy()
            assert logits.dtype == np.float64 and hidden.dtype == np.float64
            f.write(struct.pack("<I", n) + tokens[0].numpy().astype("<i4").tobytes())
            f.write(struct.pack("<I", logits.shape[1]) + logits.astype("<f8").tobytes())
            f.write(struct.pack("<II", hidden.shape[0], hidden.shape[2]) + hidden.astype("<f8").tobytes())
            print(f"  {n:2d} tokens: max|logit| = {np.abs(logits).max():.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/models/golden")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, gguf-py {gguf.__name__}")
    use_float64_llama_steps()
    for name, config in CASES.items():
        torch.manual_seed(SEED)
        out = args.out / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        print(name)
        model = build(config)
        model.save_pretrained(out, safe_serialization=True)
        (out / "generation_config.json").unlink(missing_ok=True)
        (write_gguf_gpt2 if isinstance(config, GPT2Config) else write_gguf_llama)(model, config, out / "model.gguf")
        write_golden(model, config, out / "golden.bin", torch.Generator().manual_seed(SEED))
        saved = json.loads((out / "config.json").read_text())
        assert saved.get("dtype", saved.get("torch_dtype")) == "float64", saved
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
