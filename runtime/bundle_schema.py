"""bundle.json checked field by field before anything trusts it: one line per problem, naming the field,
what it holds and what is allowed. runtime/bundle.py raises them together as one BundleError."""

from __future__ import annotations

import math
import re

from .model_io import IN_GRAPH, LAYOUTS, MODEL_CHANNEL_ORDERS, OUTPUT_KINDS

SHA256 = re.compile(r"[0-9a-f]{64}")


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Problems(list):
    def need(self, where: str, value, ok: bool, allowed: str) -> bool:
        if not ok:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            self.append(f"{where} is {shown} ({_kind(value)}); expected {allowed}")
        return ok


def _tensor(problems: _Problems, where: str, spec, dtypes: tuple[str, ...]) -> None:
    if not problems.need(where, spec, isinstance(spec, dict), "an object with dtype, scale, zero_point"):
        return
    problems.need(f"{where}.dtype", spec.get("dtype", "float32"), spec.get("dtype", "float32") in dtypes,
                  f"one of {', '.join(dtypes)}")
    scale = spec.get("scale")
    problems.need(f"{where}.scale", scale, scale is None or (_is_number(scale) and scale >= 0), "a number >= 0 or null")
    zero = spec.get("zero_point")
    problems.need(f"{where}.zero_point", zero, zero is None or (_is_int(zero) and -2**31 <= zero < 2**31),
                  "an integer or null")


def _artifact(problems: _Problems, name, entry, formats, dtypes) -> None:
    where = f"artifacts[{name!r}]"
    if not problems.need(where, entry, isinstance(entry, dict), "an object (file, format, precision, sha256, bytes, ...)"):
        return
    file = entry.get("file")
    problems.need(f"{where}.file", file, isinstance(file, str) and file not in ("", ".", "..") and "/" not in file
                  and "\\" not in file and "\0" not in file, "a plain file name inside the bundle folder")
    problems.need(f"{where}.format", entry.get("format"), entry.get("format") in formats, f"one of {', '.join(formats)}")
    problems.need(f"{where}.precision", entry.get("precision"), isinstance(entry.get("precision"), str)
                  and bool(entry.get("precision")), "a precision name such as fp32 or int8")
    sha = entry.get("sha256")
    problems.need(f"{where}.sha256", sha, isinstance(sha, str) and bool(SHA256.fullmatch(sha)), "64 lowercase hex digits")
    size = entry.get("bytes")
    problems.need(f"{where}.bytes", size, _is_int(size) and size >= 0, "the file size as an integer")
    for role in ("input", "output"):
        if role in entry:
            _tensor(problems, f"{where}.{role}", entry[role], dtypes)
    problems.need(f"{where}.metrics", entry.get("metrics", {}), isinstance(entry.get("metrics", {}), dict), "an object")
    unknown = set(entry) - {"file", "format", "precision", "sha256", "bytes", "input", "output", "metrics"}
    problems.need(f"{where} keys", sorted(unknown), not unknown, "no others")


def _normalization(problems: _Problems, norm) -> None:
    """"in_graph", or {"mean": [...], "std": [...]} with 1 or 3 finite numbers each, std > 0."""
    if norm == IN_GRAPH:
        return
    if not problems.need("normalization", norm, isinstance(norm, dict) and set(norm) == {"mean", "std"},
                         f'"{IN_GRAPH}" or an object with mean and std'):
        return
    for key in ("mean", "std"):
        values = norm[key]
        ok = (isinstance(values, list) and len(values) in (1, 3)
              and all(_is_number(v) and math.isfinite(v) and (key == "mean" or v > 0) for v in values))
        problems.need(f"normalization.{key}", values, ok,
                      "1 or 3 finite numbers" + (" > 0" if key == "std" else "") + " (0-255 pixel units)")


def bundle_problems(data, formats: tuple[str, ...], dtypes: tuple[str, ...], versions: tuple[int, ...]) -> list[str]:
    """Every problem of a parsed bundle.json (empty when it is well formed)."""
    problems = _Problems()
    if not problems.need("bundle.json", data, isinstance(data, dict), "an object"):
        return problems
    problems.need("schema_version", data.get("schema_version"), data.get("schema_version") in versions,
                  f"one of {', '.join(map(str, versions))} (what this edgevision reads)")
    labels = data.get("labels")
    if problems.need("labels", labels, isinstance(labels, list) and len(labels) >= 2, "a list of at least 2 class names"):
        bad = [label for label in labels if not isinstance(label, str) or not label]
        problems.need("labels", bad, not bad, "non-empty strings only")
        problems.need("labels", labels, len(set(map(str, labels))) == len(labels), "no repeated name")
    preprocess = data.get("preprocess")
    if problems.need("preprocess", preprocess, isinstance(preprocess, dict), "an object (height, width, resize, interpolation)"):
        for key in ("height", "width"):
            problems.need(f"preprocess.{key}", preprocess.get(key), _is_int(preprocess.get(key))
                          and 1 <= preprocess.get(key) <= 4096, "an integer from 1 to 4096")
    spec = data.get("input")
    if problems.need("input", spec, isinstance(spec, dict), "an object (height, width, channels, channel_order, layout)"):
        for key in ("height", "width"):
            wanted = preprocess.get(key) if isinstance(preprocess, dict) else None
            problems.need(f"input.{key}", spec.get(key), spec.get(key) == wanted and _is_int(spec.get(key)),
                          f"preprocess.{key} ({wanted!r})")
        problems.need("input.channels", spec.get("channels"), spec.get("channels") == 3, "3")
        for key, allowed in (("channel_order", MODEL_CHANNEL_ORDERS), ("layout", LAYOUTS)):
            value = spec.get(key)
            problems.need(f"input.{key}", value, isinstance(value, str) and value.upper() in allowed,
                          f"one of {', '.join(allowed)}")
    _normalization(problems, data.get("normalization", IN_GRAPH))
    problems.need("output", data.get("output", OUTPUT_KINDS[0]), data.get("output", OUTPUT_KINDS[0]) in OUTPUT_KINDS,
                  f"one of {', '.join(OUTPUT_KINDS)}")
    artifacts = data.get("artifacts")
    if problems.need("artifacts", artifacts, isinstance(artifacts, dict) and len(artifacts) >= 1,
                     "an object of at least one artifact by name"):
        for name, entry in artifacts.items():
            _artifact(problems, name, entry, formats, dtypes)
        default = data.get("default_artifact")
        problems.need("default_artifact", default, isinstance(default, str) and default in artifacts,
                      f"one of the artifacts ({', '.join(map(str, artifacts))})")
    for key in ("provenance",):
        problems.need(key, data.get(key, {}), isinstance(data.get(key, {}), dict), "an object")
    golden = data.get("golden")
    if golden is not None and problems.need("golden", golden, isinstance(golden, dict), "an object or absent"):
        problems.need("golden.file", golden.get("file"), isinstance(golden.get("file"), str)
                      and "/" not in golden.get("file") and golden.get("file") not in ("", ".", ".."), "a plain file name")
        problems.need("golden.sha256", golden.get("sha256"), isinstance(golden.get("sha256"), str)
                      and bool(SHA256.fullmatch(golden.get("sha256"))), "64 lowercase hex digits")
        problems.need("golden.bytes", golden.get("bytes"), _is_int(golden.get("bytes")) and golden.get("bytes") >= 0,
                      "the file size as an integer")
    return list(problems)
