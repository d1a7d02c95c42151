"""CLIP byte-level BPE tokenizer for Stable Diffusion, in pure Python (no transformers, no `regex` module).

Reads a diffusers/optimum `tokenizer/` folder (vocab.json, merges.txt, and when present tokenizer_config.json /
special_tokens_map.json for the special tokens, the pad token and model_max_length) and produces the same ids as
transformers' CLIPTokenizer. Two of those exist and they disagree on some text:
- mode="slow" (default): the Python CLIPTokenizer of transformers 4.x *without ftfy installed* -- what diffusers'
  pipelines load there (model_index.json names `CLIPTokenizer`). Without ftfy it cleans text with BERT's
  `BasicTokenizer` (strip_accents=False, no punctuation split): control and format characters (category C*, e.g.
  U+200B, U+200D in emoji sequences) are dropped, whitespace becomes spaces, each CJK ideograph becomes its own
  word, NFC, str.lower() (final-sigma rule), contractions case-insensitive.
- mode="fast": the tokenizers-backed CLIPTokenizerFast (the only one from transformers 5 on): NFC, whitespace runs
  -> one space, per-character lowercase, case-sensitive contractions; CJK runs stay together, control/format
  characters are kept as bytes.
On ASCII, accents, digits, most emoji and whitespace runs the two agree (tests/test_sd_tokenizer.py lists the
corpus and where they differ).

The pre-tokenizer regex of CLIP (`'s|'t|...|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`) is re-implemented as a scanner
over unicodedata categories, because the stdlib `re` has no \\p{..} classes; the Unicode version is Python's, which
can differ from the `regex` module's only on characters assigned after it (none appear in real prompts' letters).

Long prompts and weighting follow AUTOMATIC1111 (see prompt.py): `.windows()` and `.weighted()`.
Reference: openai/CLIP simple_tokenizer.py; transformers models/clip/tokenization_clip.py.
"""
from __future__ import annotations

import json
import os
import unicodedata
from functools import lru_cache

import numpy as np

from .prompt import BREAK, parse_weights, split_chunks

BOS_DEFAULT, EOS_DEFAULT = "<|startoftext|>", "<|endoftext|>"
CHUNK = 75  # prompt tokens per window: 77 minus BOS and EOS


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map byte -> printable character; its order defines token ids 0..255."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _is_cjk(cp: int) -> bool:
    """The CJK ideograph blocks transformers' BasicTokenizer surrounds with spaces."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_clean(text: str) -> str:
    """transformers' CLIP cleanup when ftfy is absent: words joined by single spaces, lowercased."""
    out = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r":
            out.append(" ")
        elif cp == 0 or cp == 0xFFFD:
            continue
        else:
            cat = unicodedata.category(ch)
            if cat[0] == "C":
                continue
            if cat == "Zs":
                out.append(" ")
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
    words = unicodedata.normalize("NFC", "".join(out)).split()
    # split() again after lower(): BasicTokenizer re-splits the joined words (lower() never makes spaces, but
    # keeping the same two steps keeps the equivalence obvious).
    return " ".join(" ".join(w.lower() for w in words).split())


# Unicode White_Space: what \s means in the `regex` module and in tokenizers' Oniguruma (str.isspace() would add
# U+001C..U+001F).
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
                         "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def fast_clean(text: str) -> str:
    """The fast (tokenizers) CLIP normalizer: NFC, each whitespace run -> " ", lowercase char by char (no
    final-sigma rule, unlike str.lower())."""
    out, in_space = [], False
    for ch in unicodedata.normalize("NFC", text):
        if ch in _WHITE_SPACE:
            if not in_space:
                out.append(" ")
            in_space = True
        else:
            out.append(ch.lower())
            in_space = False
    return "".join(out)


_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


def _category(ch: str) -> str:
    c = unicodedata.category(ch)[0]
    return c if c in "LN" else ("S" if ch in _WHITE_SPACE else "P")  # P here = anything else ("punctuation run")


def pre_tokenize(text: str, specials: tuple[str, ...], ignore_case: bool = True) -> list[str]:
    """CLIP's regex, alternatives in its order: special tokens, contractions (case-insensitive in the Python
    tokenizer's `regex.IGNORECASE`, so "'\u017f" matches "'s"; case-sensitive in the fast one), a run of letters,
    one digit, a run of anything that is neither space, letter nor number; spaces are skipped."""
    out = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        matched = None
        for sp in specials:
            if text[i:i + len(sp)].casefold() == sp.casefold():
                matched = text[i:i + len(sp)]
                break
        if matched is None and ch == "'":
            for c in _CONTRACTIONS:
                tail = text[i + 1:i + 1 + len(c)]
                if len(tail) == len(c) and (all(a.casefold() == b for a, b in zip(tail, c)) if ignore_case
                                            else tail == c):
                    matched = text[i:i + 1 + len(c)]
                    break
        if matched is not None:
            out.append(matched)
            i += len(matched)
            continue
        kind = _category(ch)
        if kind == "S":
            i += 1
            continue
        j = i + 1
        if kind == "L":
            while j < n and _category(text[j]) == "L":
                j += 1
        elif kind == "P":
            while j < n and _category(text[j]) == "P":
                j += 1
        out.append(text[i:j])
        i = j
    return out


