"""The tokenizer test corpus (shared by tests/test_sd_tokenizer.py and scripts/make_tokenizer_fixture.py): punctuation,
digits, contractions, accents, CJK, other scripts, emoji (with ZWJ and variation selectors), whitespace runs and
control characters, final sigma and other lowercase corner cases, special tokens typed in the text, and prompts over
75 tokens."""

_LONG = ("masterpiece, best quality, ultra-detailed, 8k wallpaper, a majestic castle on a cliff above a stormy "
         "sea at sunset, dramatic lighting, volumetric clouds, crashing waves, seagulls, (intricate stonework:1.2),"
         " glowing windows, banners fluttering in the wind, by greg rutkowski and alphonse mucha, trending on "
         "artstation, octane render, unreal engine 5, cinematic composition, wide angle lens, f/1.8, bokeh, "
         "highly detailed foreground flowers, mist, god rays, reflections on wet rocks, epic fantasy atmosphere")

CORPUS = [
    "a photo of an astronaut riding a horse on mars",
    "A Photo Of An Astronaut, Riding A Horse On Mars!!!",
    "",
    "   ",
    "a\t\tb\n\nc   d  \r\n e",
    "!!!??? ... --- ,,, ;; :: ' \" ` ~ @ # $ % ^ & * _ + = | \\ / < > { } [ ]",
    "it's I'M WE'LL don't you've they're he'd o'clock 'tis",
    "1234567890 3.14159 1e10 $100 50% 2024-01-31 12:30pm 4k 8K 1080p x2.5",
    "Café naïve résumé Ünïcödé ÀÉÎ ñ ç ø å ß œ æ",
    "e\u0301 composed by NFC, ﬁ ligature, ① Ⅻ ² ½",
    "東京タワー 夜景 高清 美しい 風景",
    "한국어 텍스트 русский текст ελληνικά العربية עברית हिन्दी ไทย",
    "🚀🔥 rocket fire 😀😀😀 👨\u200d👩\u200d👧 family 🏳️\u200d🌈 ❤️ 👍🏽",
    "hello\x07world\u200b zero width\ufeff bom \x0bvt\x0cff",
    "\u00a0nbsp\u3000ideographic\u2028line\u2029para space",
    "ΟΔΟΣ ΣΟΦΟΣ İstanbul l'\u017f 'S a\x1cb\x1fc x\u180ey",
    "<|endoftext|> a<|startoftext|>b <|ENDOFTEXT|> c<|endoftext|>",
    "(masterpiece:1.3), (best quality), [blurry], \\(literal\\) BREAK next",
    "x" * 300,
    " ".join(["word"] * 100),
    _LONG,
    _LONG.upper(),
]
