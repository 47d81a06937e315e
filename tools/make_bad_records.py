#!/usr/bin/env python3
"""Generate the bad-records corpus for tests/bad_records.rs: tests/fixtures/bad-records/.

Run from the repository root:  python3 tools/make_bad_records.py

Plain python3 (no numpy); the output is byte-for-byte deterministic. It writes

  input.jsonl    JSON-lines records for the pipeline's [2, 3] input, good records mixed with many
                 kinds of bad line, blank and whitespace-only lines, CR LF endings, invalid UTF-8
                 and over-long lines (for --max-line-bytes 4096). Binary: open it as bytes.
  input.csv      a small CSV (header, good rows, bad rows) for --format csv.
  manifest.json  for every line of both files, what it is: `good` (with the key its output line
                 carries: {"id": N} or {"line": N}), `bad` (with its kind), `blank` (not a record;
                 skipped silently but counted for line numbers) or `header` (CSV).

pipeline.yaml (the tiny two-stage pipeline the test runs) is written by hand, not by this script.
"""

import json
import os

OUT_DIR = os.path.join("tests", "fixtures", "bad-records")
MAX_LINE_BYTES = 4096  # what tests/bad_records.rs passes as --max-line-bytes
SHAPE = (2, 3)
LEN = SHAPE[0] * SHAPE[1]


class Lcg:
    """A tiny linear congruential generator, so the values never depend on Python's `random`."""

    def __init__(self, seed):
        self.state = seed

    def next(self):
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return self.state >> 33

    def value(self):
        # Multiples of 1/8 in [-4, 4): exact in f32 and short in text.
        return (self.next() % 64 - 32) / 8


rng = Lcg(20240611)


def values():
    return [rng.value() for _ in range(LEN)]


def num(v):
    return repr(float(v)) if v != int(v) else str(int(v))


def flat(vs, sep=","):
    return "[" + sep.join(num(v) for v in vs) + "]"


def nested(vs):
    rows = [vs[r * SHAPE[1]:(r + 1) * SHAPE[1]] for r in range(SHAPE[0])]
    return "[" + ",".join(flat(r) for r in rows) + "]"


# ---------------------------------------------------------------------------------------------
# The JSON-lines corpus. Each entry: (bytes of the line without its ending, ending, manifest).

lines = []
next_good_id = [1]
next_bad_id = [900]


def good_id():
    i = next_good_id[0]
    next_good_id[0] += 1
    return i


def bad_id():
    i = next_bad_id[0]
    next_bad_id[0] += 1
    return i


def add(text, entry, end=b"\n"):
    if isinstance(text, str):
        text = text.encode("utf-8")
    lines.append((text, end, entry))


def good(form, end=b"\n"):
    """A good record of the given form; objects get a fresh id, bare arrays are keyed by line."""
    vs = values()
    if form.startswith("bare"):
        text = flat(vs) if form == "bare_flat" else nested(vs)
        add(text, {"status": "good", "form": form, "key": "line"}, end)
        return
    i = good_id()
    if form == "object":
        text = '{"id": %d, "x": %s}' % (i, flat(vs))
    elif form == "object_nested":
        text = '{"id": %d, "x": %s}' % (i, nested(vs))
    elif form == "object_x_first":
        text = '{"x": %s, "id": %d}' % (flat(vs), i)
    elif form == "object_extra_fields":
        text = ('{"id": %d, "x": %s, "other": "ignored", "meta": {"k": [1, "two", null, true]},'
                ' "label": 3}' % (i, flat(vs)))
    elif form == "object_whitespace":
        text = '  {\t"id" : %d ,  "x" : [ %s ] }  \t' % (i, " ,\t".join(num(v) for v in vs))
    elif form == "object_unicode_field":
        text = '{"id": %d, "x": %s, "name": "caf\u00e9 \u65e5\u672c \U0001F600", "esc": "\\u00e9\\n"}' % (
            i, flat(vs))
    elif form == "object_number_forms":
        # Valid JSON numbers in every spelling, all finite in f32 (1e-50 underflows to 0).
        text = '{"id": %d, "x": [-0, 1E+2, 2.5e-3, -1.25E1, 1e-50, 0.0]}' % i
    elif form == "object_near_f32_max":
        text = '{"id": %d, "x": [3.4e38, -3.4e38, 0, 0, 0, 1]}' % i
    elif form == "object_exactly_max_bytes":
        # Exactly MAX_LINE_BYTES bytes without the line ending: the longest line that is allowed.
        head = '{"id": %d, "x": %s, "pad": "' % (i, flat(vs))
        tail = '"}'
        text = head + "p" * (MAX_LINE_BYTES - len(head) - len(tail)) + tail
        assert len(text) == MAX_LINE_BYTES
    elif form == "object_max_bytes_with_crlf":
        # MAX_LINE_BYTES - 1 bytes plus CR LF: within the cap however the CR is counted.
        head = '{"id": %d, "x": %s, "pad": "' % (i, flat(vs))
        tail = '"}'
        text = head + "q" * (MAX_LINE_BYTES - 1 - len(head) - len(tail)) + tail
        assert len(text) == MAX_LINE_BYTES - 1 and end == b"\r\n"
    else:
        raise ValueError(form)
    add(text, {"status": "good", "form": form, "key": "id", "id": i}, end)


