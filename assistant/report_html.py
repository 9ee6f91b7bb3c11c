"""The self-contained HTML report of `inspect`: inline CSS, thumbnails as base64 JPEG, no network."""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io

from PIL import Image

from .defect_kinds import kind_label

THUMB_SIDE = 160

_CSS = """
:root { --bad:#c62828; --bad-bg:#fdecea; --ok:#2e7d32; --ok-bg:#e8f5e9; --err:#8d6e00; --err-bg:#fff8e1;
        --line:#e2e5ea; --muted:#5f6b7a; }
* { box-sizing:border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin:0; color:#1d2430; background:#f6f7f9; }
header { background:#1d2430; color:#fff; padding:18px 28px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header .meta { color:#c4cad3; font-size:13px; }
main { padding:20px 28px 40px; }
.cards { display:flex; gap:14px; flex-wrap:wrap; margin-bottom:18px; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:12px 18px; min-width:150px; }
.card .n { font-size:28px; font-weight:700; }
.card .l { color:var(--muted); font-size:13px; }
.card.bad .n { color:var(--bad); } .card.ok .n { color:var(--ok); } .card.err .n { color:var(--err); }
.banner { background:var(--err-bg); border:1px solid #f1d27a; padding:10px 14px; border-radius:8px; margin-bottom:14px; }
.controls { margin:6px 0 10px; font-size:14px; color:var(--muted); }
.controls button { border:1px solid var(--line); background:#fff; border-radius:6px; padding:4px 10px; margin-right:6px; cursor:pointer; }
.controls button.on { background:#1d2430; color:#fff; border-color:#1d2430; }
table { border-collapse:collapse; width:100%; background:#fff; border:1px solid var(--line); border-radius:10px; overflow:hidden; }
th, td { padding:8px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; font-size:14px; }
th { background:#eef0f3; font-weight:600; position:sticky; top:0; }
th.sort { cursor:pointer; user-select:none; } th.sort:after { content:" \\2195"; color:#9aa3ae; }
td.thumb img { width:96px; height:auto; border-radius:4px; display:block; }
td.file { font-family: ui-monospace, Menlo, Consolas, monospace; font-size:13px; word-break:break-all; max-width:220px; }
td.answer { max-width:460px; color:#333; }
.badge { display:inline-block; padding:2px 9px; border-radius:999px; font-weight:600; font-size:12px; white-space:nowrap; }
.badge.bad { background:var(--bad-bg); color:var(--bad); } .badge.ok { background:var(--ok-bg); color:var(--ok); }
.badge.err { background:var(--err-bg); color:var(--err); }
.score { font-variant-numeric: tabular-nums; white-space:nowrap; }
.bar { position:relative; width:120px; height:6px; background:#e9ecef; border-radius:3px; margin-top:5px; }
.bar span { position:absolute; left:0; top:0; bottom:0; border-radius:3px; }
.bar i { position:absolute; left:50%; top:-3px; bottom:-3px; width:2px; background:#1d2430; }
a { color:#1f5fbf; }
h2 { font-size:17px; margin:28px 0 10px; }
.muted { color:var(--muted); }
"""

_JS = """
(function(){
  var table = document.getElementById('results'); if (!table) return;
  var body = table.tBodies[0];
  function key(row, col, type){ var v = row.cells[col].getAttribute('data-v'); if (v === null) v = row.cells[col].textContent;
    return type === 'num' ? (v === '' ? -Infinity : parseFloat(v)) : v.toLowerCase(); }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, col){
    if (!th.classList.contains('sort')) return;
    th.addEventListener('click', function(){
      var type = th.getAttribute('data-type'); var asc = th.getAttribute('data-dir') !== 'asc';
      th.setAttribute('data-dir', asc ? 'asc' : 'desc');
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function(a, b){ var x = key(a, col, type), y = key(b, col, type); return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
  document.querySelectorAll('.controls button').forEach(function(btn){
    btn.addEventListener('click', function(){
      document.querySelectorAll('.controls button').forEach(function(b){ b.classList.remove('on'); });
      btn.classList.add('on'); var show = btn.getAttribute('data-show');
      Array.prototype.forEach.call(body.rows, function(r){ r.style.display = (show === 'all' || r.getAttribute('data-kind') === show) ? '' : 'none'; });
    });
  });
})();
"""


def thumbnail_data_uri(image: Image.Image, side: int = THUMB_SIDE) -> str:
    picture = image.convert("RGB")
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _bar(score: float, threshold: float) -> str:
    fraction = max(0.0, min(1.0, score / max(2.0 * threshold, 1e-9)))
    colour = "var(--bad)" if score > threshold else "var(--ok)"
    return f'<div class="bar" title="threshold at the middle mark"><span style="width:{fraction * 100:.1f}%;background:{colour}"></span><i></i></div>'


