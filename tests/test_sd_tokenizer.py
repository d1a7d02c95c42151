"""CLIP tokenizer, prompt weighting and long-prompt windows (onnxstream_py/sd/tokenizer.py, prompt.py).

Reference ids: transformers' slow CLIPTokenizer without ftfy (what diffusers' pipelines use), stored in
tests/fixtures/sd/tokenizer_ids.json by scripts/make_tokenizer_fixture.py and compared live when transformers is
importable. The tokenizer folders are built from the committed CLIP merges (tests/fixtures/sd/clip_merges.txt.gz).
"""
import importlib.util
import json
import os
import sys

import pytest

import onnxstream_py  # noqa: F401  (before numpy: thread settings)
import numpy as np

from onnxstream_py.sd import BREAK, CLIPTokenizer, apply_emphasis, parse_weights
from sd_tokenizer_corpus import CORPUS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "sd")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_clip_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_tok")
    merges = make_clip_tokenizer.read_merges(os.path.join(FIXTURES, "clip_merges.txt.gz"))
    out = {}
    for style, pad in (("sd15", make_clip_tokenizer.EOS), ("sd2", "!")):
        out[style] = str(root / style)
        make_clip_tokenizer.write_folder(out[style], merges, pad_token=pad)
    return out


@pytest.fixture(scope="module")
def tok(folders):
    return CLIPTokenizer(folders["sd15"])


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(FIXTURES, "tokenizer_ids.json"), encoding="utf-8") as f:
        return json.load(f)["cases"]