def bad(kind, text, end=b"\n"):
    if isinstance(text, str):
        text = text.replace("ID", str(bad_id()))
    add(text, {"status": "bad", "kind": kind}, end)


def blank(text, end=b"\n"):
    add(text, {"status": "blank"}, end)


V = "1, 2, 3, 4, 5, 6"

good("object")                                   # the very first line is good
good("object_nested", b"\r\n")
good("bare_flat")
good("object_extra_fields")
blank("")
good("object")
bad("not_json", "this is not json at all")
good("object")
good("object_unicode_field", b"\r\n")
bad("truncated_object", '{"id": ID, "x": [1, 2, 3, 4, 5, 6]')
good("object_x_first")
blank("   \t  ")
bad("truncated_array", "[1.5, 2, 3, 4, 5")
good("object_number_forms")
bad("top_level_string", '"[1, 2, 3, 4, 5, 6]"')
good("bare_nested")
bad("top_level_number", "42")
bad("top_level_null", "null")
good("object")
bad("top_level_true", "true")
good("object", b"\r\n")
bad("object_without_x", '{"id": ID, "y": [1, 2, 3, 4, 5, 6]}', b"\r\n")
good("object_whitespace")
bad("x_is_string", '{"id": ID, "x": "1, 2, 3, 4, 5, 6"}')
good("object")
# A run of ten consecutive bad lines.
bad("x_has_5_values", '{"id": ID, "x": [1, 2, 3, 4, 5]}')
bad("x_has_7_values", '{"id": ID, "x": [1, 2, 3, 4, 5, 6, 7]}')
bad("nested_wrong_inner_length", "[[1, 2], [3, 4, 5, 6]]")
bad("nesting_too_deep", '{"id": ID, "x": [[[1, 2, 3]], [[4, 5, 6]]]}')
bad("string_in_array", '{"id": ID, "x": [1, 2, "3", 4, 5, 6]}')
bad("null_in_array", "[1, 2, 3, null, 5, 6]")
bad("true_in_array", '{"id": ID, "x": [1, 2, 3, 4, true, 6]}', b"\r\n")
bad("object_in_array", '{"id": ID, "x": [1, 2, 3, 4, 5, {"v": 6}]}')
bad("nan_literal", '{"id": ID, "x": [1, 2, NaN, 4, 5, 6]}')
bad("infinity_literal", "[1, 2, 3, 4, Infinity, 6]")
good("object")
good("bare_flat", b"\r\n")
bad("f32_overflow_1e39", '{"id": ID, "x": [1, 2, 3, 1e39, 5, 6]}')
good("object_near_f32_max")
bad("f32_overflow_3.5e38_fits_f64", '{"id": ID, "x": [1, 2, 3, 4, 5, -3.5e38]}')
good("object_exactly_max_bytes")
bad("line_too_long_10kb",
    '{"id": ID, "x": [1, 2, 3, 4, 5, 6], "pad": "' + "z" * 10240 + '"}')