def _positions(regions: list[dict]) -> str:
    if any("kind" in region or region.get("reference_area") for region in regions):  # each region on its own
        return ", ".join(_e(region["position"]) + (f": {_e(kind_label(region))}" if "kind" in region else "")
                         + _reference_place(region) for region in regions)
    counts: dict[str, int] = {}
    for region in regions:
        counts[region["position"]] = counts.get(region["position"], 0) + 1
    return ", ".join(_e(p) + (f" (&times;{n})" if n > 1 else "") for p, n in counts.items())


def _reference_place(region: dict) -> str:
    area = region.get("reference_area")
    if not area:
        return ""
    box = " ".join(str(v) for v in area["box"])
    return f" <span class='muted'>(reference {area['reference']}: {_e(area['position'])}, [{box}])</span>"


def _speed(summary: dict) -> str:
    if "images_per_second" not in summary:
        return ""
    workers = summary.get("workers", 1)
    return (f" &middot; {summary['images_per_second']} images/s"
            + (f" on {workers} workers" if workers > 1 else ""))


def render_report(rows: list, summary: dict) -> str:
    """Rows (inspect_cmd.Row) ordered by score, highest first; unreadable files listed separately."""
    scored = sorted((r for r in rows if not r.error), key=lambda r: -r.score)
    failed = [r for r in rows if r.error]
    n_bad = sum(1 for r in scored if r.anomalous)
    n_ok = len(scored) - n_bad
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    refs = summary.get("references") or []
    mode = f"{len(refs)} reference image{'s' if len(refs) != 1 else ''}" if refs else "zero-shot (no references)"
    if summary.get("profile"):
        mode = f"profile {summary['profile']}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Inspection report: {_e(summary.get('folder', ''))}</title><style>{_CSS}</style></head><body>",
        "<header><h1>Inspection report</h1>",
        f"<div class='meta'>{_e(summary.get('folder', ''))} &middot; class <b>{_e(summary.get('class_name', ''))}</b> &middot; "
        f"{_e(mode)} &middot; preset {_e(summary.get('preset', ''))} &middot; "
        f"{'LLM answers' if summary.get('llm') else 'template answers (no LLM)'} &middot; {when} &middot; "
        f"{summary.get('seconds', 0)} s{_speed(summary)}</div></header><main>",
    ]
    if summary.get("interrupted"):
        parts.append(f"<div class='banner'>Run interrupted: {summary.get('done')} of {summary.get('total')} images were inspected; "
                     "this report covers only those.</div>")
    if summary.get("threshold_note"):
        parts.append(f"<div class='banner'>{_e(summary['threshold_note'])}</div>")
    parts.append("<div class='cards'>")
    for css, number, label in (("", summary.get("total", len(rows)), "images"), ("bad", n_bad, "anomalous"),
                               ("ok", n_ok, "normal"), ("err", len(failed), "unreadable")):
        parts.append(f"<div class='card {css}'><div class='n'>{number}</div><div class='l'>{label}</div></div>")
    parts.append("</div>")
    if refs:
        parts.append("<p class='muted'>References: " + ", ".join(_e(r) for r in refs) + "</p>")

    parts.append("<div class='controls'>Show: <button class='on' data-show='all'>all</button>"
                 "<button data-show='bad'>anomalous</button><button data-show='ok'>normal</button>"
                 "<span>&nbsp;Click a column header to sort.</span></div>")
    parts.append("<table id='results'><thead><tr><th>Image</th><th class='sort' data-type='text'>File</th>"
                 "<th class='sort' data-type='text'>Decision</th><th class='sort' data-type='num' data-dir='desc'>Score / threshold</th>"
                 "<th>Where</th><th>Answer</th></tr></thead><tbody>")
    for row in scored:
        kind = "bad" if row.anomalous else "ok"
        label = "ANOMALOUS" if row.anomalous else "normal"
        image = f"<img src='{row.thumbnail}' alt='{_e(row.file)}' loading='lazy'>" if row.thumbnail else ""
        if row.overlay:
            image = f"<a href='{_e(row.overlay)}' title='open the full-size overlay'>{image}</a>"
        positions = _positions(row.regions) or "<span class='muted'>&ndash;</span>"
        parts.append(
            f"<tr data-kind='{kind}'><td class='thumb'>{image}</td><td class='file'>{_e(row.file)}</td>"
            f"<td data-v='{kind}'><span class='badge {kind}'>{label}</span></td>"
            f"<td class='score' data-v='{row.score:.6f}'>{row.score:.4f} / {row.threshold:.4f}{_bar(row.score, row.threshold)}</td>"
            f"<td>{positions}</td><td class='answer'>{_e(row.answer)}</td></tr>")
    parts.append("</tbody></table>")
    if failed:
        parts.append(f"<h2>Unreadable files ({len(failed)})</h2><table><thead><tr><th>File</th><th>Problem</th></tr></thead><tbody>")
        for row in failed:
            parts.append(f"<tr><td class='file'>{_e(row.file)}</td><td><span class='badge err'>error</span> {_e(row.error)}</td></tr>")
        parts.append("</tbody></table>")
    parts.append(f"</main><script>{_JS}</script></body></html>")
    return "\n".join(parts)