def test_vocabulary_is_clips(folders, tok):
    with open(os.path.join(folders["sd15"], "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab[",</w>"] == 267
    assert len(tok.bpe_ranks) == 48894
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (49406, 49407, 49407)
    assert CLIPTokenizer(folders["sd2"]).pad_id == 0


def test_fixture_covers_corpus(expected):
    assert [c["text"] for c in expected] == CORPUS, "corpus changed: rerun scripts/make_tokenizer_fixture.py"


@pytest.mark.parametrize("i", range(len(CORPUS)))
def test_ids_match_transformers_fixture(folders, tok, expected, i):
    case = expected[i]
    assert tok.encode(case["text"]) == case["ids"]
    assert tok(case["text"]).tolist() == [case["padded_sd15"]]
    assert CLIPTokenizer(folders["sd2"])(case["text"]).tolist() == [case["padded_sd2"]]


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
@pytest.mark.skipif(importlib.util.find_spec("ftfy") is not None,
                    reason="ftfy installed: transformers then cleans text differently (we match the no-ftfy path)")
def test_ids_match_transformers_live(folders, expected):
    import transformers
    from transformers import CLIPTokenizer as HFSlow, CLIPTokenizerFast as HFFast
    transformers.logging.set_verbosity_error()
    ours_fast = {style: CLIPTokenizer(folders[style], mode="fast") for style in folders}
    for style in ("sd15", "sd2"):
        ours = CLIPTokenizer(folders[style])
        slow = HFSlow.from_pretrained(folders[style])
        fast = HFFast.from_pretrained(folders[style])
        for case in expected:
            text = case["text"]
            ref = slow(text, add_special_tokens=False).input_ids
            assert ours.encode(text) == ref, text
            padded = slow(text, padding="max_length", max_length=77, truncation=True, return_tensors="np")
            np.testing.assert_array_equal(ours(text), padded.input_ids, err_msg=text)
            fast_ref = fast(text, add_special_tokens=False).input_ids
            assert ours_fast[style].encode(text) == fast_ref, text
            np.testing.assert_array_equal(
                ours_fast[style](text),
                fast(text, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids)


@pytest.mark.parametrize("i", range(len(CORPUS)))
def test_fast_mode_matches_transformers_fast_fixture(folders, expected, i):
    case = expected[i]
    fast = CLIPTokenizer(folders["sd15"], mode="fast")
    assert fast.encode(case["text"]) == case["fast_ids"]
    assert fast(case["text"]).tolist() == [case["fast_padded_sd15"]]


def test_slow_and_fast_differ_on_the_documented_cases(expected):
    differing = {c["text"][:3] for c in expected if c["fast_ids"] != c["ids"]}
    assert differing == {"東京タ", "🚀🔥 ", "hel", "ΟΔΟ"}, differing


def test_padding_truncation_and_length(tok):
    ids = tok(" ".join(["word"] * 100))
    assert ids.shape == (1, 77) and ids.dtype == np.int64
    assert ids[0, 0] == tok.bos_id and ids[0, 76] == tok.eos_id
    assert (ids[0, 1:76] == tok.encode("word")[0]).all()
    short = tok("a cat")
    assert short[0, :4].tolist() == [tok.bos_id] + tok.encode("a cat") + [tok.eos_id]
    assert (short[0, 4:] == tok.pad_id).all()
    assert tok("a cat", max_length=8).shape == (1, 8)
    assert tok.decode(short[0]) == "a cat"


def test_bad_input(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer(str(tmp_path))
    with pytest.raises(TypeError, match="str prompt"):
        tok.encode(None)
    with pytest.raises(ValueError, match="max_length"):
        tok("a", max_length=1)
    with pytest.raises(ValueError, match="mode must be"):
        CLIPTokenizer(tok.folder, mode="ftfy")


# ---- weighting syntax (AUTOMATIC1111's parse_prompt_attention, its documented examples) ----------------------

def _approx(pairs):
    return [p if p is BREAK else (p[0], pytest.approx(p[1], rel=1e-12)) for p in pairs]


@pytest.mark.parametrize("prompt,want", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("[[low]] (x: 2 )", [("low", 1 / 1.1 ** 2), (" ", 1.0), ("x", 2.0)]),
    ("", [("", 1.0)]),
    ("a:b ) ]", [("a:b ) ]", 1.0)]),
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
])
def test_parse_weights(prompt, want):
    assert parse_weights(prompt) == _approx(want)


def test_weighted_windows_short_prompt(tok):
    ids, mults = tok.weighted("a (red:1.5) car")
    assert len(ids) == len(mults) == 1
    body = tok.encode("a ") + tok.encode("red") + tok.encode(" car")
    np.testing.assert_array_equal(ids[0][0, :len(body) + 2], [tok.bos_id] + body + [tok.eos_id])
    assert mults[0].shape == (77,) and mults[0].dtype == np.float32
    np.testing.assert_allclose(mults[0][:5], [1.0, 1.0, 1.5, 1.0, 1.0])
    assert (mults[0][5:] == 1.0).all()


def test_windows_long_prompt_concatenate_to_the_encoding(tok):
    prompt = " ".join(f"word{i}" for i in range(60))  # "word", digits: 170 tokens, no commas
    body = tok.encode(prompt)
    assert len(body) == 170
    wins = tok.windows(prompt)
    assert len(wins) == 3
    for w in wins:
        assert w.shape == (1, 77) and w[0, 0] == tok.bos_id
    assert wins[0][0, 76] == tok.eos_id and wins[1][0, 76] == tok.eos_id
    inner = wins[0][0, 1:76].tolist() + wins[1][0, 1:76].tolist() + wins[2][0, 1:1 + 170 - 150].tolist()
    assert inner == body
    assert (wins[2][0, 1 + 170 - 150:] == tok.eos_id).all()


def test_windows_move_the_words_after_a_recent_comma(tok):
    prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)  # comma is token 71
    wins = tok.windows(prompt)
    first = wins[0][0].tolist()
    assert first[1:72] == tok.encode(" ".join(["cat"] * 70) + ",")
    assert first[72] == tok.eos_id  # the window ends at the comma ...
    assert wins[1][0, 1:11].tolist() == tok.encode(" ".join(["dog"] * 10))  # ... the phrase moved on whole
    no_backtrack = tok.windows(prompt, comma_backtrack=0)
    assert no_backtrack[0][0, 1:76].tolist() == tok.encode(prompt)[:75]


def test_break_starts_a_new_window(tok):
    wins, mults = tok.weighted("a cat BREAK (a dog:1.2)")
    assert len(wins) == 2
    assert wins[0][0, :4].tolist() == [tok.bos_id] + tok.encode("a cat") + [tok.eos_id]
    assert wins[1][0, :4].tolist() == [tok.bos_id] + tok.encode("a dog") + [tok.eos_id]
    np.testing.assert_allclose(mults[1][1:3], [1.2, 1.2])


def test_sd2_windows_pad_after_eos(folders):
    tok2 = CLIPTokenizer(folders["sd2"])
    w = tok2.windows("a cat")[0][0]
    assert w[:4].tolist() == [tok2.bos_id] + tok2.encode("a cat") + [tok2.eos_id]
    assert (w[4:] == 0).all()


def test_apply_emphasis_keeps_the_mean():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((1, 77, 19)).astype(np.float32) + 0.3
    mults = np.ones(77, np.float32)
    assert apply_emphasis(hidden, mults) is hidden
    mults[3:6] = 1.3
    out = apply_emphasis(hidden, mults)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(dtype=np.float64), hidden.mean(dtype=np.float64), rtol=1e-5)
    ratio = out[0, 4] / hidden[0, 4] / (out[0, 10] / hidden[0, 10])
    np.testing.assert_allclose(ratio, 1.3, rtol=1e-5)
    with pytest.raises(ValueError, match="apply_emphasis"):
        apply_emphasis(hidden, mults[:10])