good("object")
bad("line_too_long_by_one_byte",
    (lambda h: h + "w" * (MAX_LINE_BYTES + 1 - len(h) - 2) + '"}')(
        '{"id": %d, "x": [1, 2, 3, 4, 5, 6], "pad": "' % bad_id()))
good("object_max_bytes_with_crlf", b"\r\n")
bad("invalid_utf8_byte_ff",
    b'{"id": %d, "x": [1, 2, 3, 4, 5, 6], "name": "caf\xff"}' % bad_id())
bad("invalid_utf8_overlong", b'{"id": %d, "x": [1, 2, 3, 4, 5, 6], "s": "\xc0\xaf"}' % bad_id())
good("object")
bad("invalid_utf8_truncated_sequence",
    b'{"id": %d, "x": [1, 2, 3, 4, 5, 6]} \xe2\x82' % bad_id(), b"\r\n")
bad("invalid_utf8_surrogate", b"[1, 2, 3, 4, 5, 6, \xed\xa0\x80]")
good("object_nested")
bad("trailing_garbage_after_array", "[1, 2, 3, 4, 5, 6] x")
good("object")
bad("trailing_garbage_after_object", '{"id": ID, "x": [1, 2, 3, 4, 5, 6]} {"id": 0}')
bad("lone_comma", ",")
bad("comma_in_brackets", "[,]")
good("bare_nested", b"\r\n")
bad("leading_plus", "[+1, 2, 3, 4, 5, 6]")
blank("\t")
bad("hex_number", '{"id": ID, "x": [0x10, 2, 3, 4, 5, 6]}')
good("object")
bad("empty_array", "[]")
bad("trailing_comma_in_array", '{"id": ID, "x": [1, 2, 3, 4, 5, 6,]}')
good("object")
bad("negative_infinity_literal", "[1, 2, 3, 4, 5, -Infinity]")
bad("nan_literal_bare", "[1, NaN, 3, 4, 5, 6]")
bad("f64_overflow_1e400", '{"id": ID, "x": [1, 2, 3, 4, 5, 1e400]}')
good("bare_flat")
bad("hex_number_bare", "[1, 2, 0x10, 4, 5, 6]")
bad("leading_plus_in_object", '{"id": ID, "x": [1, 2, 3, 4, 5, +6]}')
bad("nul_byte", b"\x00")
good("object_extra_fields", b"\r\n")
bad("single_quoted_json", "{'id': ID, 'x': [1, 2, 3, 4, 5, 6]}")
bad("control_character_in_string", b'{"id": %d, "x": [1, 2, 3, 4, 5, 6], "s": "a\x01b"}' % bad_id())
bad("missing_commas", "[1 2 3 4 5 6]")
bad("three_rows_for_two", "[[1, 2, 3], [4, 5, 6], [7, 8, 9]]")
good("object")
blank("", b"\r\n")
good("object_whitespace", b"\r\n")
blank("  ")
good("object")
good("object_nested")
good("object", b"")                              # the very last line: good, no final newline


def manifest_lines(entries):
    out = []
    for number, (_, end, entry) in enumerate(entries, start=1):
        e = {"line": number}
        e.update(entry)
        e["ending"] = {b"\n": "LF", b"\r\n": "CRLF", b"": "none"}[end]
        # What the record's output line is keyed by: its `id`, or its line when it has none.
        key = e.pop("key", None)
        if key == "id":
            e["output_key"] = {"id": e.pop("id")}
        elif key == "line":
            e["output_key"] = {"line": number}
        out.append(e)
    return out


jsonl = b"".join(text + end for text, end, _ in lines)

# ---------------------------------------------------------------------------------------------
# The CSV corpus: records keyed by line.

