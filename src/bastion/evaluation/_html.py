"""The HTML report of an evaluation: one self-contained file a person reads.

CSS is inline and every plot is a PNG drawn with matplotlib's Agg canvas and embedded as a
``data:`` URL, so the file opens anywhere, offline, with no script and no external URL. All
text from the result (attack names, parameters, messages, class names) is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["render_html", "write_html"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;border-bottom:1px solid #d0d7de;
padding-bottom:.25em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f3f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-weight:600;
font-size:.85em;color:#fff}
.pass{background:#1a7f37}.warn{background:#9a6700}.fail{background:#cf222e}
.na{background:#6e7781}
.verdict{padding:10px 14px;border-radius:6px;margin:1em 0;font-weight:600}
.verdict.ok{background:#dafbe1;border:1px solid #1a7f37}
.verdict.bad{background:#ffebe9;border:1px solid #cf222e}
img.plot{max-width:100%;height:auto;border:1px solid #eaeef2}
code{background:#f0f3f6;padding:0 4px;border-radius:4px}
.muted{color:#57606a;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png(fig: Figure, alt: str) -> str:
    FigureCanvasAgg(fig)  # no display, no pyplot state
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    if isinstance(v, float):
        return _e(f"{v:.{digits}g}")
    return _e(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: int = 1) -> str:
    """A table; columns from ``numeric`` on are right-aligned. Cells are escaped unless
    they are ``_Raw``."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            text = c.text if isinstance(c, _Raw) else _e(c)
            cls = ' class="num"' if i >= numeric else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Raw:
    """Markup already escaped."""

    def __init__(self, text: str) -> None:
        self.text = text


