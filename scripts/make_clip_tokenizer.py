#!/usr/bin/env python3
"""Build a CLIP tokenizer folder (the diffusers/optimum `tokenizer/` layout) from CLIP's BPE merges.

    python3 scripts/make_clip_tokenizer.py OUT_DIR [--source FILE] [--pad-token '!'] [--max-length 77]

SOURCE is one of: the open_clip_torch wheel (read with zipfile, never installed), the
`bpe_simple_vocab_16e6.txt.gz` it ships, or a gzipped merges file like tests/fixtures/sd/clip_merges.txt.gz
(the header line plus only the 48894 merges CLIP uses, ~0.3 MB: what the tests build their folder from, so CI
needs neither the wheel nor the network). Default: /work/dl/open_clip_torch-3.3.0-py3-none-any.whl, else the
fixture.

The vocabulary is defined exactly as CLIP (openai/CLIP `simple_tokenizer.py`, open_clip `SimpleTokenizer`) and
HF's `openai/clip-vit-large-patch14` define it: 256 byte characters (GPT-2's bytes_to_unicode order), the same
256 with `</w>`, the concatenation of each of the first 48894 merges in rank order, then `<|startoftext|>`
(49406) and `<|endoftext|>` (49407): 49408 ids. merges.txt is `#version: 0.2` plus those merges.
tokenizer_config.json/special_tokens_map.json are SD 1.5's (pad = `<|endoftext|>`); `--pad-token '!'` writes
SD 2.x's (pad `!`, id 0).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import zipfile

# Same count as CLIP: merges[1 : 49152 - 256 - 2 + 1] of the file (line 0 is a header).
N_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
DEFAULT_WHEEL = "/work/dl/open_clip_torch-3.3.0-py3-none-any.whl"
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "sd",
                       "clip_merges.txt.gz")
WHEEL_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"

# the tokenizer's own byte table (pure Python; importing it needs no compiled extension)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from onnxstream_py.sd.tokenizer import bytes_to_unicode  # noqa: E402


def read_merges(source: str) -> list[str]:
    """The first N_MERGES merge lines ("a b") of a wheel, a bpe .txt.gz or a plain/gzipped merges file."""
    if source.endswith(".whl"):
        with zipfile.ZipFile(source) as z:
            raw = z.read(WHEEL_MEMBER)
    else:
        with open(source, "rb") as f:
            raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    if len(merges) != N_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"{source}: expected a header line and {N_MERGES} merges 'a b', "
                         f"got {len(merges)} lines")
    return merges


def build_vocab(merges: list[str]) -> dict[str, int]:
    units = list(bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    table = {tok: i for i, tok in enumerate(vocab)}
    if len(table) != len(vocab):
        raise ValueError("duplicate tokens in the CLIP vocabulary: wrong merges file?")
    return table


def _added(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
            "rstrip": False, "single_word": False}


def write_folder(out_dir: str, merges: list[str], pad_token: str = EOS, max_length: int = 77) -> None:
    os.makedirs(out_dir, exist_ok=True)
    vocab = build_vocab(merges)
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "add_prefix_space": False, "bos_token": _added(BOS), "clean_up_tokenization_spaces": True,
        "do_lower_case": True, "eos_token": _added(EOS), "errors": "replace",
        "model_max_length": max_length, "pad_token": pad_token if pad_token == EOS else _added(pad_token),
        "tokenizer_class": "CLIPTokenizer", "unk_token": _added(EOS),
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)


def write_merges_fixture(path: str, merges: list[str]) -> None:
    """The gzipped subset committed for tests (mtime 0: byte-identical on every run)."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--source", default=None, help="open_clip wheel, bpe_simple_vocab_16e6.txt.gz or merges .gz")
    ap.add_argument("--pad-token", default=EOS, help="SD 1.5: <|endoftext|> (default); SD 2.x: '!'")
    ap.add_argument("--max-length", type=int, default=77)
    ap.add_argument("--write-merges-fixture", metavar="PATH", help="also write the gzipped merges subset")
    a = ap.parse_args(argv)
    source = a.source or (DEFAULT_WHEEL if os.path.exists(DEFAULT_WHEEL) else FIXTURE)
    if not os.path.exists(source):
        print(f"make_clip_tokenizer: {source} not found; `pip download --no-deps open_clip_torch==3.3.0` "
              "and pass the wheel with --source", file=sys.stderr)
        return 2
    merges = read_merges(source)
    write_folder(a.out_dir, merges, a.pad_token, a.max_length)
    if a.write_merges_fixture:
        write_merges_fixture(a.write_merges_fixture, merges)
    print(f"wrote {a.out_dir} ({len(merges) + 514} tokens) from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
