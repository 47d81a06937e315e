#!/usr/bin/env python3
"""Build benches/corpus/sentences.txt: real English sentences from documentation on this machine.

    python3 tools/make_text_corpus.py [--count 8000] [--seed 2024] [--out PATH] [--stats MODEL_DIR]

Sources, read in sorted order (nothing is generated, nothing is downloaded):

  man    English manual pages, /usr/share/man/man[1-8]/*, rendered with groff (-mandoc, tbl,
         one paragraph per output line); NAME, SYNOPSIS, SEE ALSO, AUTHOR, COPYRIGHT, COLOPHON
         and similar sections are skipped; `.so` alias pages and symlinks are skipped.
  py     Docstrings of the Python standard library of the interpreter running this script
         (modules, classes, functions; parsed with `ast`, nothing imported; tests excluded);
         doctest and indented code blocks dropped, reST roles reduced to their text.
  doc    README*, *.txt, *.md, *.rst (possibly .gz) under /usr/share/doc; indented blocks,
         headings, tables and licence texts dropped.

Paragraphs are split into sentences with a regular expression (abbreviations and initials
protected), then a sentence is kept only if it looks like prose: 3 to 120 words, ends with
. ! or ?, mostly letters, few code characters, at least one English function word, not
shouting. Exact duplicates (case- and space-insensitive) are dropped.

To keep any one program from dominating (there are 16,000 generated `gcloud` pages on some
machines), at most PAGES_PER_FAMILY documents per family (the name up to its first - _ . or
path component) are read, evenly spaced in sorted order, and at most PER_DOC sentences are
taken from one document. The sources are then mixed in fixed shares (SHARES): from each,
share × --count sentences drawn with a seeded RNG, with probability proportional to their word
count (see weighted_sample); the mix is shuffled with the same RNG. Same machine, same
packages, same Python: same file, byte for byte.

--stats MODEL_DIR (needs the `tokenizers` package) prints the token-length distribution under
the model's tokenizer.json, in the form benches/corpus/README.md quotes.
"""

import argparse
import ast
import gzip
import inspect
import os
import random
import re
import subprocess
import sys
import sysconfig
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARES = {"man": 0.55, "py": 0.30, "doc": 0.15}
PAGES_PER_FAMILY = 40
PER_DOC = 12
MIN_WORDS, MAX_WORDS = 3, 120

# ---------------------------------------------------------------------------------------------
# Text clean-up and sentence filter
# ---------------------------------------------------------------------------------------------
TRANSLATE = str.maketrans({
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "--", "\u2212": "-",
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " ", "\u00ad": "",
    "\u2022": "*", "\u00b7": "*", "\u2026": "...", "\u200b": "",
})
ABBREVIATIONS = {
    "e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "ms", "dr", "prof", "st", "no", "fig", "figs",
    "approx", "resp", "incl", "al", "ca", "jr", "sr", "inc", "ltd", "co", "vol", "sec", "ch",
    "eq", "ref", "esp", "viz", "ibid", "op", "ed", "eds", "rev", "u.s", "a.k.a", "ph.d",
}
FUNCTION_WORDS = set("""
a an the is are was were be been being to of and or in on at by for with from as that this these
those it its if then than not no can may must will would should could do does did has have had
which who when where what how all any each some such only also but so into onto over under
""".split())
CODE_CHARS = set("{}[]<>=|\\/_$#@*^~`;")
SKIP_MAN_SECTIONS = {
    "NAME", "SYNOPSIS", "SYNTAX", "SEE ALSO", "AUTHOR", "AUTHORS", "COPYRIGHT", "COLOPHON",
    "LICENSE", "LICENCE", "REPORTING BUGS", "AVAILABILITY", "FILES", "VERSIONS", "TRANSLATOR",
    "TRANSLATORS", "CONFORMING TO", "STANDARDS", "ATTRIBUTES", "FEEDBACK", "RESOURCES",
}
LICENCE_MARKERS = ("WITHOUT ANY WARRANTY", "GNU General Public License", "Permission is hereby",
                   "Redistribution and use", "MERCHANTABILITY", "Copyright (C)", "copyright")

# Split after . ! ? (and a closing quote or bracket) before whitespace and a capital or quote.
SPLIT = re.compile(r"""(?<=[.!?])(["')\]]?)\s+(?=["'(\[]?[A-Z])""")


def clean(text):
    text = unicodedata.normalize("NFC", text).translate(TRANSLATE)
    return " ".join(text.split())


def split_sentences(paragraph):
    """Regex sentence splitter that leaves abbreviations and initials alone."""
    out, start = [], 0
    for m in SPLIT.finditer(paragraph):
        end = m.start(1) + len(m.group(1))
        head = paragraph[start:end]
        last = head.rstrip("\"')]").rstrip(".!?").split()[-1:] or [""]
        word = last[0].lstrip("(\"'").lower()
        if head.rstrip("\"')]").endswith(".") and (
                word in ABBREVIATIONS or len(word) == 1 or re.fullmatch(r"(\w\.)+\w", word)):
            continue
        out.append(head.strip())
        start = m.end()
    out.append(paragraph[start:].strip())
    return [s for s in out if s]


