#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ (docs/reliability.md).

Small real inputs, so the fuzzers start from every branch of a valid file rather than
rediscovering the format: GGUF files with the golden models' metadata and one tiny tensor per
ggml type, the golden safetensors files with their tensors cut to at most 2 x 2, the golden
config.json files, the chat templates of tests/tokenizer/templates, and text for the tokenizers.
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


if __name__ == "__main__":
    gguf_corpus()
    safetensors_corpus()
    hf_config_corpus()
    tokenizer_corpus()
    chat_corpora()
