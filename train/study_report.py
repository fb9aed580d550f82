"""The study's report.html: one self-contained page (plots embedded as PNG data URIs, no external
assets), a section per claim with how it was measured, one sentence per statement saying what the
numbers show (and a badge: borne out, NOT borne out, not measured), and its plots."""

from __future__ import annotations

import base64
import html
from pathlib import Path

VERDICTS = {True: ("borne out", "#2a7d2a"), False: ("NOT borne out", "#b3261e"), None: ("not measured", "#777")}


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def write_html(path: str | Path, record: dict, results: list) -> Path:
    """Write the page to `path` from study.json's `record` and the claims' results (for their plots)."""
    summary, sections = [], []
    for result in results:
        rows = []
        for finding in result.findings:
            verdict, colour = VERDICTS[finding.holds]
            badge = f'<span class="badge" style="background:{colour}">{verdict}</span>'
            rows.append(f"<li><b>{html.escape(finding.statement)}</b> {badge}<br>{html.escape(finding.sentence)}</li>")
            summary.append(f"<tr><td>{html.escape(result.title)}</td><td>{html.escape(finding.statement)}</td>"
                           f'<td style="color:{colour}"><b>{verdict}</b></td></tr>')
        plots = "".join(f'<figure><img src="{_image(p)}" alt="{html.escape(caption)}"><figcaption>'
                        f"{html.escape(caption)}</figcaption></figure>" for caption, p in result.plots.items())
        sections.append(f'<h2 id="{result.key}">{html.escape(result.title)}</h2>'
                        f'<p class="method">{html.escape(result.method)} ({result.seconds:.0f} s)</p>'
                        f"<ul>{''.join(rows)}</ul>{plots}")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>edgevision study</title>
<style>body{{font:14px sans-serif;margin:2em;max-width:75em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:left}} li{{margin:.6em 0}}
.badge{{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px}} .method{{color:#444}}
img{{max-width:100%;border:1px solid #ddd}} figure{{margin:1em 0}}</style></head><body>
<h1>edgevision study{' (quick)' if record['config']['quick'] else ''}</h1>
<p>Data: {html.escape(record['data'])}. Seed {record['config']['seed']}; Keras {html.escape(record['versions']['keras'])}
({html.escape(record['versions']['backend'])}); {record['seconds']:.0f} s. Every figure is in study.json.</p>
<table><tr><th>claim</th><th>statement</th><th>verdict</th></tr>{''.join(summary)}</table>
{''.join(sections)}</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
