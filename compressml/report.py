"""``report.html`` beside an evaluation's results.json: the RD plot, the tables, and per-image crops of
every codec at the same file size. One HTML file and a ``report/`` folder of PNG crops beside it
(relative links: the pair opens offline, copied anywhere together).
"""

from __future__ import annotations

import html
import math
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from compressml.fileio import atomic_write

CROP = 256  # side of the crops (pixels of the original)
CROP_CODECS = ("jpeg-420", "webp", "avif")  # classical codecs shown at the learned file's size


def crop_box(rgb: np.ndarray, side: int = CROP) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the ``side``-pixel window with the most detail (gradient energy,
    on a coarse grid): where codecs differ most."""
    h, w = rgb.shape[:2]
    ch, cw = min(side, h), min(side, w)
    grey = rgb.astype(np.float32).mean(axis=2)
    energy = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1, :]
    integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    best, where = -1.0, (0, 0)
    step = max(8, side // 8)
    for top in range(0, max(1, h - ch) + 1, step):
        for left in range(0, max(1, w - cw) + 1, step):
            b, r = min(top + ch - 1, integral.shape[0] - 1), min(left + cw - 1, integral.shape[1] - 1)
            total = integral[b, r] - integral[top, r] - integral[b, left] + integral[top, left]
            if total > best:
                best, where = float(total), (top, left)
    return where[0], where[1], ch, cw


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _table(headers: Sequence[str], rows: Sequence[Sequence], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _middle_points(result: dict) -> dict[str, str]:
    """For each lossy learned curve, the setting in the middle of its bpp range (shown in the crops)."""
    out = {}
    for name in result["learned"]:
        rows = sorted((r for r in result["averages"] if r["codec"] == name and r["exact"] < r["images"]), key=lambda r: r["bpp"])
        if rows:
            out[name] = str(rows[len(rows) // 2]["setting"])
    return out


def write_report(result: dict, out_dir: Path, images: Sequence, decoded: dict, codecs: Sequence) -> Path:
    """Write ``out_dir/report.html`` (and ``out_dir/report/*.png``). ``decoded`` maps (curve, setting,
    image name) to the learned decoded 8-bit RGB (for the images to show); ``codecs`` are the
    classical codecs measured (those of :data:`CROP_CODECS` among them are matched in size)."""
    folder = out_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    learned = set(result["learned"])
    sections = [
        f"<h1>compressml evaluation</h1><p>{len(result['images'])} image(s); bpp from the real files' sizes "
        "(headers included); PSNR and MS-SSIM on the 8-bit RGB reconstruction.</p>"
    ]
    if (out_dir / "rd.png").is_file():
        sections.append(
            "<h2>Rate-distortion</h2><p>Higher and further left is better: more quality for fewer bits. "
            'Learned curves bold, published references dashed.</p><img class="plot" src="rd.png" alt="RD plot">'
        )
    bd = [(ln, on, e) for ln, against in result["bd_rate"].items() for on, e in against.items() if len(result["curves"][ln]["bpp"]) > 1]
    if bd:
        fmt = lambda v: "n/a" if v is None else f"{v:+.1f} %"
        sections.append(
            "<h2>BD-rate</h2><p>The learned curve's average bit-rate difference at equal quality "
            "(negative: fewer bits than the other codec).</p>"
            + _table(
                ["learned", "against", "BD-rate PSNR", "BD-rate MS-SSIM"],
                [[ln, on, fmt(e.get("psnr")), fmt(e.get("ms_ssim_db"))] for ln, on, e in bd],
                "bdrate",
            )
        )
    if result.get("at_equal_bpp"):
        sections.append(
            "<h2>One-point curves at the same bpp</h2><p>A single learned point against each other curve's PSNR at its bpp "
            "(interpolated in log bpp).</p>"
            + _table(
                ["learned", "against", "bpp", "ours dB", "theirs dB", "difference"],
                [
                    [
                        e["learned"],
                        e["against"],
                        f"{e['bpp']:.3f}",
                        f"{e['psnr']:.2f}",
                        f"{e['their_psnr']:.2f}",
                        f"{e['delta_db']:+.2f} dB",
                    ]
                    for e in result["at_equal_bpp"]
                ],
                "equalbpp",
            )
        )
    if result.get("matched"):
        rows = []
        for row in result["matched"]:
            o = row["ours"]
            rows.append([row["learned"], row["setting"], f"{o['bpp']:.3f}", f"{o['psnr']:.2f}", f"{o['ms_ssim']:.4f}"])
            for name, m in row.items():
                if name not in ("learned", "setting", "ours"):
                    rows.append(
                        [
                            f"  {name}",
                            "same size",
                            *(
                                ("-", "cannot be that small", "")
                                if m is None
                                else (f"{m['bpp']:.3f}", f"{m['psnr']:.2f}", f"{m['ms_ssim']:.4f}")
                            ),
                        ]
                    )
        sections.append(
            "<h2>At the same file size</h2><p>Each image coded by the classical codec at its best quality "
            "whose file is no larger than ours.</p>" + _table(["codec", "setting", "bpp", "PSNR dB", "MS-SSIM"], rows, "matched")
        )
    sections.append(_crops(result, folder, images, decoded, [c for c in codecs if c.name in CROP_CODECS]))
    avg = sorted(result["averages"], key=lambda r: (r["codec"] not in learned, r["codec"], r["bpp"]))
    sections.append(
        "<h2>Averages per codec and setting</h2>"
        + _table(
            ["codec", "setting", "bpp", "PSNR dB", "MS-SSIM", "MS-SSIM dB", "encode s", "decode s"],
            [
                [
                    r["codec"],
                    r["setting"],
                    f"{r['bpp']:.3f}",
                    f"{r['psnr']:.2f}",
                    f"{r['ms_ssim']:.4f}",
                    f"{r['ms_ssim_db']:.2f}",
                    f"{r['encode_s']:.3f}",
                    f"{r['decode_s']:.3f}",
                ]
                for r in avg
            ],
            "averages",
        )
    )
    page = _PAGE.format(body="\n".join(sections))
    path = out_dir / "report.html"
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"), force=True)
    return path


def _crops(result, folder: Path, images, decoded, codecs) -> str:
    from compressml.baselines import match_size

    middle = _middle_points(result)
    shown = [im for im in images if any((c, s, im.name) in decoded for c, s in middle.items())]
    if not shown:
        return ""
    parts = [
        "<h2>Crops at the same file size</h2><p>For each image, the most detailed 256-pixel window: the original, "
        "each learned curve's middle point, and each classical codec at its best quality whose whole file is no "
        "larger than the learned one's.</p>"
    ]
    for k, image in enumerate(shown):
        top, left, ch, cw = crop_box(image.rgb)
        window = (slice(top, top + ch), slice(left, left + cw))
        tiles = [("original", image.rgb)]
        for curve, setting in middle.items():
            rgb = decoded.get((curve, setting, image.name))
            if rgb is None:
                continue
            rec = next(r for r in result["records"] if r["codec"] == curve and str(r["setting"]) == setting and r["image"] == image.name)
            tiles.append((f"{curve} [{setting}]: {rec['bytes']} bytes, {rec['bpp']:.3f} bpp, {rec['psnr']:.2f} dB", rgb))
            for codec in codecs:
                found = match_size(codec, image.rgb, rec["bytes"])
                if found is None:
                    tiles.append((f"{codec.name}: cannot be made {rec['bytes']} bytes small", None))
                    continue
                q, data = found
                other = codec.decode(data, image.rgb.shape[:2])
                bpp = 8 * len(data) / image.pixels
                tiles.append((f"{codec.name} q{q}: {len(data)} bytes, {bpp:.3f} bpp, {_psnr(other, image.rgb):.2f} dB", other))
        cells = []
        for j, (caption, rgb) in enumerate(tiles):
            if rgb is None:
                cells.append(f'<figure class="missing"><figcaption>{html.escape(caption)}</figcaption></figure>')
                continue
            name = f"crop{k:02d}_{j:02d}.png"
            Image.fromarray(np.ascontiguousarray(rgb[window])).save(folder / name)
            cells.append(
                f'<figure><img src="report/{name}" width="{cw}" height="{ch}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append(f'<h3>{html.escape(image.name)} (window at x={left}, y={top})</h3><div class="crops">{"".join(cells)}</div>')
    return "\n".join(parts)


def write_sr_report(result: dict, out_dir: Path) -> Path:
    """``out_dir/report.html`` of a super-resolution evaluation: the averages and, per image, the crops
    row that evaluate_sr saved (``crops/<image>.png``: each method, then the ground truth)."""
    scale = result["scale"]
    rows = [
        [
            m,
            f"{a['psnr_y']:.2f}",
            f"{a['ssim_y']:.4f}",
            f"{a['psnr_rgb']:.2f}",
            f"{result['megapixels_per_s'][m]:.2f}" if m in result["megapixels_per_s"] else "-",
        ]
        for m, a in result["averages"].items()
    ]
    sections = [
        f"<h1>compressml super-resolution evaluation (x{scale})</h1><p>{len({r['image'] for r in result['images']})} image(s): "
        f"PSNR and SSIM on the luma (Y) channel with a border of {scale} pixels cropped, PSNR on RGB; throughput in output "
        "megapixels per second.</p>",
        "<h2>Averages</h2>" + _table(["method", "Y-PSNR dB", "Y-SSIM", "RGB PSNR dB", "MP/s"], rows, "averages"),
        "<h2>Crops</h2><p>The most detailed window of each image, left to right: "
        + html.escape(", ".join(result["methods"]))
        + ", ground truth.</p>",
    ]
    for name in dict.fromkeys(r["image"] for r in result["images"]):
        crop = f"crops/{name.replace('/', '_').replace('.', '_')}.png"
        if (out_dir / crop).is_file():
            src = html.escape(urllib.parse.quote(crop))
            sections.append(f'<h3>{html.escape(name)}</h3><img src="{src}" alt="{html.escape(name)}">')
    path = out_dir / "report.html"
    atomic_write(path, lambda tmp: tmp.write_text(_PAGE.format(body="\n".join(sections)), encoding="utf-8"), force=True)
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>compressml evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; white-space: pre; }}
summary {{ margin: 1em 0; cursor: pointer; }}
img.plot {{ max-width: 100%; }}
.crops {{ display: flex; flex-wrap: wrap; gap: 0.8em; }}
figure {{ margin: 0; width: 256px; }}
figure img {{ image-rendering: pixelated; border: 1px solid #999; }}
figcaption {{ font-size: 0.8em; }}
</style></head><body>
{body}
</body></html>
"""