def is_prose(s):
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not re.search(r"[.!?][\"')\]]?$", s) or s.endswith("..."):
        return False
    if not (s[0].isalpha() or s[0] in "\"'(") or s[0] in "(" and not s.endswith(")"):
        return False
    chars = [c for c in s if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    if letters < 0.78 * len(chars):
        return False
    if sum(c in CODE_CHARS for c in chars) > max(2, 0.02 * len(chars)):
        return False
    if sum(not c.isascii() for c in chars) > 2:
        return False
    upper = sum(c.isupper() for c in chars)
    if upper > 0.25 * letters:
        return False
    lower_words = [w.strip(".,;:!?\"'()").lower() for w in words]
    function = sum(w in FUNCTION_WORDS for w in lower_words)
    if function == 0 or (len(words) >= 8 and function < 0.12 * len(words)):
        return False
    # Plain words (letters, an inner hyphen or apostrophe, trailing punctuation) dominate.
    plain = sum(bool(re.fullmatch(r"[\"'(]?[A-Za-z]+(?:['-][A-Za-z]+)*[.,;:!?\"')]*", w))
                for w in words)
    if plain < 0.75 * len(words):
        return False
    if any(m in s for m in LICENCE_MARKERS) or "http" in s or "www." in s or "@" in s:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Sources: each yields (document path, family, [paragraph, ...])
# ---------------------------------------------------------------------------------------------
def family_of(name):
    return re.split(r"[-_.:]", name, maxsplit=1)[0].lower() or name


def cap_families(docs):
    """docs: sorted [(path, family)]. At most PAGES_PER_FAMILY per family, evenly spaced."""
    by_family = {}
    for path, fam in docs:
        by_family.setdefault(fam, []).append(path)
    kept = []
    for fam, paths in sorted(by_family.items()):
        if len(paths) > PAGES_PER_FAMILY:
            step = len(paths) / PAGES_PER_FAMILY
            paths = [paths[int(i * step)] for i in range(PAGES_PER_FAMILY)]
        kept += [(p, fam) for p in paths]
    return sorted(kept)


def man_documents():
    pages = []
    for d in sorted(Path("/usr/share/man").glob("man[1-8]")):
        for f in sorted(d.iterdir()):
            if f.is_symlink() or not f.is_file():
                continue
            try:
                with (gzip.open(f) if f.suffix == ".gz" else open(f, "rb")) as fh:
                    head = fh.read(200)
            except OSError:
                continue
            if head.lstrip().startswith(b".so "):
                continue
            pages.append((str(f), family_of(f.name)))
    pages = cap_families(pages)

    def render(item):
        path, fam = item
        opener = "zcat" if path.endswith(".gz") else "cat"
        # A very long line length keeps each paragraph on one output line; no hyphenation,
        # no adjustment; -c -b -o -u: no escape sequences, no overstriking.
        cmd = (f"{opener} '{path}' | groff -k -t -mandoc -Tutf8 -P-cbou -rLL=3000n -rHY=0 "
               f"-rcR=1 2>/dev/null")
        out = subprocess.run(cmd, shell=True, capture_output=True,
                             env={**os.environ, "LC_ALL": "C.UTF-8"}).stdout
        return path, fam, man_paragraphs(out.decode("utf-8", "replace"))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        yield from pool.map(render, pages)


def man_paragraphs(text):
    paragraphs, section = [], None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            section = line.strip().upper()
            continue
        if section in SKIP_MAN_SECTIONS or section is None:
            continue
        paragraphs.append(line.strip())
    # Drop the running header/footer remnants (very wide lines of a title and a date).
    return [p for p in paragraphs if "   " not in p]


ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")


def rest_to_text(p):
    p = ROLE.sub(r"\1", p)
    p = re.sub(r"``([^`]*)``", r"\1", p)
    p = re.sub(r"`([^`]*)`_?", r"\1", p)
    p = re.sub(r"\*\*([^*]+)\*\*", r"\1", p)
    p = re.sub(r"(?<!\w)\*([^*]+)\*(?!\w)", r"\1", p)
    return p


def py_documents():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for f in sorted(stdlib.rglob("*.py")):
        rel = f.relative_to(stdlib)
        parts = rel.parts
        if any(p in ("site-packages", "dist-packages", "test", "tests", "idle_test",
                     "__pycache__") or p.startswith("config-") for p in parts):
            continue
        files.append((str(f), family_of(parts[0].removesuffix(".py"))))
    for path, fam in cap_families(files):
        try:
            tree = ast.parse(Path(path).read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        paragraphs = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    paragraphs += docstring_paragraphs(doc)
        yield path, fam, paragraphs


def docstring_paragraphs(doc):
    out = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = block.splitlines()
        if not lines or any(l.lstrip().startswith((">>>", "...")) for l in lines):
            continue
        if lines[0].startswith((" ", "\t")) or block.rstrip().endswith("::"):
            continue  # an indented (code) block, or the line introducing one
        if any(l.startswith((" ", "\t")) for l in lines[1:]):
            continue  # a definition list or parameter table: not running prose
        out.append(rest_to_text(" ".join(l.strip() for l in lines)))
    return out


DOC_NAME = re.compile(r"(?i)^(readme.*|.*\.(txt|md|rst))(\.gz)?$")
DOC_SKIP = re.compile(r"(?i)(copyright|changelog|license|licence|copying|news|authors|"
                      r"thanks|todo|relnotes)")


def doc_documents():
    files = []
    for root, dirs, names in os.walk("/usr/share/doc"):
        dirs.sort()
        for n in sorted(names):
            f = Path(root) / n
            if f.is_symlink() or not DOC_NAME.match(n) or DOC_SKIP.search(str(f)):
                continue
            pkg = f.relative_to("/usr/share/doc").parts[0]
            files.append((str(f), family_of(pkg)))
    for path, fam in cap_families(sorted(files)):
        try:
            raw = gzip.open(path).read() if path.endswith(".gz") else Path(path).read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError):
            continue
        yield path, fam, doc_paragraphs(text)


def doc_paragraphs(text):
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [l for l in block.splitlines() if l.strip()]
        if not lines or lines[0].startswith(("    ", "\t")):
            continue  # code or a literal block
        if any(re.match(r"^\s*([=\-~^#*+`|]{3,}|#|\||```)", l) for l in lines):
            continue  # headings, rules, tables, fences
        first = re.sub(r"^\s*([*+-]|\d+[.)])\s+", "", lines[0])  # a list item's marker
        out.append(rest_to_text(" ".join([first.strip()] + [l.strip() for l in lines[1:]])))
    return out


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------
def collect(kind, documents, seed, seen):
    """[(sentence, family)] from one source kind, PER_DOC per document at most."""
    picked = []
    for path, fam, paragraphs in documents:
        sentences = []
        for p in paragraphs:
            for s in split_sentences(clean(p)):
                key = " ".join(s.lower().split())
                if key in seen or not is_prose(s):
                    continue
                seen.add(key)
                sentences.append(s)
        rng = random.Random(f"{seed}:{path}")
        if len(sentences) > PER_DOC:
            sentences = rng.sample(sentences, PER_DOC)
        picked += [(s, fam) for s in sentences]
    log(f"{kind}: {len(picked)} sentences from {len({f for _, f in picked})} families")
    return picked


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def weighted_sample(rng, pool, k):
    """k items without replacement, with probability proportional to the word count
    (Efraimidis-Spirakis keys): as if picking sentences by a random word of the text, which
    lifts the mean from ~24 to ~29 tokens without cutting off short sentences."""
    keys = sorted(((rng.random() ** (1.0 / len(s.split())), i) for i, (s, _) in enumerate(pool)),
                  reverse=True)
    return [pool[i] for _, i in keys[:k]]


def assemble(count, seed):
    seen = set()
    pools = {
        "man": collect("man", man_documents(), seed, seen),
        "py": collect("py", py_documents(), seed, seen),
        "doc": collect("doc", doc_documents(), seed, seen),
    }
    rng = random.Random(seed)
    chosen, short = [], 0
    for kind in SHARES:  # fixed order: deterministic
        want = round(SHARES[kind] * count) + short
        take = weighted_sample(rng, pools[kind], want)
        short = want - len(take)
        chosen += [(s, kind) for s, _ in take]
    if short:
        raise SystemExit(f"only {len(chosen)} sentences available, {count} asked for")
    rng.shuffle(chosen)
    return chosen


def stats(sentences, model_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    lengths = sorted(len(e.ids) for e in tok.encode_batch(sentences))
    n = len(lengths)
    words = sorted(len(s.split()) for s in sentences)

    def pct(xs, q):
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    return {
        "sentences": n,
        "bytes": sum(len(s.encode()) + 1 for s in sentences),
        "words_mean": sum(words) / n, "words_min": words[0], "words_max": words[-1],
        "tokens_mean": sum(lengths) / n, "tokens_p50": pct(lengths, 0.5),
        "tokens_p90": pct(lengths, 0.9), "tokens_p99": pct(lengths, 0.99),
        "tokens_min": lengths[0], "tokens_max": lengths[-1],
        "tokens_total": sum(lengths),
        "truncated_at_256": sum(l > 256 for l in lengths),
        "exactly_16": sum(l == 16 for l in lengths),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--out", default=str(REPO / "benches/corpus/sentences.txt"))
    ap.add_argument("--stats", metavar="MODEL_DIR",
                    help="print the token-length distribution under MODEL_DIR/tokenizer.json")
    ap.add_argument("--stats-only", action="store_true",
                    help="do not rebuild; print the statistics of --out (needs --stats)")
    args = ap.parse_args()

    out = Path(args.out)
    if args.stats_only:
        sentences = out.read_text(encoding="utf-8").splitlines()
    else:
        chosen = assemble(args.count, args.seed)
        sentences = [s for s, _ in chosen]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
        mix = {k: sum(1 for _, kk in chosen if kk == k) for k in SHARES}
        log(f"wrote {len(sentences)} sentences to {out} ({out.stat().st_size:,} bytes); "
            f"mix {mix}")
    if args.stats:
        for k, v in stats(sentences, args.stats).items():
            print(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
