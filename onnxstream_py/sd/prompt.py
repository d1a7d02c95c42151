"""Prompt weighting and long-prompt windows, following AUTOMATIC1111's conventions (the de-facto standard users
write prompts for). Pure Python; numpy only in apply_emphasis.

Syntax (A1111 `parse_prompt_attention`): `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by
1.1, `(text:1.3)` multiplies it by 1.3, nesting multiplies, an unclosed bracket applies to the end of the prompt,
`\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters, `BREAK` (upper case, a word of its own) ends the current
75-token window. Neighbouring pieces of equal weight are merged.

Windows (A1111 `tokenize_line`): tokens go into windows of 75; when a window is full and the last comma in it is
at most `comma_backtrack` (20) tokens back, the words after that comma move to the next window, so a phrase is
not cut in two. Each window becomes BOS + tokens + EOS + padding = 77 ids and is encoded on its own; the
pipeline concatenates the hidden states along the sequence axis ([1, 77*k, C]).

Emphasis (A1111 "Original", its default): hidden states of each window are multiplied per token by the weight,
then the whole tensor is rescaled so its mean equals the mean before weighting (apply_emphasis).
"""
from __future__ import annotations

import re

import numpy as np

BREAK = ("BREAK", -1.0)  # the window-break marker in parse_weights' output (compare with `is`)

_ROUND, _SQUARE = 1.1, 1 / 1.1
# Alternatives in priority order: escapes, openers, ":weight)" closer, closers, plain text, a lone colon.
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""", re.X)
_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] of a prompt, with the BREAK marker (prompt.BREAK) between windows.

    >>> parse_weights("a (red:1.3) car, [blurry]")
    [('a ', 1.0), ('red', 1.3), (' car, ', 1.0), ('blurry', 0.9090909090909091)]
    """
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for m in _ATTENTION.finditer(prompt):
        text, weight = m.group(0), m.group(1)
        if text.startswith("\\"):
            res.append([text[1:], 1.0])
        elif text == "(":
            round_open.append(len(res))
        elif text == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:  # "(a:1.2.3)": the number is malformed, read it as text like an unmatched ")"
                res.append([text, 1.0])
                continue
            scale_from(round_open.pop(), factor)
        elif text == ")" and round_open:
            scale_from(round_open.pop(), _ROUND)
        elif text == "]" and square_open:
            scale_from(square_open.pop(), _SQUARE)
        else:
            for i, part in enumerate(_BREAK_RE.split(text)):
                if i > 0:
                    res.append(list(BREAK))
                res.append([part, 1.0])
    for start in round_open:
        scale_from(start, _ROUND)
    for start in square_open:
        scale_from(start, _SQUARE)
    if not res:
        res = [["", 1.0]]
    # merge runs of equal weight (a BREAK marker has weight -1 and text "BREAK", so it merges only with another
    # BREAK, exactly as in A1111)
    merged: list[list] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [BREAK if (t, w) == BREAK else (t, w) for t, w in merged]


def split_chunks(pieces, chunk_len: int, comma_id: int | None, comma_backtrack: int = 20):
    """A1111's windowing. pieces: [(token ids, weight)] or BREAK. Returns [(tokens, multipliers)], each at most
    chunk_len long (the caller adds BOS/EOS/padding); at least one (possibly empty) window."""
    chunks: list[tuple[list[int], list[float]]] = []
    toks: list[int] = []
    mults: list[float] = []
    last_comma = -1

    def flush():
        nonlocal toks, mults, last_comma
        chunks.append((toks, mults))
        toks, mults, last_comma = [], [], -1

    for piece in pieces:
        if piece is BREAK:
            flush()
            continue
        ids, weight = piece
        for tok in ids:
            if comma_id is not None and tok == comma_id:
                last_comma = len(toks)
            elif (comma_backtrack and len(toks) == chunk_len and last_comma != -1
                  and len(toks) - last_comma <= comma_backtrack):
                cut = last_comma + 1
                moved_t, moved_m = toks[cut:], mults[cut:]
                toks, mults = toks[:cut], mults[:cut]
                flush()
                toks, mults = moved_t, moved_m
            if len(toks) == chunk_len:
                flush()
            toks.append(tok)
            mults.append(weight)
    if toks or not chunks:
        flush()
    return chunks


def apply_emphasis(hidden: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """A1111 "Original" emphasis for one window: hidden [1, T, C] (the text encoder's last_hidden_state),
    multipliers [T] -> hidden * w[token], rescaled so the mean over the whole tensor is unchanged."""
    hidden = np.asarray(hidden)
    w = np.asarray(multipliers, dtype=hidden.dtype)
    if hidden.ndim != 3 or w.shape != (hidden.shape[1],):
        raise ValueError(f"apply_emphasis: expected hidden [B, T, C] and multipliers [T], got {hidden.shape} "
                         f"and {w.shape}")
    if np.all(w == 1):
        return hidden
    before = hidden.mean(dtype=np.float64)
    out = hidden * w[None, :, None]
    after = out.mean(dtype=np.float64)
    # One departure from A1111: the ratio is ill-conditioned when the mean is ~0 next to the
    # values (random-weight encoders: a 1e-7 change of the hidden states moved it from 1.0 to
    # 1.6, so the engine and onnxruntime disagreed by 60 %). A mean below 1e-3 of the mean
    # magnitude, or one that changes sign, is left as scaled. Real CLIP encoders are far from it.
    if abs(after) < 1e-3 * float(np.abs(out).mean(dtype=np.float64)) or before * after <= 0:
        return out.astype(hidden.dtype, copy=False)
    return (out * np.asarray(before / after, dtype=hidden.dtype)).astype(hidden.dtype, copy=False)
