#!/usr/bin/env python3
"""Image preprocessing fixtures for the Rust tests: tests/fixtures/images/.

Run from the repository root:  python3 tools/image_fixtures.py
(needs tools/requirements-images.txt: torch, torchvision, Pillow, numpy, scikit-learn)

The reference is torchvision itself, as an ImageNet classifier is fed:

    img = PIL.Image.open(path).convert("RGB")
    x = Compose([Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)])(img)

written as raw little-endian float32, channels first ([3, crop, crop]), one `.f32` file per case.

Images (all committed, each under 300 KB, so the tests need no Python):
  china.jpg, flower.jpg     scikit-learn's two sample photographs (`load_sample_images`), copied
                            byte for byte (CC BY 2.0; see README.md)
  flower-301x217.png        the flower photo shrunk by PIL (Lanczos) to an odd size, lossless:
                            decoding is exact, so a difference is the resize's alone
  china-53x41.jpg           a small odd-sized JPEG, enlarged by its Resize (support not widened)
  flower-grey.jpg           a greyscale (one-component) JPEG: convert("RGB") copies it to 3 channels
  flower-progressive.jpg    a progressive JPEG without chroma subsampling
  china-rgba.png            RGBA with varying alpha: convert("RGB") drops alpha without blending
  flower-640-progressive.jpg  640x640, progressive, 4:4:4: the decoder's largest buffers per pixel,
                            for tests/memory_bound.rs (no tensor)

For flower-301x217.png, three preprocessing mistakes are written too, to show the tests' bound
rejects them: the crop one pixel to the right (`-offset`), bicubic instead of bilinear
(`-bicubic`), and the channels in BGR order (`-bgr`).

manifest.json lists every case: image, resize, crop, mean, std, tensor file, and the mistakes.
"""

import json
import os
import shutil

import numpy as np
import sklearn.datasets
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

OUT = os.path.join("tests", "fixtures", "images")
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def sample_photo(name):
    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)


def transform(resize, crop, interpolation=T.InterpolationMode.BILINEAR):
    return T.Compose(
        [
            T.Resize(resize, interpolation=interpolation),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )


def load(path):
    # torchvision's default image loader (datasets.folder.pil_loader).
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def write_tensor(name, x):
    x = x.detach().numpy().astype("<f4")
    assert x.ndim == 3 and x.shape[0] == 3
    x.tofile(os.path.join(OUT, name))
    return name


def offset_crop(img, resize, crop):
    """CenterCrop one pixel to the right of where torchvision puts it."""
    resized = F.resize(img, resize, interpolation=T.InterpolationMode.BILINEAR)
    w, h = resized.size
    top = int(round((h - crop) / 2.0))
    left = int(round((w - crop) / 2.0)) + 1
    x = F.to_tensor(F.crop(resized, top, left, crop, crop))
    return F.normalize(x, MEAN, STD)


def make_inputs():
    os.makedirs(OUT, exist_ok=True)
    for name in ["china.jpg", "flower.jpg"]:
        shutil.copyfile(sample_photo(name), os.path.join(OUT, name))
    flower = Image.open(sample_photo("flower.jpg")).convert("RGB")
    china = Image.open(sample_photo("china.jpg")).convert("RGB")
    flower.resize((301, 217), Image.LANCZOS).save(os.path.join(OUT, "flower-301x217.png"))
    china.resize((53, 41), Image.LANCZOS).save(
        os.path.join(OUT, "china-53x41.jpg"), quality=90
    )
    flower.convert("L").resize((160, 107), Image.LANCZOS).save(
        os.path.join(OUT, "flower-grey.jpg"), quality=90
    )
    flower.resize((200, 133), Image.LANCZOS).save(
        os.path.join(OUT, "flower-progressive.jpg"),
        quality=85,
        progressive=True,
        subsampling=0,
    )
    flower.resize((640, 640), Image.LANCZOS).save(
        os.path.join(OUT, "flower-640-progressive.jpg"),
        quality=60,
        progressive=True,
        subsampling=0,
    )
    rgba = china.resize((64, 48), Image.LANCZOS).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(os.path.join(OUT, "china-rgba.png"))


# (image, resize, crop): the photographs at a classifier's real size, the others smaller.
CASES = [
    ("china.jpg", 256, 224),
    ("flower.jpg", 256, 224),
    ("flower-301x217.png", 96, 80),
    ("china-53x41.jpg", 64, 56),
    ("flower-grey.jpg", 72, 64),
    ("flower-progressive.jpg", 112, 96),
    ("china-rgba.png", 40, 32),
]


def main():
    make_inputs()
    cases = []
    for image, resize, crop in CASES:
        path = os.path.join(OUT, image)
        img = load(path)
        stem = os.path.splitext(image)[0]
        x = transform(resize, crop)(img)
        case = {
            "image": image,
            "size": list(Image.open(path).size),
            "mode": Image.open(path).mode,
            "resize": resize,
            "crop": crop,
            "mean": MEAN,
            "std": STD,
            "tensor": write_tensor(stem + ".f32", x),
        }
        if image == "flower-301x217.png":
            bicubic = transform(resize, crop, T.InterpolationMode.BICUBIC)(img)
            bgr = F.normalize(
                F.to_tensor(
                    F.center_crop(
                        F.resize(img, resize), crop
                    )
                )[[2, 1, 0]],
                MEAN,
                STD,
            )
            case["mistakes"] = {
                "crop one pixel to the right": write_tensor(
                    stem + "-offset.f32", offset_crop(img, resize, crop)
                ),
                "bicubic instead of bilinear": write_tensor(stem + "-bicubic.f32", bicubic),
                "BGR instead of RGB": write_tensor(stem + "-bgr.f32", bgr),
            }
        cases.append(case)
        print(f"{image}: {case['size']} {case['mode']} -> [3, {crop}, {crop}]")
    manifest = {
        "made_by": "tools/image_fixtures.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": Image.__version__,
        "cases": cases,
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
