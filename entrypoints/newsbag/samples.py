"""Synthetic newspaper pages with exact ground truth, so the demo can report accuracy.

Pages are drawn deterministically with Pillow (seeded RNG, Pillow's bundled scalable font):
a header strip, a masthead, a banner headline, 3-6 columns of headlines, bylines and paragraph
blocks, photos (gradients and shapes) with captions, boxed advertisements and a page number.
Every ground-truth box is the union of what was actually drawn for that element, so it is
exact for the Pillow that drew it.

Real scans are not clean 1,100 px renders: they are 5,000+ px, skewed, blurred, noisy, JPEG'd,
their photos halftoned. ``Degradation`` renders such variants with the ground truth carried
through every geometric step exactly (scale multiplies the boxes; skew rotates each box's
corners with the page and takes their bounding box, the axis-aligned box that encloses the
rotated element; blur, noise and JPEG move no ink). Each degraded page's truth records its
``condition`` ("degraded: ..."), so fusion reports clean and degraded accuracy apart.

Committed under ``samples/``: three clean pages (grayscale PNG) and two degraded ones (JPEG);
``python -m entrypoints.newsbag.samples DIR`` regenerates them, ``--degraded N`` adds N more
degraded pages with random settings (seeded) for a larger test set.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoints.newsbag.schema import GT_SOURCE, GT_VARIANT, make_box, page_record

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
PAGE_W, PAGE_H = 1100, 1500
N_PAGES = 3

_TEXT = (
    "the council voted on tuesday to extend the harbor railway line north past mill street while "
    "farmers in the valley reported an early harvest of wheat and barley prices at the grain "
    "exchange rose for a third week merchants said the new bridge would open in spring the mayor "
    "promised lower taxes and better roads for every ward of the city a fire destroyed two "
    "warehouses near the docks but no one was hurt the school board will meet again next month "
    "to discuss teachers salaries and a new library building citizens are asked to attend"
)
_WORDS = tuple(_TEXT.split())
_HEADLINES = ("Council Backs Railway Plan", "Harvest Comes Early", "Fire At The Docks",
              "New Bridge To Open", "Mayor Promises Roads", "Grain Prices Climb", "School Board Meets",
              "Library Fund Grows", "Storm Damages Pier", "Mill Workers Return")
_BANNERS = ("CITY APPROVES GREAT HARBOR PROJECT", "RECORD CROWDS GREET RETURNING SHIPS",
            "STATE LEGISLATURE PASSES ROAD BILL", "FLOOD WATERS RECEDE IN VALLEY TOWNS")
_ADS = (("DR. MILLER'S TONIC", "For All Ailments", "25 cents at every druggist"),
        ("GRAND HOTEL", "Rooms by the Week", "Steam heat - Electric light"),
        ("ACME STOVES", "Warm Homes All Winter", "Sold on easy terms"),
        ("BAKER & SONS", "Fine Tailoring", "Suits made to measure"))


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 or no FreeType: the fixed bitmap font still draws
        return ImageFont.load_default()


class _Page:
    """Draw elements and record their ground-truth boxes (ink bounds, page pixels)."""

    def __init__(self, seed: int, halftone: bool = False) -> None:
        from PIL import Image, ImageDraw

        self.rng = random.Random(seed)
        self.halftone = halftone
        self.img = Image.new("L", (PAGE_W, PAGE_H), 247)
        self.draw = ImageDraw.Draw(self.img)
        self.boxes: list[dict[str, Any]] = []

    def add(self, label: str, bbox: tuple[float, float, float, float]) -> None:
        box = make_box(*bbox, label=label, raw_label=label, score=1.0, width=PAGE_W, height=PAGE_H)
        if box:
            self.boxes.append(box)

    def text_lines(self, lines: list[str], x: int, y: int, size: int, gap: int = 4,
                   center_w: int | None = None) -> tuple[tuple[int, int, int, int], int]:
        """Draw lines; return their union ink box and the y below them."""
        font = _font(size)
        ux0 = uy0 = 10**9
        ux1 = uy1 = -1
        for line in lines:
            lx = x
            if center_w is not None:
                lx = x + int((center_w - self.draw.textlength(line, font=font)) / 2)
            self.draw.text((lx, y), line, font=font, fill=20)
            bx0, by0, bx1, by1 = self.draw.textbbox((lx, y), line, font=font)
            ux0, uy0, ux1, uy1 = min(ux0, bx0), min(uy0, by0), max(ux1, bx1), max(uy1, by1)
            y += size + gap
        return (ux0, uy0, ux1, uy1), y

    def fit(self, text: str, width: int, size: int) -> int:
        """The largest type size <= ``size`` at which ``text`` fits ``width`` (narrow columns' ads)."""
        while size > 8 and self.draw.textlength(text, font=_font(size)) > width:
            size -= 1
        return size

    def wrap(self, words: list[str], width: int, size: int) -> list[str]:
        font = _font(size)
        lines, cur = [], ""
        for w in words:
            cand = f"{cur} {w}".strip()
            if cur and self.draw.textlength(cand, font=font) > width:
                lines.append(cur)
                cur = w
            else:
                cur = cand
        if cur:
            lines.append(cur)
        return lines

    def paragraph(self, x: int, y: int, width: int, n_words: int, bottom: int) -> int:
        """A paragraph block, cut to the lines that fit above ``bottom`` (none if < 2 fit)."""
        start = self.rng.randrange(len(_WORDS))
        words = [_WORDS[(start + i) % len(_WORDS)] for i in range(n_words)]
        words[0] = words[0].capitalize()
        lines = self.wrap(words, width, 15)[: max(0, (bottom - y) // 18)]
        if len(lines) < 2:
            return bottom
        box, y = self.text_lines(lines, x, y, 15, gap=3)
        self.add("text", box)
        return y + 10

    def photo(self, x: int, y: int, w: int, h: int) -> int:
        from PIL import Image, ImageDraw

        ph = Image.linear_gradient("L").resize((w, h)).rotate(self.rng.choice((0, 90, 180, 270)),
                                                              expand=False)
        d = ImageDraw.Draw(ph)
        for _ in range(4):
            cx, cy, r = self.rng.randrange(w), self.rng.randrange(h), self.rng.randrange(15, max(16, w // 4))
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=self.rng.randrange(30, 220))
        d.rectangle((0, 0, w - 1, h - 1), outline=0, width=2)
        if self.halftone:
            ph = halftone(ph)
        self.img.paste(ph, (x, y))
        self.add("figure", (x, y, x + w, y + h))
        return y + h + 6

    def ad(self, x: int, y: int, w: int, lines: tuple[str, ...]) -> int:
        top = y
        self.draw.rectangle((x, y, x + w, y + 10), fill=247)
        y += 14
        _, y = self.text_lines([lines[0]], x + 8, y, self.fit(lines[0], w - 16, 24), center_w=w - 16)
        _, y = self.text_lines([lines[1]], x + 8, y + 4, self.fit(lines[1], w - 16, 17), center_w=w - 16)
        _, y = self.text_lines([lines[2]], x + 8, y + 4, self.fit(lines[2], w - 16, 14), center_w=w - 16)
        bottom = y + 10
        self.draw.rectangle((x, top, x + w, bottom), outline=10, width=4)
        self.add("advertisement", (x, top, x + w + 1, bottom + 1))
        return bottom + 16


def halftone(img: Any, cell: int = 6) -> Any:
    """A printed photo's dot screen: one black dot per ``cell`` x ``cell`` cell, area ~ darkness."""
    import numpy as np
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    h, w = a.shape
    ch, cw = -(-h // cell), -(-w // cell)
    pad = np.pad(a, ((0, ch * cell - h), (0, cw * cell - w)), mode="edge")
    dark = 1.0 - pad.reshape(ch, cell, cw, cell).mean(axis=(1, 3)) / 255.0
    radius = cell * np.sqrt(dark / math.pi)                    # dot area = darkness x cell area
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.hypot((yy % cell) + 0.5 - cell / 2, (xx % cell) + 0.5 - cell / 2)
    dots = dist < radius[yy // cell, xx // cell]
    out = np.where(dots, 15, 245).astype(np.uint8)
    out[[0, 1, -2, -1], :] = 0                                  # keep the photo's frame
    out[:, [0, 1, -2, -1]] = 0
    return Image.fromarray(out)


def render_page(index: int, ncols: int | None = None, halftone_photos: bool = False
                ) -> tuple[Any, list[dict[str, Any]]]:
    """One page: a PIL image and its ground-truth boxes (3-4 columns unless ``ncols``)."""
    p = _Page(seed=1000 + index, halftone=halftone_photos)
    margin, top = 40, 24
    box, _ = p.text_lines([f"VOL. XII - NO. {index + 3}      MONDAY, MARCH {index + 4}, 1912      "
                           f"PRICE {index + 1} CENTS"], margin, top, 14, center_w=PAGE_W - 2 * margin)
    p.add("header", box)
    box, y = p.text_lines(["The Evening Chronicle"], margin, 52, 64, center_w=PAGE_W - 2 * margin)
    p.add("masthead", box)
    y = box[3] + 14
    p.draw.line((margin, y, PAGE_W - margin, y), fill=0, width=3)
    box, y = p.text_lines([_BANNERS[index % len(_BANNERS)]], margin, y + 12, 34,
                          center_w=PAGE_W - 2 * margin)
    p.add("title", box)
    y = box[3] + 14
    p.draw.line((margin, y, PAGE_W - margin, y), fill=0, width=1)
    ncols = ncols or 3 + index % 2
    gutter = 22 if ncols <= 4 else 16
    colw = (PAGE_W - 2 * margin - (ncols - 1) * gutter) // ncols
    body_top, body_bottom = y + 16, PAGE_H - 70
    heads = list(_HEADLINES)
    p.rng.shuffle(heads)
    for c in range(ncols):
        x = margin + c * (colw + gutter)
        if c:
            p.draw.line((x - gutter // 2, body_top, x - gutter // 2, body_bottom), fill=120, width=1)
        cy = body_top
        story = 0
        while cy < body_bottom - 160:
            head = heads[(c * 3 + story) % len(heads)]
            box, cy = p.text_lines(p.wrap(head.split(), colw, 22), x, cy, 22)
            p.add("title", box)
            if p.rng.random() < 0.6:
                who = p.rng.choice(("J. Hart", "A. Moreau", "L. Chen", "R. Olsen"))
                box, cy = p.text_lines([f"By {who}"], x, cy + 2, 13)
                p.add("author", box)
            cy += 6
            kind = p.rng.random()
            if kind < 0.3 and cy + colw * 0.7 + 60 < body_bottom:
                cy = p.photo(x, cy, colw, int(colw * 0.7))
                start = p.rng.randrange(len(_WORDS))
                cap = [_WORDS[(start + i) % len(_WORDS)] for i in range(10)]
                box, cy = p.text_lines(p.wrap(["Above:", *cap], colw, 13), x, cy, 13, gap=2)
                p.add("caption", box)
                cy += 10
            elif kind < 0.45 and cy + 140 < body_bottom:
                cy = p.ad(x, cy, colw, _ADS[p.rng.randrange(len(_ADS))])
                story += 1
                continue
            for _ in range(p.rng.randint(1, 3)):
                if cy + 60 > body_bottom:
                    break
                cy = p.paragraph(x, cy, colw, p.rng.randint(40, 90), body_bottom)
            cy += 14
            story += 1
    p.draw.line((margin, PAGE_H - 58, PAGE_W - margin, PAGE_H - 58), fill=0, width=1)
    box, _ = p.text_lines([str(index + 1)], margin, PAGE_H - 44, 18, center_w=PAGE_W - 2 * margin)
    p.add("page_number", box)
    return p.img, p.boxes


@dataclass(frozen=True)
class Degradation:
    """How a clean render becomes a scan-like page (all deterministic for a given ``seed``)."""

    columns: int = 5
    scale: float = 1.6        # resample factor (real scans: 2.5x and more)
    skew_deg: float = 1.2     # rotation about the page centre, counter-clockwise
    blur: float = 1.0         # Gaussian radius in output pixels
    noise: float = 8.0        # Gaussian grey-level noise (sigma)
    jpeg: int = 45            # JPEG quality of the stored page
    halftone: bool = True     # photos printed as a dot screen
    seed: int = 0

    def describe(self) -> str:
        parts = [f"{self.columns} columns", f"scale {self.scale:g}", f"skew {self.skew_deg:g} deg",
                 f"blur {self.blur:g}", f"noise {self.noise:g}", f"jpeg {self.jpeg}"]
        return "degraded: " + ", ".join(parts + (["halftone photos"] if self.halftone else []))


# The bundled degraded pages (what make demo scores as "degraded").
DEGRADED = (Degradation(columns=5, scale=1.6, skew_deg=1.2, blur=1.0, noise=8.0, jpeg=45, seed=1),
            Degradation(columns=6, scale=2.0, skew_deg=-0.8, blur=1.4, noise=12.0, jpeg=35, seed=2))


def rotate_boxes(boxes: list[dict[str, Any]], deg: float, width: int, height: int) -> list[dict[str, Any]]:
    """Boxes after rotating the page ``deg`` counter-clockwise about its centre (Pillow's
    ``rotate``): each box becomes the bounding box of its rotated corners, clipped to the page."""
    t = math.radians(deg)
    c, s_ = math.cos(t), math.sin(t)
    cx, cy = width / 2, height / 2
    out = []
    for b in boxes:
        xs, ys = [], []
        for x, y in ((b["x0"], b["y0"]), (b["x1"], b["y0"]), (b["x0"], b["y1"]), (b["x1"], b["y1"])):
            dx, dy = x - cx, y - cy
            xs.append(cx + dx * c + dy * s_)
            ys.append(cy - dx * s_ + dy * c)
        nb = make_box(min(xs), min(ys), max(xs), max(ys), label=b["label"], raw_label=b["raw_label"],
                      score=1.0, width=width, height=height)
        if nb:
            out.append(nb)
    return out


def degrade(index: int, d: Degradation) -> tuple[Any, list[dict[str, Any]]]:
    """A degraded page (PIL "L" image) and its exact ground truth."""
    import numpy as np
    from PIL import Image, ImageFilter

    img, boxes = render_page(index, ncols=d.columns, halftone_photos=d.halftone)
    w, h = round(PAGE_W * d.scale), round(PAGE_H * d.scale)
    sx, sy = w / PAGE_W, h / PAGE_H
    img = img.resize((w, h), Image.BICUBIC)
    boxes = [b2 for b in boxes if (b2 := make_box(b["x0"] * sx, b["y0"] * sy, b["x1"] * sx, b["y1"] * sy,
                                                  label=b["label"], raw_label=b["raw_label"], score=1.0,
                                                  width=w, height=h))]
    if d.skew_deg:
        img = img.rotate(d.skew_deg, resample=Image.BICUBIC, expand=False, fillcolor=247)
        boxes = rotate_boxes(boxes, d.skew_deg, w, h)
    if d.blur:
        img = img.filter(ImageFilter.GaussianBlur(d.blur))
    if d.noise:
        rng = np.random.default_rng(d.seed)
        a = np.asarray(img, dtype=np.float64) + rng.normal(0.0, d.noise, (h, w))
        img = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    return img, boxes


def page_name(index: int) -> str:
    return f"chronicle_p{index + 1:02d}"


def _write(out: Path, pid: str, img: Any, boxes: list[dict[str, Any]], *, jpeg: int | None,
           condition: str) -> Path:
    from entrypoints.newsbag.schema import write_page
    from suite_core.atomic import atomic_path

    path = out / (f"{pid}.jpg" if jpeg else f"{pid}.png")
    with atomic_path(path, suffix=path.suffix) as tmp:
        if jpeg:
            img.save(tmp, format="JPEG", quality=jpeg, optimize=True)
        else:
            img.save(tmp, format="PNG", optimize=True)
    # "image" is relative to the GT file's directory: bundled files name no machine path.
    rec = page_record(page_id=pid, image=path.name, width=img.width, height=img.height, source=GT_SOURCE,
                      variant=GT_VARIANT, granularity="block", boxes=boxes)
    rec["condition"] = condition
    write_page(out / f"{pid}.gt.json", rec)
    return path


def generate(out_dir: str | Path, n_pages: int = N_PAGES, degraded: tuple[Degradation, ...] = DEGRADED
             ) -> list[Path]:
    """Write ``<page_id>.png|jpg`` + ``<page_id>.gt.json`` for each clean and degraded page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_pages):
        img, boxes = render_page(i)
        paths.append(_write(out, page_name(i), img, boxes, jpeg=None, condition="clean"))
    for k, d in enumerate(degraded):
        i = n_pages + k
        img, boxes = degrade(i, d)
        paths.append(_write(out, page_name(i), img, boxes, jpeg=d.jpeg, condition=d.describe()))
    return paths


def random_degradations(n: int, seed: int = 0) -> tuple[Degradation, ...]:
    """``n`` scan-like settings drawn from the ranges real newspaper scans show (seeded)."""
    rng = random.Random(seed)
    return tuple(Degradation(columns=rng.randint(4, 6), scale=round(rng.uniform(1.5, 2.5), 2),
                             skew_deg=round(rng.uniform(-2.0, 2.0), 2), blur=round(rng.uniform(0.5, 2.0), 2),
                             noise=round(rng.uniform(4, 16), 1), jpeg=rng.randint(25, 60),
                             halftone=rng.random() < 0.8, seed=1000 + i) for i in range(n))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    extra = 0
    if "--degraded" in args:
        at = args.index("--degraded")
        try:
            extra = int(args[at + 1])
        except (IndexError, ValueError):
            print("error: --degraded needs a number of pages; fix: --degraded 10", file=sys.stderr)
            return 2
        args = args[:at] + args[at + 2:]
    out = Path(args[0]) if args else SAMPLES_DIR
    for p in generate(out, degraded=DEGRADED + random_degradations(extra)):
        print(f"{p}  ({p.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
