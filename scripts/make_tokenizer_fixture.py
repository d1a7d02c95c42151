#!/usr/bin/env python3
"""Write tests/fixtures/sd/tokenizer_ids.json: transformers' CLIPTokenizer ids for the tokenizer test corpus.

    python3 scripts/make_tokenizer_fixture.py [--out tests/fixtures/sd/tokenizer_ids.json]

Needs transformers (no torch) and, for the slow tokenizer's own cleanup path, NO ftfy installed (the script refuses
otherwise: with ftfy, transformers cleans text differently, see onnxstream_py/sd/tokenizer.py). The tokenizer
folders are built from tests/fixtures/sd/clip_merges.txt.gz with scripts/make_clip_tokenizer.py, SD 1.5 style (pad =
<|endoftext|>) and SD 2.x style (pad = "!"). For each text it stores the slow tokenizer's ids without special
tokens, the [77] padded ids per style, and the fast tokenizer's ids (it differs on CJK ideograph runs,
control/format characters and a few lowercase corner cases; our mode="fast" follows it). tests/test_sd_tokenizer.py
compares against this file and, when transformers is importable, live.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import make_clip_tokenizer  # noqa: E402
from sd_tokenizer_corpus import CORPUS  # noqa: E402

FIXTURE_DIR = os.path.join(ROOT, "tests", "fixtures", "sd")


def build_folders(root: str) -> dict[str, str]:
    merges = make_clip_tokenizer.read_merges(os.path.join(FIXTURE_DIR, "clip_merges.txt.gz"))
    out = {}
    for style, pad in (("sd15", make_clip_tokenizer.EOS), ("sd2", "!")):
        out[style] = os.path.join(root, style)
        make_clip_tokenizer.write_folder(out[style], merges, pad_token=pad)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(FIXTURE_DIR, "tokenizer_ids.json"))
    a = ap.parse_args(argv)
    if importlib.util.find_spec("ftfy") is not None:
        print("make_tokenizer_fixture: ftfy is installed; transformers would use it. Run without ftfy.",
              file=sys.stderr)
        return 2
    import transformers
    from transformers import CLIPTokenizer, CLIPTokenizerFast
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        folders = build_folders(tmp)
        slow = {k: CLIPTokenizer.from_pretrained(v) for k, v in folders.items()}
        fast = CLIPTokenizerFast.from_pretrained(folders["sd15"])
        cases = []
        for text in CORPUS:
            ids = slow["sd15"](text, add_special_tokens=False).input_ids
            fast_ids = fast(text, add_special_tokens=False).input_ids
            case = {"text": text, "ids": ids, "fast_ids": fast_ids,
                    "fast_padded_sd15": fast(text, padding="max_length", max_length=77, truncation=True).input_ids}
            for style, tok in slow.items():
                case[f"padded_{style}"] = tok(text, padding="max_length", max_length=77,
                                              truncation=True).input_ids
            cases.append(case)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "tokenizer": "CLIPTokenizer (slow, no ftfy)",
                   "cases": cases}, f, ensure_ascii=True, indent=0)
        f.write("\n")
    print(f"wrote {a.out}: {len(cases)} texts, fast tokenizer agrees on "
          f"{sum(c['fast_ids'] == c['ids'] for c in cases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
