"""review: the pages where the sources disagree most, drawn so a person can see why.

Fusion ranks pages by disagreement (``outputs/fusion/page_scores.tsv``); review renders the
top K as one PNG per page — a grid with one panel per source variant and one for the consensus,
boxes coloured by taxonomy label, and a legend — plus ``index.html`` linking them and
``review/summary.png`` (the leaderboard and the disagreement histogram). Pillow draws the panels
(fast, no figure state); matplotlib (Agg) only the summary plot.
"""

from __future__ import annotations

import html
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from containers.atomic import atomic_path, write_text
from containers.errors import UserError
from entrypoints.newsbag.samples import _font
from entrypoints.newsbag.schema import TAXONOMY, iter_source_pages, read_page

# One colour per taxonomy label (colour-blind-friendly first; order follows TAXONOMY).
PALETTE = {
    "text": (0, 114, 178), "title": (213, 94, 0), "figure": (0, 158, 115), "caption": (204, 121, 167),
    "table": (230, 159, 0), "header": (86, 180, 233), "footer": (120, 120, 120),
    "page_number": (90, 60, 160), "advertisement": (200, 30, 30), "masthead": (150, 100, 0),
    "author": (0, 90, 90), "equation": (160, 160, 0), "other": (60, 60, 60),
}
assert set(PALETTE) == set(TAXONOMY)


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a fusion TSV (comment lines start with '#')."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    if not lines:
        return []
    cols = lines[0].split("\t")
    return [dict(zip(cols, ln.split("\t"), strict=False)) for ln in lines[1:]]


def _page_image(record: dict[str, Any]) -> tuple[Any, str | None]:
    """The page as RGB, or a blank page of the record's size with the reason it is blank."""
    from PIL import Image, UnidentifiedImageError

    size = (int(record["width"]), int(record["height"]))
    try:
        with Image.open(record["image"]) as im:
            img = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return Image.new("RGB", size, (255, 255, 255)), f"page image unreadable ({exc}); drawn on blank"
    if img.size != size:
        img = img.resize(size)
    return img, None