def _pct(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


# ----------------------------------------------------------------------------- plots


def _curve_plot(result: Any) -> str:
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    eps = [0.0, *result.eps]
    acc = [result.clean_accuracy, *(r.robust_accuracy for r in result.results)]
    ax.plot(eps, acc, "o-", color="#0969da", label=f"robust accuracy ({result.suite})")
    if result.curve is not None:
        ax.step(
            result.curve["eps"],
            result.curve["robust_accuracy"],
            where="post",
            color="#cf222e",
            alpha=0.7,
            label="from minimal distances",
        )
    ax.set_xlabel(f"eps ({'Linf' if result.threat == 'linf' else 'L2'})")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _png(fig, "robust accuracy against eps")


def _per_class_plot(result: Any) -> str:
    classes = sorted({int(k) for r in result.results for k in r.per_class})
    fig = Figure(figsize=(max(6.4, 0.5 * len(classes) + 2), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(result.results))
    for k, r in enumerate(result.results):
        vals = [r.per_class.get(c, math.nan) for c in classes]
        xs = np.arange(len(classes)) + (k - (len(result.results) - 1) / 2) * width
        ax.bar(xs, np.nan_to_num(vals, nan=0.0), width, label=f"eps {r.eps:.4g}")
    ax.set_xticks(np.arange(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("class")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, ncol=min(4, len(result.results)))
    fig.tight_layout()
    return _png(fig, "per-class robust accuracy")


def _norm_plot(result: Any) -> str | None:
    key = "linf" if result.threat == "linf" else "l2"
    series = [(r.eps, np.asarray(getattr(r, key), dtype=float)) for r in result.results]
    series = [(e, v[np.isfinite(v)]) for e, v in series]
    if not any(len(v) for _, v in series):
        return None
    top = max([float(v.max()) for _, v in series if len(v)] + [e for e, _ in series])
    bins = np.linspace(0.0, 1.05 * top, 31).tolist()  # shared bins: the budgets compare at a glance
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    for e, v in series:
        if len(v):
            ax.hist(v, bins=bins, alpha=0.55, label=f"eps {e:.4g} ({len(v)})")
            ax.axvline(e, color="#57606a", linestyle=":", linewidth=1)
    ax.set_xlabel(f"{'Linf' if key == 'linf' else 'L2'} norm of successful perturbations")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig, "perturbation-norm histograms")


def _as_image(x: np.ndarray) -> tuple[np.ndarray, str | None] | None:
    """An array matplotlib shows, from one sample ``(C, H, W)``, ``(H, W)`` or ``(H, W, C)``."""
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = np.transpose(x, (1, 2, 0))
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        return x, "gray"
    if x.ndim == 3 and x.shape[-1] == 3:
        return x, None
    return None


def _gallery_plot(result: Any, class_names: Sequence[str] | None) -> str | None:
    if result.gallery_x is None or result.gallery_indices is None:
        return None
    rows = [r for r in result.results if r.gallery_x_adv is not None and len(r.gallery)]
    if not rows or _as_image(np.asarray(result.gallery_x[0])) is None:
        return None
    lo, hi = result.config.get("clip_values") or (None, None)
    pos = {int(i): k for k, i in enumerate(result.gallery_indices)}
    cols = max(len(r.gallery) for r in rows)

    def name(c: int) -> str:
        return class_names[c] if class_names is not None and c < len(class_names) else str(c)

    fig = Figure(figsize=(1.3 * cols + 0.6, 2.8 * len(rows)))
    axes = fig.subplots(2 * len(rows), cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, r in enumerate(rows):
        for j, i in enumerate(r.gallery):
            i = int(i)
            clean = _as_image(np.asarray(result.gallery_x[pos[i]]))
            adv = _as_image(np.asarray(r.gallery_x_adv[j]))
            if clean is None or adv is None:
                continue
            norm = {} if lo is None else {"vmin": lo, "vmax": hi}
            top, bottom = axes[2 * k, j], axes[2 * k + 1, j]
            top.imshow(
                np.clip(clean[0], lo, hi) if lo is not None else clean[0], cmap=clean[1], **norm
            )
            top.set_title(
                f"y={name(int(result.labels[i]))} pred {name(int(result.clean_prediction[i]))}",
                fontsize=7,
            )
            bottom.imshow(
                np.clip(adv[0], lo, hi) if lo is not None else adv[0], cmap=adv[1], **norm
            )
            bottom.set_title(
                f"eps {r.eps:.3g}: {name(int(r.adv_prediction[i]))}", fontsize=7, color="#cf222e"
            )
    fig.tight_layout()
    return _png(fig, "adversarial examples: clean (top) and adversarial (bottom)")


# ----------------------------------------------------------------------------- sections


def _health_section(result: Any) -> str:
    rows = []
    for h in result.health:
        cls = h.status if h.applicable else "na"
        badge = _Raw(f'<span class="badge {cls}">{_e(h.status)}</span>')
        rows.append(
            (_Raw(f"<code>{_e(h.code)}</code>"), badge, h.message, h.fix or "", f"{h.seconds:.2f}")
        )
    if not rows:
        return "<p>No health checks were run.</p>"
    return _table(("check", "status", "what it found", "suggested fix", "s"), rows, numeric=4)


def _config_section(result: Any) -> str:
    rows = [
        ("suite", result.suite),
        ("threat", result.threat),
        ("eps", ", ".join(f"{e:.6g}" for e in result.eps)),
        ("samples", len(result.labels)),
        ("classes", result.nb_classes),
    ]
    rows += [(str(k), v) for k, v in sorted(result.config.items())]
    out = _table(("setting", "value"), rows, numeric=9)
    attacks = [(a.get("label", ""), a.get("name", ""), a.get("params", {})) for a in result.attacks]
    out += "<h3>Attacks</h3>" + _table(("label", "attack", "parameters"), attacks, numeric=9)
    if result.defences:
        out += "<h3>Defences</h3>" + _table(
            ("key", "value"), sorted((str(k), v) for k, v in result.defences.items()), numeric=9
        )
    return out


def render_html(
    result: Any, *, class_names: Sequence[str] | None = None, title: str | None = None
) -> str:
    """The report of ``result`` as one self-contained HTML document.

    Parameters
    ----------
    result : EvaluationResult
    class_names : sequence of str, optional
        Names of the class indices, for the gallery and the per-class table.
    title : str, optional

    Returns
    -------
    str
    """
    title = title or f"bastion evaluation: {result.suite}"
    unit = "Linf" if result.threat == "linf" else "L2"
    verdict = (
        '<div class="verdict ok">Every health check passed or only warned. That rules out the '
        "failure modes they test for; it does not prove robustness.</div>"
        if result.reliable
        else '<div class="verdict bad">UNRELIABLE: a health check failed, so the robust '
        "accuracy below may be far too high. See the health checks.</div>"
    )
    acc_rows: list[tuple[Any, ...]] = [("0 (clean)", _pct(result.clean_accuracy), "", "")]
    for r in result.results:
        counts = dict(zip(*np.unique(r.broken_by, return_counts=True), strict=True))
        broken = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if k not in ("", "clean"))
        acc_rows.append(
            (
                f"{r.eps:.6g}",
                _pct(r.robust_accuracy),
                broken or "none",
                f"{sum(r.seconds.values()):.2f}",
            )
        )

    def name(c: int) -> str:
        return class_names[c] if class_names is not None and c < len(class_names) else str(c)

    classes = sorted({int(k) for r in result.results for k in r.per_class})
    support = np.bincount(np.asarray(result.labels, dtype=np.int64), minlength=result.nb_classes)
    class_rows = [
        (name(c), int(support[c]), *(_pct(r.per_class.get(c, math.nan)) for r in result.results))
        for c in classes
    ]
    norms = _norm_plot(result)
    gallery = _gallery_plot(result, class_names)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">{_e(len(result.labels))} samples, {_e(unit)} threat, suite '
        f"<code>{_e(result.suite)}</code>, seed {_e(result.config.get('random_state'))}.</p>",
        verdict,
        '<h2 id="accuracy">Robust accuracy</h2>',
        _table(("eps", "accuracy", "broken by", "attack s"), acc_rows),
        _curve_plot(result),
        '<h2 id="per-class">Per-class robust accuracy</h2>',
        _table(("class", "samples", *(f"eps {r.eps:.4g}" for r in result.results)), class_rows),
        _per_class_plot(result),
        '<h2 id="norms">Perturbation norms</h2>',
        norms or "<p>No attack succeeded: there is no perturbation to show.</p>",
        '<h2 id="gallery">Adversarial examples</h2>',
        gallery or "<p>No gallery: the data are not images, or no sample was broken.</p>",
        '<h2 id="health">Health checks</h2>',
        _health_section(result),
        '<h2 id="config">Configuration</h2>',
        _config_section(result),
        '<h2 id="versions">Versions and timings</h2>',
        _table(("library", "version"), sorted(result.versions.items()), numeric=9),
        _table(("step", "seconds"), [(k, f"{v:.2f}") for k, v in result.seconds.items()]),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_html(
    result: Any,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write :func:`render_html`'s document to ``path``; returns the path."""
    path = Path(path)
    path.write_text(render_html(result, class_names=class_names, title=title), encoding="utf-8")
    return path
