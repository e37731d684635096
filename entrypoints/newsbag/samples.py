"""Synthetic newspaper pages with exact ground truth, so the demo can report accuracy.

Pages are drawn deterministically with Pillow (seeded RNG, Pillow's bundled scalable font):
a header strip, a masthead, a banner headline, 3-4 columns of headlines, bylines and paragraph
blocks, photos (gradients and shapes) with captions, boxed advertisements and a page number.
Every ground-truth box is the union of what was actually drawn for that element, so it is
exact for the Pillow that drew it. The generated pages (grayscale PNG, ~100-200 KB each) are
committed under ``samples/``; ``python -m entrypoints.newsbag.samples DIR`` regenerates them.
"""

from __future__ import annotations

import random
import sys
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

    def __init__(self, seed: int) -> None:
        from PIL import Image, ImageDraw

        self.rng = random.Random(seed)
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
        self.img.paste(ph, (x, y))
        self.add("figure", (x, y, x + w, y + h))
        return y + h + 6

    def ad(self, x: int, y: int, w: int, lines: tuple[str, ...]) -> int:
        top = y
        self.draw.rectangle((x, y, x + w, y + 10), fill=247)
        y += 14
        _, y = self.text_lines([lines[0]], x + 8, y, 24, center_w=w - 16)
        _, y = self.text_lines([lines[1]], x + 8, y + 4, 17, center_w=w - 16)
        _, y = self.text_lines([lines[2]], x + 8, y + 4, 14, center_w=w - 16)
        bottom = y + 10
        self.draw.rectangle((x, top, x + w, bottom), outline=10, width=4)
        self.add("advertisement", (x, top, x + w + 1, bottom + 1))
        return bottom + 16


def render_page(index: int) -> tuple[Any, list[dict[str, Any]]]:
    """One page: a PIL image and its ground-truth boxes."""
    p = _Page(seed=1000 + index)
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
    ncols = 3 + index % 2
    gutter = 22
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


def page_name(index: int) -> str:
    return f"chronicle_p{index + 1:02d}"


def generate(out_dir: str | Path, n_pages: int = N_PAGES) -> list[Path]:
    """Write ``<page_id>.png`` + ``<page_id>.gt.json`` for each page; return the PNG paths."""
    from containers.atomic import atomic_path
    from entrypoints.newsbag.schema import write_page

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_pages):
        img, boxes = render_page(i)
        pid = page_name(i)
        png = out / f"{pid}.png"
        with atomic_path(png, suffix=".png") as tmp:
            img.save(tmp, format="PNG", optimize=True)
        # "image" is relative to the GT file's directory: bundled files name no machine path.
        write_page(out / f"{pid}.gt.json", page_record(
            page_id=pid, image=png.name, width=PAGE_W, height=PAGE_H, source=GT_SOURCE,
            variant=GT_VARIANT, granularity="block", boxes=boxes))
        paths.append(png)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else SAMPLES_DIR
    for p in generate(out):
        print(f"{p}  ({p.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