csv_rows = [
    ("f0,f1,f2,f3,f4,f5", b"\n", {"status": "header"}),
    ("0.5,1,2,3,4,5", b"\n", {"status": "good", "key": "line"}),
    ("-1,-2,-3,-4,-5,-6", b"\r\n", {"status": "good", "key": "line"}),
    ("1,2,abc,4,5,6", b"\n", {"status": "bad", "kind": "non_number"}),
    ("1,2,3,4,5", b"\n", {"status": "bad", "kind": "too_few_values"}),
    ("", b"\n", {"status": "blank"}),
    (" 1, 2.5 , 3,4,5,6", b"\n", {"status": "good", "key": "line"}),
    ("1,2,3,4,5,6,7", b"\n", {"status": "bad", "kind": "too_many_values"}),
    ("-1.5,2e-3,3E+1,-0,4,5", b"\n", {"status": "good", "key": "line"}),
    ("1,2,3,4,5,NaN", b"\n", {"status": "bad", "kind": "nan"}),
    ("1,2,,4,5,6", b"\n", {"status": "bad", "kind": "empty_field"}),
    ("1,2,3,4,5,1e39", b"\n", {"status": "bad", "kind": "f32_overflow"}),
    ("6,5,4,3,2,1", b"", {"status": "good", "key": "line"}),
]
csv_entries = [(t.encode(), end, e) for t, end, e in csv_rows]
csv = b"".join(text + end for text, end, _ in csv_entries)


def summary(entries, data):
    ms = manifest_lines(entries)
    return {
        "bytes": len(data),
        "good": sum(1 for e in ms if e["status"] == "good"),
        "bad": sum(1 for e in ms if e["status"] == "bad"),
        "bad_kinds": len({e["kind"] for e in ms if e["status"] == "bad"}),
        "lines": ms,
    }


manifest = {
    "generated_by": "python3 tools/make_bad_records.py",
    "max_line_bytes": MAX_LINE_BYTES,
    "record_shape": list(SHAPE),
    "output_key": "each good line's output line carries exactly this member: its `id`, or "
                  "`line` (its 1-based input line) when the record has no id",
    "jsonl": dict(file="input.jsonl", **summary(lines, jsonl)),
    "csv": dict(file="input.csv", **summary(csv_entries, csv)),
}

# Sanity checks on the corpus itself (the brief it was written to).
j = manifest["jsonl"]
assert j["good"] >= 25 and j["bad_kinds"] >= 18, (j["good"], j["bad_kinds"])
assert j["lines"][0]["status"] == "good" and j["lines"][-1]["status"] == "good"
assert b"\r\n" in jsonl
ids = [e["output_key"]["id"] for e in j["lines"] if "id" in e.get("output_key", {})]
assert len(ids) == len(set(ids))


def longest_bad_run(ms):
    best = run = 0
    for e in ms:
        run = run + 1 if e["status"] == "bad" else 0
        best = max(best, run)
    return best


assert longest_bad_run(j["lines"]) >= 5

os.makedirs(OUT_DIR, exist_ok=True)
with open(os.path.join(OUT_DIR, "input.jsonl"), "wb") as f:
    f.write(jsonl)
with open(os.path.join(OUT_DIR, "input.csv"), "wb") as f:
    f.write(csv)


def dump(value, indent=""):
    """JSON with one line per manifest line entry, so the manifest reads like the input."""
    inner = indent + "  "
    if isinstance(value, dict) and any(isinstance(v, (dict, list)) for v in value.values()):
        items = [inner + json.dumps(k) + ": " + dump(v, inner) for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "[\n" + ",\n".join(inner + json.dumps(v, ensure_ascii=False) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)


with open(os.path.join(OUT_DIR, "manifest.json"), "w", encoding="utf-8", newline="\n") as f:
    f.write(dump(manifest) + "\n")
print("wrote %s: jsonl %d lines (%d good, %d bad of %d kinds), csv %d lines (%d good, %d bad)" % (
    OUT_DIR, len(j["lines"]), j["good"], j["bad"], j["bad_kinds"], len(manifest["csv"]["lines"]),
    manifest["csv"]["good"], manifest["csv"]["bad"]))
