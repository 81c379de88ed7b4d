#!/usr/bin/env python3
"""Benchmark shapes of models whose weights cannot travel to the GPU machine (Qwen3-1.7B,
Qwen3-30B-A3B, Llama-3.2-1B, Llama-3.1-8B, SmolLM2-135M, gpt-oss-20b): their tensor list with the
types llama-quantize gives for Q4_K_M (gpt-oss-20b: the types of ggml-org's MXFP4 file), and a
metadata-only GGUF (the hyper-parameters of the model's config.json and a vocabulary GGUF's
tokenizer). `twinfer_make_random_model like TSV METADATA.gguf OUT.gguf` then writes random
weights of that shape, which llama.cpp and twinfer both load.

  tools/make_shape.py SHAPE VOCAB.gguf OUT_METADATA.gguf [OUT.tsv]
  tools/make_shape.py metadata MODEL.gguf OUT_METADATA.gguf
    every key of a real file without its tensors (SmolLM2's for .device/smollm2-vocab.gguf, the
    Gemma 3 file's for bench/shapes/gemma-3-270m-it-Q4_K_M.tsv), small enough to travel
    SHAPE: qwen3-1.7b | qwen3-30b-a3b | llama-3.2-1b | llama-3.1-8b | smollm2-135m | gpt-oss-20b
    VOCAB.gguf: tests/data/third_party/tokenizers/ggml-vocab-qwen2.gguf (Qwen's 151,936 tokens),
      ggml-vocab-llama-bpe.gguf for the Llama 3 shapes (Llama 3's 128,256), SmolLM2's own
      vocabulary (its 49,152 tokens) for smollm2-135m, ggml-vocab-gpt-2.gguf for gpt-oss-20b (below)

The Q4_K_M choices follow llama.cpp's llama_tensor_get_type (src/llama-quant.cpp, llama-cpp-python
0.3.36): the output matrix (or the tied embedding) Q6_K; attn_v and ffn_down (experts too) Q6_K
on the first and last eighth of the layers and every third layer between, Q4_K elsewhere;
every other matrix Q4_K; norms and the router (ffn_gate_inp) F32. A matrix whose rows are not a
whole number of 256-weight super-blocks falls back as tensor_type_fallback does: Q4_K to Q5_0,
Q6_K to Q8_0 (SmolLM2's 576-wide rows).

gpt-oss-20b (openai/gpt-oss-20b's config.json: 24 layers of 2880, 64 heads of 64 over 8 KV heads,
32 experts of 2880, 4 a token, sliding window 128 on the even layers, YaRN factor 32 over 4096
positions, rope theta 150,000): the keys and types of ggml-org/gpt-oss-20b-GGUF's
gpt-oss-20b-mxfp4.gguf as llama.cpp's loader prints them in users' logs of that file (one is in
github.com/ggml-org/llama.cpp/pull/17609): 35 keys, file type 38 (MXFP4_MOE), 459 tensors, of
which 289 F32, 98 Q8_0 and 72 MXFP4, as this list has them: the experts' matrices MXFP4;
attention, embedding and output Q8_0; norms, every bias, the sinks and the router F32. No layer
pattern key: twinfer's gpt-oss description slides layers 0, 2, 4, ... The vocabulary differs: no
o200k (201,088 tokens) vocabulary GGUF is in the repository, so n_vocab is VOCAB's (GPT-2's
50,257). The output product, which every decode step reads whole, shrinks with it, from 615 MB
of Q8_0 to 154 MB: a decode step of one token reads about 2.10 GB here against 2.56 GB for the
real model (attention 0.68 GB, four experts a layer 1.27 GB), so decode here runs up to ~20%
faster than the real file would. A prompt computes the logits of its last row only, so prompt
speed barely changes.
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
    "gpt-oss-20b": dict(arch="gpt-oss", n_embd=2880, n_layer=24, n_head=64, n_head_kv=8, head_dim=64,
                        n_ff=2880, n_ctx=131072, tied=False, qk_norm=False, rope_base=1.5e5, n_expert=32,
                        n_expert_used=4, n_ff_exp=2880, sliding_window=128, yarn_factor=32.0, yarn_original_ctx=4096,
                        rms_eps=1e-5, label="MXFP4"),
}


def use_more_bits(i_layer, n_layer):
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def gpt_oss_tensors(s, n_vocab):
    """(name, type, ggml dims) of ggml-org's gpt-oss MXFP4 file (module docstring)."""
    e, hd, x, f = s["n_embd"], s["head_dim"], s["n_expert"], s["n_ff_exp"]
    qd, kvd = s["n_head"] * hd, s["n_head_kv"] * hd
    out = [("token_embd.weight", "Q8_0", (e, n_vocab))]
    for i in range(s["n_layer"]):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", "F32", (e,)),
                (b + "attn_q.weight", "Q8_0", (e, qd)), (b + "attn_q.bias", "F32", (qd,)),
                (b + "attn_k.weight", "Q8_0", (e, kvd)), (b + "attn_k.bias", "F32", (kvd,)),
                (b + "attn_v.weight", "Q8_0", (e, kvd)), (b + "attn_v.bias", "F32", (kvd,)),
                (b + "attn_output.weight", "Q8_0", (qd, e)), (b + "attn_output.bias", "F32", (e,)),
                (b + "attn_sinks.weight", "F32", (s["n_head"],)),
                (b + "post_attention_norm.weight", "F32", (e,)),
                (b + "ffn_gate_inp.weight", "F32", (e, x)), (b + "ffn_gate_inp.bias", "F32", (x,)),
                (b + "ffn_gate_exps.weight", "MXFP4", (e, f, x)), (b + "ffn_gate_exps.bias", "F32", (f, x)),
                (b + "ffn_up_exps.weight", "MXFP4", (e, f, x)), (b + "ffn_up_exps.bias", "F32", (f, x)),
                (b + "ffn_down_exps.weight", "MXFP4", (f, e, x)), (b + "ffn_down_exps.bias", "F32", (e, x))]
    return out + [("output_norm.weight", "F32", (e,)), ("output.weight", "Q8_0", (e, n_vocab))]


