#!/usr/bin/env python3
"""Benchmark shapes of models whose weights cannot travel to the GPU machine (Qwen3-1.7B,
Qwen3-30B-A3B, Llama-3.2-1B, Llama-3.1-8B, SmolLM2-135M): their tensor list with the types llama-quantize gives for Q4_K_M, and a
metadata-only GGUF (the hyper-parameters of the model's config.json and a vocabulary GGUF's
tokenizer). `twinfer_make_random_model like TSV METADATA.gguf OUT.gguf` then writes random
weights of that shape, which llama.cpp and twinfer both load.

  tools/make_shape.py SHAPE VOCAB.gguf OUT_METADATA.gguf [OUT.tsv]
    SHAPE: qwen3-1.7b | qwen3-30b-a3b | llama-3.2-1b | llama-3.1-8b | smollm2-135m
    VOCAB.gguf: tests/data/third_party/tokenizers/ggml-vocab-qwen2.gguf (Qwen's 151,936 tokens),
      ggml-vocab-llama-bpe.gguf for the Llama 3 shapes (Llama 3's 128,256), SmolLM2's own
      vocabulary (its 49,152 tokens) for smollm2-135m

The Q4_K_M choices follow llama.cpp's llama_tensor_get_type (src/llama-quant.cpp, llama-cpp-python
0.3.36): the output matrix (or the tied embedding) Q6_K; attn_v and ffn_down (experts too) Q6_K
on the first and last eighth of the layers and every third layer between, Q4_K elsewhere;
every other matrix Q4_K; norms and the router (ffn_gate_inp) F32. A matrix whose rows are not a
whole number of 256-weight super-blocks falls back as tensor_type_fallback does: Q4_K to Q5_0,
Q6_K to Q8_0 (SmolLM2's 576-wide rows).
"""
import sys

import gguf

# Hugging Face config.json values of the published models.
SHAPES = {
    "qwen3-1.7b": dict(arch="qwen3", n_embd=2048, n_layer=28, n_head=16, n_head_kv=8, head_dim=128,
                       n_ff=6144, n_ctx=40960, tied=True, qk_norm=True, rope_base=1e6),
    "qwen3-30b-a3b": dict(arch="qwen3moe", n_embd=2048, n_layer=48, n_head=32, n_head_kv=4, head_dim=128,
                          n_ff=6144, n_ctx=40960, tied=False, qk_norm=True, rope_base=1e6, n_expert=128,
                          n_expert_used=8, n_ff_exp=768),
    "llama-3.2-1b": dict(arch="llama", n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, head_dim=64,
                         n_ff=8192, n_ctx=131072, tied=True, qk_norm=False, rope_base=5e5),
    "llama-3.1-8b": dict(arch="llama", n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, head_dim=128,
                         n_ff=14336, n_ctx=131072, tied=False, qk_norm=False, rope_base=5e5),
    "smollm2-135m": dict(arch="llama", n_embd=576, n_layer=30, n_head=9, n_head_kv=3, head_dim=64,
                         n_ff=1536, n_ctx=8192, tied=True, qk_norm=False, rope_base=1e5),
}


def use_more_bits(i_layer, n_layer):
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def tensors(s, n_vocab):
    """(name, type, ggml dims) in the order convert_hf_to_gguf.py writes them."""
    e, hd = s["n_embd"], s["head_dim"]
    out = [("token_embd.weight", "Q6_K" if s["tied"] else "Q4_K", (e, n_vocab))]
    for i in range(s["n_layer"]):
        more = "Q6_K" if use_more_bits(i, s["n_layer"]) else "Q4_K"
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", "F32", (e,)),
                (b + "attn_q.weight", "Q4_K", (e, s["n_head"] * hd)),
                (b + "attn_k.weight", "Q4_K", (e, s["n_head_kv"] * hd)),
                (b + "attn_v.weight", more, (e, s["n_head_kv"] * hd)),
                (b + "attn_output.weight", "Q4_K", (s["n_head"] * hd, e))]
        if s["qk_norm"]:
            out += [(b + "attn_q_norm.weight", "F32", (hd,)),
                    (b + "attn_k_norm.weight", "F32", (hd,))]
        out.append((b + "ffn_norm.weight", "F32", (e,)))
        if "n_expert" in s:
            x, f = s["n_expert"], s["n_ff_exp"]
            out += [(b + "ffn_gate_inp.weight", "F32", (e, x)),
                    (b + "ffn_gate_exps.weight", "Q4_K", (e, f, x)),
                    (b + "ffn_up_exps.weight", "Q4_K", (e, f, x)),
                    (b + "ffn_down_exps.weight", more, (f, e, x))]
        else:
            f = s["n_ff"]
            out += [(b + "ffn_gate.weight", "Q4_K", (e, f)),
                    (b + "ffn_up.weight", "Q4_K", (e, f)),
                    (b + "ffn_down.weight", more, (f, e))]
    out.append(("output_norm.weight", "F32", (e,)))
    if not s["tied"]:
        out.append(("output.weight", "Q6_K", (e, n_vocab)))
    fallback = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
    return [(name, fallback[kind] if kind in fallback and dims[0] % 256 else kind, dims) for name, kind, dims in out]


def write_metadata(s, vocab_path, out_path):
    vocab = gguf.GGUFReader(vocab_path)
    arch = s["arch"]
    w = gguf.GGUFWriter(out_path, arch)
    w.add_name(f"random-weight {arch} shape")
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(s["n_embd"])
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_rope_freq_base(s["rope_base"])
    w.add_rope_dimension_count(s["head_dim"])
    w.add_layer_norm_rms_eps(1e-5 if arch == "llama" else 1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    if "n_expert" in s:
        w.add_expert_count(s["n_expert"])
        w.add_expert_used_count(s["n_expert_used"])
        w.add_expert_feed_forward_length(s["n_ff_exp"])
    n_vocab = 0
    for key, field in vocab.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = field.contents()
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, kind, sub_type=field.types[-1])
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(value)
        else:
            w.add_key_value(key, value, kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return n_vocab


def main():
    if len(sys.argv) not in (4, 5) or sys.argv[1] not in SHAPES:
        sys.exit(__doc__)
    shape = SHAPES[sys.argv[1]]
    n_vocab = write_metadata(shape, sys.argv[2], sys.argv[3])
    if len(sys.argv) == 5:
        with open(sys.argv[4], "w") as f:
            f.write(f"# The tensors of a {sys.argv[1]} Q4_K_M file as llama-quantize types them (tools/make_shape.py):\n")
            f.write("# name, ggml type, dims in ggml order. tools/make_random_model.cpp `like` writes random weights of these.\n")
            for name, kind, dims in tensors(shape, n_vocab):
                f.write(f"{name}\t{kind}\t{','.join(map(str, dims))}\n")


if __name__ == "__main__":
    main()