def draw_panel(base: Any, record: dict[str, Any], title: str, width: int) -> Any:
    """The page scaled to ``width`` with the record's boxes outlined and a title bar."""
    from PIL import Image, ImageDraw

    scale = width / base.width
    height = max(1, round(base.height * scale))
    page = base.resize((width, height)).convert("RGB")
    overlay = Image.new("RGBA", page.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(overlay)
    line = max(1, round(width / 220))
    for b in record["boxes"]:
        box = [b["x0"] * scale, b["y0"] * scale, b["x1"] * scale, b["y1"] * scale]
        col = PALETTE.get(b["label"], PALETTE["other"])
        d.rectangle(box, fill=(*col, 40), outline=(*col, 255), width=line)
    page = Image.alpha_composite(page.convert("RGBA"), overlay).convert("RGB")
    bar = 26
    panel = Image.new("RGB", (width, height + bar), (255, 255, 255))
    panel.paste(page, (0, bar))
    ImageDraw.Draw(panel).text((4, 4), title, fill=(0, 0, 0), font=_font(15))
    return panel


def legend(labels: list[str], width: int) -> Any:
    from PIL import Image, ImageDraw

    font = _font(14)
    per_row = max(1, width // 150)
    rows = max(1, math.ceil(len(labels) / per_row))
    img = Image.new("RGB", (width, 10 + 22 * rows), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for i, lab in enumerate(labels):
        x, y = 8 + (i % per_row) * 150, 6 + (i // per_row) * 22
        d.rectangle([x, y + 2, x + 14, y + 16], fill=PALETTE[lab], outline=(0, 0, 0))
        d.text((x + 20, y + 1), lab, fill=(0, 0, 0), font=font)
    return img


def render_page(page_id: str, records: list[tuple[str, dict[str, Any]]], consensus: dict[str, Any] | None,
                out: Path, *, panel_width: int = 360, cols: int = 4) -> str | None:
    """One overlay PNG: a panel per variant, then the consensus, then the legend."""
    from PIL import Image, ImageDraw

    first = consensus or records[0][1]
    base, why = _page_image(first)
    panels = [draw_panel(base, r, f"{key} ({len(r['boxes'])} {r['granularity']}s)", panel_width)
              for key, r in records]
    if consensus is not None:
        title = f"CONSENSUS ({len(consensus['boxes'])} blocks)"
        panels.append(draw_panel(base, consensus, title, panel_width))
    cols = max(1, min(cols, len(panels)))
    rows = math.ceil(len(panels) / cols)
    ph = max(p.height for p in panels)
    used = sorted({b["label"] for _, r in [*records, ("c", consensus or {"boxes": []})] for b in r["boxes"]},
                  key=TAXONOMY.index)
    leg = legend(used or ["other"], cols * (panel_width + 6))
    head = 30
    sheet = Image.new("RGB", (cols * (panel_width + 6) + 6, head + rows * (ph + 6) + leg.height + 6),
                      (235, 235, 235))
    ImageDraw.Draw(sheet).text((8, 6), f"page {page_id}" + (f" - {why}" if why else ""), fill=(0, 0, 0),
                               font=_font(18))
    for i, p in enumerate(panels):
        sheet.paste(p, (6 + (i % cols) * (panel_width + 6), head + (i // cols) * (ph + 6)))
    sheet.paste(leg, (6, head + rows * (ph + 6)))
    with atomic_path(out, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG", optimize=False)
    return why


def summary_plot(variant_rows: list[dict[str, str]], page_rows: list[dict[str, str]], out: Path) -> None:
    """Leaderboard bars (f1 and coverage per variant) and the per-page disagreement histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['source']}/{r['variant']}" for r in variant_rows][::-1]
    f1 = [float(r["f1"]) for r in variant_rows][::-1]
    cov = [float(r["coverage"]) for r in variant_rows][::-1]
    dis = [float(r["disagreement"]) for r in page_rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.45 * len(names) + 1.5)))
    y = list(range(len(names)))
    a.barh([v + 0.2 for v in y], f1, height=0.4, label="f1 (leave-one-out)", color="#0072b2")
    a.barh([v - 0.2 for v in y], cov, height=0.4, label="coverage", color="#e69f00")
    a.set_yticks(y, names)
    a.set_xlim(0, 1)
    a.set_title("variants vs the consensus of the other sources")
    a.legend(loc="lower right")
    b.hist(dis or [0.0], bins=min(20, max(5, len(dis) // 2)), range=(0, 1), color="#cc79a7")
    b.set_xlabel("disagreement (1 - mean agreement)")
    b.set_ylabel("pages")
    b.set_title(f"per-page disagreement ({len(dis)} pages)")
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def write_index(out: Path, top: list[dict[str, str]], files: dict[str, str], run_dir: Path, k: int) -> None:
    rows = "\n".join(
        f"<tr><td>{i}</td><td>{html.escape(r['page_id'])}</td><td>{html.escape(r['disagreement'])}</td>"
        f"<td>{html.escape(r['variants'])}</td><td>{html.escape(r['consensus_boxes'])}</td>"
        f"<td><a href=\"pages/{html.escape(files[r['page_id']])}\"><img src=\"pages/"
        f"{html.escape(files[r['page_id']])}\" width=\"480\" loading=\"lazy\"></a></td></tr>"
        for i, r in enumerate(top, 1) if r["page_id"] in files)
    text = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>newsbag review: top {k} informative pages</title>
<style>body{{font-family:sans-serif}} td{{vertical-align:top;padding:4px}} th{{text-align:left}}</style>
</head><body>
<h1>newsbag review: the {len(files)} pages where sources disagree most</h1>
<p>Run: {html.escape(str(run_dir))}. Disagreement = 1 - mean over variants of (f1 + coverage)/2 against
the leave-one-out consensus. Leaderboards: <code>outputs/fusion/variant_leaderboard.tsv</code>,
<code>outputs/fusion/source_leaderboard.tsv</code>.
Summary plot: <a href="../summary.png">summary.png</a>.</p>
<table><tr><th>#</th><th>page</th><th>disagreement</th><th>variants</th><th>consensus boxes</th>
<th>overlay (each variant, then the consensus)</th></tr>
{rows}
</table></body></html>
"""
    write_text(out, text)


def review_run(run_dir: Path, *, run: Any, top_k: int = 20, panel_width: int = 360, cols: int = 4) -> dict:
    fusion_dir = run_dir / "outputs" / "fusion"
    scores = fusion_dir / "page_scores.tsv"
    if not scores.is_file():
        raise UserError(f"no fusion results ({scores} is missing)", where="review",
                        fix="run the fusion app first with the same run_dir=")
    if top_k < 1:
        raise UserError(f"top_k={top_k} must be at least 1", fix="pass top_k=20")
    page_rows = read_tsv(scores)
    top = page_rows[:top_k]
    wanted = {r["page_id"] for r in top}
    by_page: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for source, variant, page_id, path in iter_source_pages(run_dir):
        if page_id in wanted and source != "consensus":
            by_page[page_id].append((f"{source}/{variant}", path))
    out = run_dir / "review" / f"top{top_k}_informative"
    files: dict[str, str] = {}
    with run.step("overlays", pages=len(top)):
        for i, r in enumerate(top, 1):
            pid = r["page_id"]
            records = []
            for key, path in sorted(by_page.get(pid, [])):
                try:
                    records.append((key, read_page(path)))
                except ValueError as exc:
                    run.skip(f"{key}/{pid}", f"not drawn: {exc}")
            cons_path = fusion_dir / "pages" / f"{pid}.json"
            try:
                consensus = read_page(cons_path)
            except ValueError as exc:
                run.skip(f"consensus/{pid}", f"not drawn: {exc}")
                consensus = None
            if not records and consensus is None:
                run.skip(pid, "nothing to draw for this page")
                continue
            name = f"{i:02d}_{pid}.png"
            why = render_page(pid, records, consensus, out / "pages" / name,
                              panel_width=panel_width, cols=cols)
            if why:
                run.skip(f"image/{pid}", why)
            files[pid] = name
            print(f"review: {i}/{len(top)} {pid} (disagreement {r['disagreement']})", file=sys.stderr,
                  flush=True)
    with run.step("index"):
        write_index(out / "index.html", top, files, run_dir, top_k)
        run.output(out / "index.html")
    with run.step("summary"):
        vrows = read_tsv(fusion_dir / "variant_leaderboard.tsv") if (
            fusion_dir / "variant_leaderboard.tsv").is_file() else []
        summary_plot(vrows, page_rows, run_dir / "review" / "summary.png")
        run.output(run_dir / "review" / "summary.png")
    run.report["review"] = {"pages": list(files.values()), "dir": str(out)}
    return {"dir": out, "pages": files}


def run(cfg: Any, run: Any) -> int:
    """The ``review`` app."""
    run_dir = Path(str(cfg.run_dir))
    res = review_run(run_dir, run=run, top_k=int(cfg.get("top_k", 20)),
                     panel_width=int(cfg.get("panel_width", 360)), cols=int(cfg.get("cols", 4)))
    print(f"review: {len(res['pages'])} overlay pages in {res['dir'] / 'pages'}")
    print(f"review: open {res['dir'] / 'index.html'} ; summary plot {run_dir / 'review' / 'summary.png'}")
    return 0
