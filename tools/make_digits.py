"""Write the scikit-learn handwritten digits as JSON-lines train/test splits for subpass.

The data set (1,797 8x8 grey-level images of the digits 0-9, pixel values 0..16) ships with
scikit-learn, so nothing is downloaded.  We make one fixed, seeded, stratified split
(25% test, random_state=0) and write

    examples/digits-train.jsonl
    examples/digits-test.jsonl

one record per line: {"id": <index in load_digits()>, "x": [[[8 floats] x 8 rows]], "label": k}.
"x" is nested in the model's record shape [1, 8, 8] (one channel).  Pixels are scaled to
[0, 1] by dividing by 16; every value is k/16, exactly representable in float32, so each is
written as the short repr of that float32 value (0.0625, 0.5, 1.0, ...).  Records are written
in ascending id order so the files are easy to diff and do not depend on the split's shuffle.

Run from the repository root:  python3 tools/make_digits.py
"""
import json
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
TEST_SIZE = 0.25
OUT_DIR = "examples"


def record(idx, image, label):
    # image: (8, 8) ints 0..16.  float32(k/16) is exact; repr(float(...)) gives the shortest form.
    rows = [[float(np.float32(v / 16.0)) for v in row] for row in image]
    return {"id": int(idx), "x": [rows], "label": int(label)}


def write(path, ids, images, labels):
    with open(path, "w", newline="\n") as f:
        for i in ids:
            f.write(json.dumps(record(i, images[i], labels[i]), separators=(",", ":")) + "\n")


def main():
    digits = load_digits()
    images = digits.images.astype(np.int64)  # (1797, 8, 8), values 0..16
    labels = digits.target.astype(np.int64)
    assert images.min() >= 0 and images.max() <= 16
    all_ids = np.arange(len(labels))
    train_ids, test_ids = train_test_split(
        all_ids, test_size=TEST_SIZE, stratify=labels, random_state=SEED
    )
    os.makedirs(OUT_DIR, exist_ok=True)
    write(os.path.join(OUT_DIR, "digits-train.jsonl"), sorted(train_ids), images, labels)
    write(os.path.join(OUT_DIR, "digits-test.jsonl"), sorted(test_ids), images, labels)
    print(f"train {len(train_ids)} records, test {len(test_ids)} records")
    for name, ids in (("train", train_ids), ("test", test_ids)):
        print(name, "per-class counts:", np.bincount(labels[ids], minlength=10).tolist())


if __name__ == "__main__":
    main()
