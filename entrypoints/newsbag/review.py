"""review: the pages where the sources disagree most, drawn so a person can see why.

Fusion ranks pages by disagreement (``outputs/fusion/page_scores.tsv``); review renders the top K
as one PNG per page: a panel with the ground truth (when the page has it), one per source variant
showing its boxes AS FUSION SCORED THEM (a text-line detector's lines grouped into blocks, its
raw lines drawn faintly underneath), and the consensus; each panel title carries its numbers (F1
against truth and against the other sources). Panels are scaled to the page (``panel_width``
pixels wide, never enlarged), so a 2,750 px scan is not shrunk to a thumbnail. ``index.html``
lists the pages with per-page numbers and legible thumbnails (consensus vs truth), and
``review/summary.png`` plots accuracy against truth (clean and degraded apart), leave-one-out
agreement and the disagreement histogram. Pillow draws the panels; matplotlib (Agg) the summary.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from entrypoints.newsbag.samples import _font
from entrypoints.newsbag.schema import TAXONOMY, gt_path_for, iter_source_pages, read_page
from suite_core.atomic import atomic_path, write_text
from suite_core.errors import UserError

# One colour per taxonomy label (colour-blind-friendly first; order follows TAXONOMY).
PALETTE = {
    "text": (0, 114, 178),
    "title": (213, 94, 0),
    "figure": (0, 158, 115),
    "caption": (204, 121, 167),
    "table": (230, 159, 0),
    "header": (86, 180, 233),
    "footer": (120, 120, 120),
    "page_number": (90, 60, 160),
    "advertisement": (200, 30, 30),
    "masthead": (150, 100, 0),
    "author": (0, 90, 90),
    "equation": (160, 160, 0),
    "other": (60, 60, 60),
}
assert set(PALETTE) == set(TAXONOMY)
THUMB_PANEL = 420  # px per thumbnail panel: body text stays readable at ~0.4x of a 1,100 px page


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

    from entrypoints.newsbag.inputs import to_rgb8

    size = (int(record["width"]), int(record["height"]))
    try:
        with Image.open(record["image"]) as im:
            img = Image.fromarray(to_rgb8(im))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return Image.new("RGB", size, (255, 255, 255)), f"page image unreadable ({exc}); drawn on blank"
    if img.size != size:
        img = img.resize(size)
    return img, None


def draw_panel(
    base: Any,
    boxes: list[tuple[tuple[float, float, float, float], str]],
    title: str,
    width: int,
    faint: list[tuple[float, float, float, float]] | None = None,
) -> Any:
    """The page at ``width`` px (never enlarged) with ``boxes`` outlined by label, under a title bar."""
    from PIL import Image, ImageDraw

    width = min(width, base.width)
    scale = width / base.width
    height = max(1, round(base.height * scale))
    page = base.resize((width, height)).convert("RGBA")
    overlay = Image.new("RGBA", page.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(overlay)
    for x0, y0, x1, y1 in faint or []:
        d.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=(120, 120, 120, 110), width=1)
    line = max(2, round(width / 300))
    for (x0, y0, x1, y1), label in boxes:
        col = PALETTE.get(label, PALETTE["other"])
        d.rectangle(
            [x0 * scale, y0 * scale, x1 * scale, y1 * scale], fill=(*col, 45), outline=(*col, 255), width=line
        )
    page = Image.alpha_composite(page, overlay).convert("RGB")
    font = _font(18)
    lines = title.split("\n")
    bar = 8 + 24 * len(lines)
    panel = Image.new("RGB", (width, height + bar), (255, 255, 255))
    panel.paste(page, (0, bar))
    dd = ImageDraw.Draw(panel)
    for i, ln in enumerate(lines):
        dd.text((6, 4 + 24 * i), ln, fill=(0, 0, 0), font=font)
    return panel


def legend(labels: list[str], width: int) -> Any:
    from PIL import Image, ImageDraw

    font = _font(16)
    per_row = max(1, width // 170)
    rows = max(1, math.ceil(len(labels) / per_row))
    img = Image.new("RGB", (width, 12 + 26 * rows), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for i, lab in enumerate(labels):
        x, y = 8 + (i % per_row) * 170, 6 + (i // per_row) * 26
        d.rectangle([x, y + 2, x + 16, y + 18], fill=PALETTE[lab], outline=(0, 0, 0))
        d.text((x + 22, y + 1), lab, fill=(0, 0, 0), font=font)
    return img


def _boxes(b: Any) -> list[tuple[tuple[float, float, float, float], str]]:
    return [(tuple(x), TAXONOMY[int(lab)]) for x, lab in zip(b.xyxy.tolist(), b.label.tolist(), strict=True)]


def _f1(c: dict[str, float] | None) -> str:
    from entrypoints.newsbag.scoring import f1

    return "-" if c is None else f"{f1(c['tp'], c['pred'], c['ref']):.2f}"


def page_panels(
    records: dict[str, dict[str, Any]],
    consensus: dict[str, Any] | None,
    gt: dict[str, Any] | None,
    settings: Any,
) -> list[tuple[str, list, list | None]]:
    """(title, boxes, faint raw lines) per panel: truth, each variant as fused, the consensus."""
    from entrypoints.newsbag import fusion
    from entrypoints.newsbag.geometry import Boxes
    from entrypoints.newsbag.scoring import compare, label_rasters

    first = records[min(records)] if records else (consensus or gt)
    width, height = float(first["width"]), float(first["height"])
    panels: list[tuple[str, list, list | None]] = []
    g = ras = None
    if gt is not None:
        g = Boxes.from_record(gt, (width / gt["width"], height / gt["height"]))
        ras = label_rasters(g, width, height, settings.grid)
        panels.append(
            (f"GROUND TRUTH ({len(g)} blocks)\n{gt.get('condition') or ''}".rstrip(), _boxes(g), None)
        )
    res = fusion.fuse_page("p", records, settings, gt) if len(records) else None
    if records:
        keys, per_variant, _ = fusion.prepare(records, settings, width, height, "p")
        for k, b in zip(keys, per_variant, strict=True):
            r = records[k]
            line = r["granularity"] == "line"
            faint = [(x["x0"], x["y0"], x["x1"], x["y1"]) for x in r["boxes"]] if line else None
            what = f"{len(r['boxes'])} lines -> {len(b)} blocks" if line else f"{len(b)} blocks"
            nums = (
                f"F1 truth {_f1(res.gt_scores.get(k) if res and res.gt_scores else None)}  "
                f"agree {_f1(res.scores.get(k) if res else None)}"
            )
            panels.append((f"{k} ({what})\n{nums}", _boxes(b), faint))
    if consensus is not None:
        c = Boxes.from_record(consensus, (width / consensus["width"], height / consensus["height"]))
        nums = (
            f"F1 truth {_f1(compare(c, g, ras, width, height, settings.match_iou, settings.grid))}"
            if g is not None
            else "no ground truth"
        )
        panels.append((f"CONSENSUS ({len(c)} blocks, {consensus.get('variant')})\n{nums}", _boxes(c), None))
    return panels


def render_page(
    page_id: str,
    panels: list[tuple[str, list, list | None]],
    image_record: dict[str, Any],
    out: Path,
    *,
    panel_width: int = 720,
    cols: int = 3,
    head: str = "",
) -> str | None:
    """One PNG: the panels in a grid, a title line and the legend of the labels drawn."""
    from PIL import Image, ImageDraw

    base, why = _page_image(image_record)
    imgs = [draw_panel(base, boxes, title, panel_width, faint) for title, boxes, faint in panels]
    cols = max(1, min(cols, len(imgs)))
    rows = math.ceil(len(imgs) / cols)
    pw = max(p.width for p in imgs)
    ph = max(p.height for p in imgs)
    used = sorted({lab for _, boxes, _ in panels for _, lab in boxes} or {"other"}, key=TAXONOMY.index)
    leg = legend(used, cols * (pw + 8))
    top = 40
    sheet = Image.new("RGB", (cols * (pw + 8) + 8, top + rows * (ph + 8) + leg.height + 8), (235, 235, 235))
    title = f"page {page_id}" + (f"  -  {head}" if head else "") + (f"  -  {why}" if why else "")
    ImageDraw.Draw(sheet).text((8, 8), title, fill=(0, 0, 0), font=_font(22))
    for i, p in enumerate(imgs):
        sheet.paste(p, (8 + (i % cols) * (pw + 8), top + (i // cols) * (ph + 8)))
    sheet.paste(leg, (8, top + rows * (ph + 8)))
    with atomic_path(out, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG", compress_level=3)  # fast: noisy scans compress poorly anyway
    return why


def thumbnail(panels: list[tuple[str, list, list | None]], image_record: dict[str, Any], out: Path) -> None:
    """A legible index thumbnail: truth (if any) and consensus side by side, THUMB_PANEL px each."""
    from PIL import Image

    base, _ = _page_image(image_record)
    chosen = [p for p in panels if p[0].startswith(("GROUND TRUTH", "CONSENSUS"))] or panels[:1]
    imgs = [
        draw_panel(base, boxes, title.split("\n")[0], THUMB_PANEL, faint) for title, boxes, faint in chosen
    ]
    sheet = Image.new(
        "RGB", (sum(i.width for i in imgs) + 4 * len(imgs), max(i.height for i in imgs)), (235, 235, 235)
    )
    x = 0
    for im in imgs:
        sheet.paste(im, (x, 0))
        x += im.width + 4
    with atomic_path(out, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")


def summary_plot(
    variant_rows: list[dict[str, str]],
    accuracy: dict[str, Any] | None,
    page_rows: list[dict[str, str]],
    basis: str,
    out: Path,
) -> None:
    """Accuracy against truth (clean / degraded), leave-one-out agreement, disagreement histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, max(4.0, 0.5 * (len(variant_rows) + 2) + 1.8)))
    a, b, c = axes
    groups = [g for g in ("clean", "degraded") if accuracy and g in accuracy] or (["all"] if accuracy else [])
    if groups:
        systems = sorted(accuracy["all"], key=lambda k: accuracy["all"][k]["f1"])
        y = list(range(len(systems)))
        hgt = 0.8 / len(groups)
        colours = {"clean": "#0072b2", "degraded": "#d55e00", "all": "#0072b2"}
        for gi, grp in enumerate(groups):
            vals = [accuracy[grp].get(sname, {}).get("f1", 0.0) for sname in systems]
            n = accuracy[grp].get(systems[0], {}).get("pages", 0) if systems else 0
            a.barh(
                [v + (gi - (len(groups) - 1) / 2) * hgt for v in y],
                vals,
                height=hgt,
                color=colours[grp],
                label=f"{grp} ({n} pages)",
            )
        a.set_yticks(y, systems)
        a.set_xlim(0, 1)
        a.set_xlabel("F1 vs ground truth (IoU 0.5, same label)")
        a.set_title("accuracy against ground truth")
        a.legend(loc="lower right")
    else:
        a.text(0.5, 0.5, "no ground truth in this run", ha="center", va="center")
        a.set_axis_off()
    names = [f"{r['source']}/{r['variant']}" for r in variant_rows][::-1]
    agree = [float(r["agree_f1"]) if r.get("agree_f1", "-") != "-" else 0.0 for r in variant_rows][::-1]
    cov = [float(r["agree_coverage"]) if r.get("agree_coverage", "-") != "-" else 0.0 for r in variant_rows][
        ::-1
    ]
    y = list(range(len(names)))
    b.barh([v + 0.2 for v in y], agree, height=0.4, label="f1", color="#009e73")
    b.barh([v - 0.2 for v in y], cov, height=0.4, label="coverage", color="#e69f00")
    b.set_yticks(
        y,
        [
            f"{r['rank']}. {n}" if (r := variant_rows[::-1][i])["rank"] != "-" else n
            for i, n in enumerate(names)
        ],
    )
    b.set_xlim(0, 1)
    b.set_title("agreement with the other sources (leave-one-out)\nnumbers: leaderboard rank on its basis")
    b.legend(loc="lower right")
    dis = [float(r["disagreement"]) for r in page_rows]
    c.hist(dis or [0.0], bins=min(20, max(5, len(dis) // 2)), range=(0, 1), color="#cc79a7")
    c.set_xlabel("disagreement (1 - mean agreement)")
    c.set_ylabel("pages")
    c.set_title(f"per-page disagreement ({len(dis)} pages)")
    fig.suptitle(f"ranking basis: {basis}", fontsize=10, wrap=True)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def write_index(
    out: Path, top: list[dict[str, str]], files: dict[str, tuple[str, str]], run_dir: Path, k: int, basis: str
) -> None:
    rows = "\n".join(
        f'<tr><td>{i}</td><td><a href="pages/{html.escape(files[r["page_id"]][0])}">'
        f"{html.escape(r['page_id'])}</a></td><td>{html.escape(r.get('condition', '-'))}</td>"
        f"<td>{html.escape(r['disagreement'])}</td><td>{html.escape(r.get('consensus_gt_f1', '-'))}</td>"
        f"<td>{html.escape(r['mean_f1'])}</td><td>{html.escape(r['variants'])}</td>"
        f"<td>{html.escape(r['consensus_boxes'])}</td>"
        f'<td><a href="pages/{html.escape(files[r["page_id"]][0])}"><img src="thumbs/'
        f'{html.escape(files[r["page_id"]][1])}" loading="lazy"></a></td></tr>'
        for i, r in enumerate(top, 1)
        if r["page_id"] in files
    )
    text = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>newsbag review: top {k} informative pages</title>
<style>body{{font-family:sans-serif}} td{{vertical-align:top;padding:4px}} th{{text-align:left}}
tr:nth-child(even){{background:#f4f4f4}}</style>
</head><body>
<h1>newsbag review: the {len(files)} pages where sources disagree most</h1>
<p>Run: {html.escape(str(run_dir))}. Ranking basis: {html.escape(basis)}.</p>
<p>Disagreement = 1 - mean over variants of (f1 + coverage)/2 against the leave-one-out consensus.
consensus F1 = the fused page against its ground truth. Each page links to its full sheet: ground
truth, every variant as fusion scored it (text lines grouped into blocks, raw lines faint), the
consensus. Leaderboards: <code>outputs/fusion/variant_leaderboard.tsv</code>,
<code>outputs/fusion/accuracy.tsv</code>. Summary plot: <a href="../summary.png">summary.png</a>.</p>
<table><tr><th>#</th><th>page</th><th>condition</th><th>disagreement</th><th>consensus F1 vs truth</th>
<th>mean agreement F1</th><th>variants</th><th>consensus boxes</th><th>truth | consensus</th></tr>
{rows}
</table></body></html>
"""
    write_text(out, text)


def _settings(fusion_dir: Path) -> Any:
    from entrypoints.newsbag import fusion

    try:
        data = json.loads((fusion_dir / "fusion_complete.json").read_text())
        saved = (data.get("summary") or {}).get("settings") or {}
    except (OSError, ValueError):
        saved = {}
    s = fusion.Settings()
    for k, v in saved.items():
        if hasattr(s, k):
            setattr(s, k, v)
    return s


def review_run(run_dir: Path, *, run: Any, top_k: int = 20, panel_width: int = 720, cols: int = 3) -> dict:
    fusion_dir = run_dir / "outputs" / "fusion"
    scores = fusion_dir / "page_scores.tsv"
    if not scores.is_file():
        raise UserError(
            f"no fusion results ({scores} is missing)",
            where="review",
            fix="run the fusion app first with the same run_dir=",
        )
    if top_k < 1:
        raise UserError(f"top_k={top_k} must be at least 1", where="review", fix="pass top_k=20")
    if panel_width < 100:
        raise UserError(
            f"panel_width={panel_width} is too small to read",
            where="review",
            fix="pass panel_width=720 (pixels per panel; pages are never enlarged)",
        )
    if cols < 1:
        raise UserError(f"cols={cols} must be at least 1", where="review", fix="pass cols=3")
    settings = _settings(fusion_dir)
    summary: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((fusion_dir / "fusion_complete.json").read_text()).get("summary") or {}
    basis = str(summary.get("ranking_basis") or "unknown (fusion_complete.json missing)")
    page_rows = read_tsv(scores)
    top = page_rows[:top_k]
    wanted = {r["page_id"] for r in top}
    by_page: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for source, variant, page_id, path in iter_source_pages(run_dir):
        if page_id in wanted and source != "consensus":
            by_page[page_id].append((f"{source}/{variant}", path))
    out = run_dir / "review" / f"top{top_k}_informative"
    files: dict[str, tuple[str, str]] = {}
    with run.step("overlays", pages=len(top)):
        for i, r in enumerate(top, 1):
            pid = r["page_id"]
            records = {}
            for key, path in sorted(by_page.get(pid, [])):
                try:
                    records[key] = read_page(path)
                except ValueError as exc:
                    run.skip(f"{key}/{pid}", f"not drawn: {exc}")
            try:
                consensus = read_page(fusion_dir / "pages" / f"{pid}.json")
            except ValueError as exc:
                run.skip(f"consensus/{pid}", f"not drawn: {exc}")
                consensus = None
            if not records and consensus is None:
                run.skip(pid, "nothing to draw for this page")
                continue
            image_record = consensus or records[min(records)]
            gt = None
            gt_file = gt_path_for(image_record["image"])
            if gt_file.is_file():
                try:
                    gt = read_page(gt_file)
                except ValueError as exc:
                    run.skip(f"ground_truth/{pid}", f"truth panel not drawn: {exc}")
            panels = page_panels(records, consensus, gt, settings)
            name = f"{i:02d}_{pid}.png"
            head = (
                f"disagreement {r['disagreement']}, consensus F1 vs truth {r.get('consensus_gt_f1', '-')}, "
                f"{r.get('condition', '-')}"
            )
            why = render_page(
                pid, panels, image_record, out / "pages" / name, panel_width=panel_width, cols=cols, head=head
            )
            thumbnail(panels, image_record, out / "thumbs" / name)
            if why:
                run.skip(f"image/{pid}", why)
            files[pid] = (name, name)
            print(
                f"review: {i}/{len(top)} {pid} (disagreement {r['disagreement']})",
                file=sys.stderr,
                flush=True,
            )
    with run.step("index"):
        write_index(out / "index.html", top, files, run_dir, top_k, basis)
        run.output(out / "index.html")
    with run.step("summary"):
        vrows = (
            read_tsv(fusion_dir / "variant_leaderboard.tsv")
            if (fusion_dir / "variant_leaderboard.tsv").is_file()
            else []
        )
        summary_plot(vrows, summary.get("accuracy"), page_rows, basis, run_dir / "review" / "summary.png")
        run.output(run_dir / "review" / "summary.png")
    run.report["review"] = {"pages": [f[0] for f in files.values()], "dir": str(out)}
    return {"dir": out, "pages": {k: v[0] for k, v in files.items()}}


def run(cfg: Any, run: Any) -> int:
    """The ``review`` app."""
    run_dir = Path(str(cfg.run_dir))

    def whole(key: str, default: int) -> int:
        v = cfg.get(key, default)
        try:
            return int(v)
        except (TypeError, ValueError):
            raise UserError(
                f"{key}={v!r} is not a whole number", where="review", fix=f"pass {key}={default}"
            ) from None

    res = review_run(
        run_dir,
        run=run,
        top_k=whole("top_k", 20),
        panel_width=whole("panel_width", 720),
        cols=whole("cols", 3),
    )
    print(f"review: {len(res['pages'])} overlay pages in {res['dir'] / 'pages'}")
    print(f"review: open {res['dir'] / 'index.html'} ; summary plot {run_dir / 'review' / 'summary.png'}")
    return 0