def tensors(s, n_vocab):
    """(name, type, ggml dims) in the order convert_hf_to_gguf.py writes them."""
    if s["arch"] == "gpt-oss":
        return gpt_oss_tensors(s, n_vocab)
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
    if arch != "gpt-oss":   # ggml-org's gpt-oss file has none (n_rot = head_dim)
        w.add_rope_dimension_count(s["head_dim"])
    w.add_layer_norm_rms_eps(s.get("rms_eps", 1e-5 if arch == "llama" else 1e-6))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE if s.get("label") == "MXFP4" else gguf.LlamaFileType.MOSTLY_Q4_K_M)
    if "sliding_window" in s:
        w.add_sliding_window(s["sliding_window"])
    if "yarn_factor" in s:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(s["yarn_factor"])
        w.add_rope_scaling_orig_ctx_len(s["yarn_original_ctx"])
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


def copy_metadata(model_path, out_path):
    model = gguf.GGUFReader(model_path)
    w = gguf.GGUFWriter(out_path, model.fields["general.architecture"].contents())
    for key, field in model.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, field.contents(), kind, sub_type=field.types[-1])
        else:
            w.add_key_value(key, field.contents(), kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "metadata":
        return copy_metadata(sys.argv[2], sys.argv[3])
    if len(sys.argv) not in (4, 5) or sys.argv[1] not in SHAPES:
        sys.exit(__doc__)
    shape = SHAPES[sys.argv[1]]
    n_vocab = write_metadata(shape, sys.argv[2], sys.argv[3])
    if len(sys.argv) == 5:
        with open(sys.argv[4], "w") as f:
            if shape.get("label") == "MXFP4":
                f.write(f"# The tensors of ggml-org's {sys.argv[1]}-mxfp4.gguf with their types there (tools/make_shape.py), "
                        f"n_vocab {n_vocab} (the real file: 201088):\n")
            else:
                f.write(f"# The tensors of a {sys.argv[1]} Q4_K_M file as llama-quantize types them (tools/make_shape.py):\n")
            f.write("# name, ggml type, dims in ggml order. tools/make_random_model.cpp `like` writes random weights of these.\n")
            for name, kind, dims in tensors(shape, n_vocab):
                f.write(f"{name}\t{kind}\t{','.join(map(str, dims))}\n")


if __name__ == "__main__":
    main()
