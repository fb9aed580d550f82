"""`edgevision evaluate --report DIR`: one self-contained HTML page (no external assets, opens offline)
with every artifact's figures, the confusion matrices drawn as shaded tables and the most confident
mistakes as thumbnails, plus evaluation.json."""

from __future__ import annotations

import base64
import html
import json
import os

import cv2
import numpy as np

from .atomic import atomic_directory

MAX_THUMBNAILS = 48


def _thumbnail(path: str, policy) -> str:
    """The picture as the model saw it (prepared), as a PNG data URI; empty if it cannot be read now."""
    from .preprocess import ImageDecodeError, load_and_prepare

    try:
        image = load_and_prepare(path, policy)
    except (ImageDecodeError, OSError):
        return ""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode() if ok else ""


def _confusion_table(confusion: list, labels: list[str]) -> str:
    matrix = np.asarray(confusion)
    rows = matrix.sum(axis=1, keepdims=True).clip(min=1)
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    body = []
    for i, label in enumerate(labels):
        cells = []
        for j, count in enumerate(matrix[i]):
            share = count / rows[i, 0]
            colour = f"rgba(40,120,200,{share:.2f})" if i == j else f"rgba(220,60,40,{share:.2f})"
            cells.append(f'<td style="background:{colour}" title="{count} of {rows[i, 0]}">{count}</td>')
        body.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells)}</tr>")
    return (f'<table class="cm"><tr><th>true \\ predicted</th>{head}</tr>{"".join(body)}</table>')


def write_report(evaluation, folder: str | os.PathLike, policy, overwrite: bool = False) -> str:
    """Write report.html and evaluation.json into `folder` (atomically); returns the page's path."""
    labels = evaluation.labels
    sections = []
    for score in evaluation.artifacts:
        per_class = "".join(
            f"<tr><td>{html.escape(label)}</td><td>{c['precision']:.2f}</td><td>{c['recall']:.2f}</td>"
            f"<td>{c['f1']:.2f}</td><td>{c['support']}</td></tr>" for label, c in score.per_class.items())
        mistakes = "".join(
            f'<figure><img src="{_thumbnail(m["path"], policy)}" alt=""><figcaption>{html.escape(m["true"])} → '
            f'{html.escape(m["predicted"])} ({m["score"]:.2f})<br><small>{html.escape(os.path.basename(m["path"]))}'
            f"</small></figcaption></figure>" for m in score.misclassified[:MAX_THUMBNAILS])
        agree = "" if score.agreement_with_first is None else f", agreement with the first artifact {score.agreement_with_first:.2%}"
        sections.append(
            f"<h2>{html.escape(score.artifact)} <small>({score.precision}, {score.engine})</small></h2>"
            f"<p>accuracy <b>{score.accuracy:.2%}</b>, top-{score.top_k} accuracy {score.top_k_accuracy:.2%}{agree}, "
            f"batch-1 latency {score.latency_ms_p50:.2f} ms</p>"
            f"{_confusion_table(score.confusion, labels)}"
            f"<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{per_class}</table>"
            f"<h3>{len(score.misclassified)} misclassified, most confident first</h3><div class=\"grid\">{mistakes}</div>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>edgevision evaluation</title>
<style>body{{font:14px sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}} .cm td{{min-width:2.5em}}
.grid{{display:flex;flex-wrap:wrap;gap:8px}} figure{{margin:0;text-align:center}}
img{{width:96px;height:96px;image-rendering:pixelated;border:1px solid #999}}</style></head><body>
<h1>edgevision evaluation</h1><p>{evaluation.images} images in {html.escape(str(evaluation.data_dir))},
{len(labels)} classes; {len(evaluation.skipped)} files skipped{'; no test images for ' + html.escape(', '.join(evaluation.missing_classes)) if evaluation.missing_classes else ''}.</p>
{''.join(sections)}</body></html>
"""
    with atomic_directory(folder, overwrite=overwrite) as staging:
        (staging / "report.html").write_text(page, encoding="utf-8")
        (staging / "evaluation.json").write_text(json.dumps(evaluation.to_dict(), indent=2))
    return os.path.join(os.fspath(folder), "report.html")
