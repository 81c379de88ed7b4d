#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ (docs/reliability.md).

Small real inputs, so the fuzzers start from every branch of a valid file rather than
rediscovering the format: GGUF files with the golden models' metadata and one tiny tensor per
ggml type, the golden safetensors files with their tensors cut to at most 2 x 2, the golden
config.json files, the chat templates of tests/tokenizer/templates, text for the tokenizers, and
request bodies for the server.
Run from anywhere; rewrites the corpora deterministically (fixed random seed).
"""
import json
import random
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests/models/golden"
TEMPLATES = REPO / "tests/tokenizer/templates"
CORPUS = REPO / "tests/fuzz/corpus"
rng = random.Random(0)

# Every ggml type twinfer dequantizes, as (type, elements per block, bytes per block): one block each.
QUANT_TYPES = [(q, *gguf.GGML_QUANT_SIZES[q]) for q in (
    gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q5_0,
    gguf.GGMLQuantizationType.Q5_1, gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q2_K,
    gguf.GGMLQuantizationType.Q3_K, gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q5_K,
    gguf.GGMLQuantizationType.Q6_K, gguf.GGMLQuantizationType.BF16)]


def fresh(target):
    d = CORPUS / target
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def copy_metadata(reader, writer):
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_array(field.name, value)
        else:
            writer.add_key_value(field.name, value, vtype)


def write_gguf(path, arch, fill):
    writer = gguf.GGUFWriter(path, arch)
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_corpus():
    d = fresh("gguf")
    for model in ("gpt2", "llama3_rope"):
        reader = gguf.GGUFReader(GOLDEN / model / "model.gguf")
        arch = str(reader.fields["general.architecture"].contents())

        def fill(w, reader=reader):
            copy_metadata(reader, w)
            w.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
            w.add_tensor("output_norm.weight", np.ones(4, dtype=np.float16))
        write_gguf(d / f"{model}.gguf", arch, fill)

    def quantized(w):
        w.add_uint32("general.alignment", 64)
        for qtype, block, size in QUANT_TYPES:
            raw = np.frombuffer(rng.randbytes(size), dtype=np.uint8)
            w.add_tensor(f"t.{qtype.name}", raw, raw_shape=(1, size), raw_dtype=qtype)  # shape in bytes
    write_gguf(d / "quant_types.gguf", "llama", quantized)

    def bpe_vocab(w):
        tokens = ["<|endoftext|>", "h", "e", "l", "o", "Ġ", "he", "ll", "hell", "hello", "Ġhello"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(tokens) - 1))
        w.add_token_merges(["h e", "l l", "he ll", "hell o", "Ġ hello"])
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
        w.add_array("k.nested", [[1, 2], ["x"]])
    write_gguf(d / "vocab_bpe.gguf", "gpt2", bpe_vocab)

    def spm_vocab(w):
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "▁h", "i", "▁hi"]
        types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
        types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * 4
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * 259 + [-1.0, -2.0, -3.0, -0.5])
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
    write_gguf(d / "vocab_spm.gguf", "llama", spm_vocab)


def safetensors_corpus():
    d = fresh("safetensors")
    for model in sorted(p.name for p in GOLDEN.iterdir()):
        blob = (GOLDEN / model / "model.safetensors").read_bytes()
        (length,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + length])
        out_header, data = {}, b""
        for name, entry in header.items():
            if name == "__metadata__":
                out_header[name] = entry
                continue
            begin = entry["data_offsets"][0]
            shape = [min(n, 2) for n in entry["shape"]]
            size = int(np.prod(shape)) * (entry["data_offsets"][1] - begin) // max(int(np.prod(entry["shape"])), 1)
            out_header[name] = {"dtype": entry["dtype"], "shape": shape,
                                "data_offsets": [len(data), len(data) + size]}
            data += blob[8 + length + begin:8 + length + begin + size]
        text = json.dumps(out_header).encode()
        (d / f"{model}.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data)

    dtypes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1, "F8_E4M3": 1}
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for dtype, size in dtypes.items():
        header[dtype.lower()] = {"dtype": dtype, "shape": [2, 1], "data_offsets": [len(data), len(data) + 2 * size]}
        data += rng.randbytes(2 * size)
    header["empty"] = {"dtype": "F32", "shape": [0, 3], "data_offsets": [len(data), len(data)]}
    text = json.dumps(header).encode()
    (d / "dtypes.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data)


def hf_config_corpus():
    d = fresh("hf_config")
    for model in sorted(p.name for p in GOLDEN.iterdir()):
        shutil.copy(GOLDEN / model / "config.json", d / f"{model}.json")


TEXTS = [
    "Hello world! How are you?",
    " leading space,  double  spaces\tand\ttabs\n\nnewlines",
    "<s><|im_start|>user\nHi<|im_end|><|endoftext|></s><start_of_turn>",
    "numbers 1234567 3.14159 and 'contractions' don't we'll",
    "Ünïcödé: 日本語のテキスト, 한국어, русский, emoji 🦙🚀, combining é",
    "code: def f(x):\n    return x ** 2  # comment",
    "\x00\x01\xff\xfe invalid utf-8 \xc3\x28 \xe2\x82",
]


def tokenizer_corpus():
    d = fresh("tokenizer")
    n_vocabularies = len(list((REPO / "tests/data/third_party/tokenizers").glob("*.gguf")))
    for vocab in range(n_vocabularies):
        flags = vocab % 4  # add_special and parse_special, each combination
        text = TEXTS[vocab % len(TEXTS)].encode("utf-8", "surrogateescape")
        (d / f"vocab{vocab:02d}").write_bytes(bytes([flags, vocab]) + text)


CONVERSATION = ["system", "You are terse.", "user", "Hi! {{ not a tag }}", "assistant", "Hello.",
                "user", "  Ünïcödé\n", "<s>", "</s>"]


def chat_corpora():
    d = fresh("chat_template")
    templates = sorted(TEMPLATES.glob("*.jinja"))
    for t in templates:
        shutil.copy(t, d / t.name)
    d = fresh("chat_messages")
    for i, t in enumerate(templates):
        (d / t.stem).write_bytes(bytes([i | 0x80]) + "\0".join(CONVERSATION).encode())


# Request bodies for server_request_fuzz: each field of both endpoints with a valid value, then
# the edges of each range (the first value past it, integral floats, 2^63 and 2^64, -0) and the
# features the server refuses. Written as text: the exact number spellings are the point.
MESSAGES = '[{"role": "user", "content": "Once upon a time"}]'
ALL_ROLES = ('[{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Tell stories."}, '
             '{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}, '
             '{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "A story, please."}]')
SAMPLING = ('"temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "presence_penalty": 0.5, '
            '"frequency_penalty": -0.5, "repeat_penalty": 1.1, "repeat_last_n": 64, "seed": 42, '
            '"logit_bias": {"0": -100, "1": 100, "511": 2.5}, "stop": ["\\n", "The end"], "ignore_eos": false')
SERVER_REQUESTS = {
    "chat_minimal": '{"messages": ' + MESSAGES + '}',
    "chat_every_field": '{"model": "stories", "messages": ' + ALL_ROLES + ', ' + SAMPLING + ', "max_tokens": 32, '
                        '"n": 2, "logprobs": true, "top_logprobs": 20, "stream": true, '
                        '"stream_options": {"include_usage": true}, "response_format": {"type": "text"}}',
    "chat_max_completion_tokens": '{"messages": ' + MESSAGES + ', "max_completion_tokens": 8, "max_tokens": 9}',
    "chat_nulls": '{"messages": ' + MESSAGES + ', "temperature": null, "stop": null, "seed": null, "n": null}',
    "chat_tools": '{"messages": ' + MESSAGES + ', "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}',
    "chat_json_schema": '{"messages": ' + MESSAGES + ', "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}',
    "chat_tool_message": '{"messages": [{"role": "tool", "content": "42", "tool_call_id": "1"}]}',
    "chat_image_part": '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}',
    "chat_roles_out_of_order": '{"messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]}',
    "completion_string": '{"prompt": "Once upon a time", "max_tokens": 16, "echo": false, "best_of": 1, "logprobs": 5}',
    "completion_every_field": '{"model": "stories", "prompt": "Once", ' + SAMPLING + ', "max_tokens": 32, "n": 4, '
                              '"best_of": 4, "logprobs": 20, "stream": true, "stream_options": {"include_usage": false}}',
    "completion_strings": '{"prompt": ["Once", "upon", "a time"], "n": 5}',
    "completion_ids": '{"prompt": [1, 2, 3, 511]}',
    "completion_id_lists": '{"prompt": [[1, 2], [3], [511, 0]]}',
    "completion_long_ids": '{"prompt": [' + ", ".join(["7"] * 300) + ']}',
    "completion_suffix": '{"prompt": "Once", "suffix": "end", "echo": true}',
    "edge_integral_floats": '{"prompt": "x", "max_tokens": 4.0, "n": 2.0, "top_k": 1e1, "seed": -0.0}',
    "edge_past_ranges": '{"prompt": "x", "temperature": 2.0000001, "top_p": 1.0000001, "top_k": 513, "n": 17, '
                        '"max_tokens": 256, "repeat_last_n": -2, "repeat_penalty": 0.00999}',
    "edge_huge_numbers": '{"prompt": "x", "seed": 18446744073709551616, "max_tokens": 1e308, "temperature": -1e-320, '
                         '"n": 9223372036854775807, "logprobs": 21}',
    "edge_seed_2_63_float": '{"prompt": "x", "seed": 9223372036854775807.0}',
    "edge_seed_limits": '{"prompt": "x", "seed": -9223372036854775808, "n": 2}',
    "edge_logit_bias_keys": '{"prompt": "x", "logit_bias": {" 1": 1, "+2": 1, "3x": 1, "-1": 1, "512": 1, "99999999999999999999": 1}}',
    "edge_stop_strings": '{"prompt": "x", "stop": ["", "' + "s" * 257 + '"]}',
    "not_an_object": '[{"messages": []}]',
    "not_json": '{"messages": [',
}


def server_request_corpus():
    d = fresh("server_request")
    for name, body in SERVER_REQUESTS.items():
        (d / name).write_text(body)


if __name__ == "__main__":
    gguf_corpus()
    safetensors_corpus()
    hf_config_corpus()
    tokenizer_corpus()
    chat_corpora()
    server_request_corpus()