def _join(folder: str, name: str) -> str:
    from weights_providers import http
    return http.join_url(folder, name) if http.is_url(folder) else os.path.join(folder, name)


def _reader(folder: str):
    """name -> the file's text, or None when the folder (a directory, or an http(s):// URL of
    one: the pipeline run from a web server) has no such file."""
    from weights_providers import http
    from weights_providers.format import WeightsError
    if http.is_url(folder):
        def read(name):
            try:
                return http.fetch_text(http.join_url(folder, name))
            except WeightsError as e:
                if ": HTTP 404" in str(e):      # an optional file the folder does not have
                    return None
                raise
        return read

    def read_local(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return f.read()
    return read_local


def _special_content(value, default: str) -> str:
    """A token in a tokenizer config: a plain string or an AddedToken dict {"content": ...}."""
    if value is None:
        return default
    if isinstance(value, dict):
        return value["content"]
    return str(value)


class CLIPTokenizer:
    """`CLIPTokenizer(folder)`; `encode(text)` -> ids without BOS/EOS; `tok(prompt)` -> int64 [1, 77] as diffusers'
    pipeline feeds the text encoder (BOS, at most 75 tokens, EOS, then the configured pad token)."""

    def __init__(self, folder: str, mode: str = "slow"):
        if mode not in ("slow", "fast"):
            raise ValueError(f"CLIPTokenizer: mode must be 'slow' (transformers' Python CLIPTokenizer without ftfy, "
                             f"what diffusers uses with transformers 4.x) or 'fast', got {mode!r}")
        self.mode = mode
        self.folder = folder
        read = _reader(folder)
        vocab_text, merges_text = read("vocab.json"), read("merges.txt")
        for name, text in (("vocab.json", vocab_text), ("merges.txt", merges_text)):
            if text is None:
                raise FileNotFoundError(f"CLIPTokenizer: {_join(folder, name)} not found "
                                        f"(expected a diffusers tokenizer/ folder)")
        self.encoder: dict[str, int] = json.loads(vocab_text)
        # Same slice as CLIP and transformers: skip the '#version' line, at most 48894 merges.
        lines = merges_text.strip().split("\n")[1:49152 - 256 - 2 + 1]
        del vocab_text, merges_text
        # Keyed by the merge line "a b" itself, not by a tuple: 8 MiB instead of 19 for CLIP's 48894 merges
        # (the pipeline's RSS budget); byte-mapped symbols never contain a space.
        self.bpe_ranks = {" ".join(m.split()): r for r, m in enumerate(lines)}
        del lines

        config = {}
        # special_tokens_map.json overrides tokenizer_config.json, as in transformers' from_pretrained
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            text = read(name)
            if text is not None:
                config.update({k: v for k, v in json.loads(text).items() if v is not None})
        self.bos_token = _special_content(config.get("bos_token"), BOS_DEFAULT)
        self.eos_token = _special_content(config.get("eos_token"), EOS_DEFAULT)
        self.unk_token = _special_content(config.get("unk_token"), EOS_DEFAULT)
        self.pad_token = _special_content(config.get("pad_token"), EOS_DEFAULT)
        max_len = config.get("model_max_length", 77)
        # transformers writes a huge sentinel (1e30) when the length is unknown: CLIP's 77 then.
        self.model_max_length = int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e6 else 77
        for what, tok in (("bos", self.bos_token), ("eos", self.eos_token), ("unk", self.unk_token),
                          ("pad", self.pad_token)):
            if tok not in self.encoder:
                raise ValueError(f"CLIPTokenizer: {what} token {tok!r} from {folder} is not in vocab.json")
        self.bos_id = self.encoder[self.bos_token]
        self.eos_id = self.encoder[self.eos_token]
        self.unk_id = self.encoder[self.unk_token]
        self.pad_id = self.encoder[self.pad_token]
        self.comma_id = self.encoder.get(",</w>")
        # Special tokens written in the text are cut out first and map to their ids (transformers' added-token
        # trie, case-sensitive); CLIP's regex also keeps them whole when they reappear in another case.
        self._specials = tuple(sorted({self.bos_token, self.eos_token, self.unk_token, self.pad_token},
                                      key=len, reverse=True))
        self._regex_specials = (BOS_DEFAULT, EOS_DEFAULT)
        self._byte_encoder = bytes_to_unicode()
        self._cache = {BOS_DEFAULT: BOS_DEFAULT, EOS_DEFAULT: EOS_DEFAULT}

    # --- BPE -------------------------------------------------------------------------------------------------
    def bpe(self, token: str) -> list[str]:
        """Merge the characters of one pre-token (bytes mapped to characters) by rank, lowest first."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached.split(" ")
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        ranks = self.bpe_ranks
        while len(word) > 1:
            best, best_rank = None, None
            for pair in zip(word, word[1:]):
                r = ranks.get(pair[0] + " " + pair[1])
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self._cache[token] = " ".join(word)
        return list(word)

    def _encode_plain(self, text: str) -> list[int]:
        ids = []
        if self.mode == "slow":
            pieces = pre_tokenize(basic_clean(text), self._regex_specials)
        else:
            pieces = pre_tokenize(fast_clean(text), (), ignore_case=False)
        for piece in pieces:
            mapped = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder.get(t, self.unk_id) for t in self.bpe(mapped))
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without BOS/EOS, no truncation."""
        if not isinstance(text, str):
            raise TypeError(f"CLIPTokenizer.encode: expected a str prompt, got {type(text).__name__}")
        if self.mode == "fast":  # the fast tokenizer matches its (normalized) special tokens after normalizing
            text = fast_clean(text)
        ids: list[int] = []
        start = 0
        while start < len(text):
            hit = None
            for sp in self._specials:
                k = text.find(sp, start)
                if k >= 0 and (hit is None or k < hit[0]):
                    hit = (k, sp)
            if hit is None:
                ids += self._encode_plain(text[start:])
                break
            k, sp = hit
            ids += self._encode_plain(text[start:k])
            ids.append(self.encoder[sp])
            start = k + len(sp)
        return ids

    def decode(self, ids) -> str:
        """Text of ids (for messages and debugging); BOS, EOS and pad dropped."""
        if not hasattr(self, "_decoder"):
            self._decoder = {v: k for k, v in self.encoder.items()}
            self._byte_decoder = {v: k for k, v in self._byte_encoder.items()}
        skip = {self.bos_id, self.eos_id, self.pad_id}
        text = "".join(self._decoder[int(i)] for i in ids if int(i) not in skip)
        raw = bytes(self._byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    # --- fixed-length input ----------------------------------------------------------------------------------
    def _window(self, body: list[int], max_length: int) -> list[int]:
        row = [self.bos_id] + body[:max_length - 2] + [self.eos_id]
        return row + [self.pad_id] * (max_length - len(row))

    def __call__(self, prompt: str, max_length: int | None = None) -> np.ndarray:
        """int64 [1, max_length]: BOS, the first max_length-2 tokens, EOS, pad (diffusers' pipeline call:
        padding="max_length", truncation=True). Weighting syntax is NOT interpreted here (see weighted())."""
        max_length = self.model_max_length if max_length is None else int(max_length)
        if max_length < 2:
            raise ValueError(f"CLIPTokenizer: max_length must be >= 2, got {max_length}")
        return np.asarray([self._window(self.encode(prompt), max_length)], dtype=np.int64)

    # --- long prompts, A1111 style ---------------------------------------------------------------------------
    def weighted(self, prompt: str, comma_backtrack: int = 20) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """AUTOMATIC1111's prompt handling: parse `(a:1.3)`, `(a)`, `[a]`, `\\(`, BREAK; tokenize each piece; cut
        into 75-token windows (a window ending within `comma_backtrack` tokens after a comma moves the words
        after that comma to the next window); each window = BOS + tokens + EOS, then pad (SD 1.x: EOS; SD 2.x:
        the config's pad). Returns (ids windows int64 [1, 77], multipliers float32 [77] each, 1.0 on
        BOS/EOS/pad). Apply them to the text encoder's output with prompt.apply_emphasis()."""
        pieces = [piece if piece is BREAK else (self.encode(piece[0]), piece[1]) for piece in parse_weights(prompt)]
        chunks = split_chunks(pieces, CHUNK, self.comma_id, comma_backtrack)
        ids_out, mult_out = [], []
        for toks, mults in chunks:
            ids_out.append(np.asarray([self._window(toks, CHUNK + 2)], dtype=np.int64))
            mult_out.append(np.asarray([1.0] + mults + [1.0] * (CHUNK + 1 - len(mults)), dtype=np.float32))
        return ids_out, mult_out

    def windows(self, prompt: str, comma_backtrack: int = 20) -> list[np.ndarray]:
        """The [1, 77] id windows of weighted() (weights parsed out of the text, not returned)."""
        return self.weighted(prompt, comma_backtrack)[0]

