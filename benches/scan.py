"""Benchmark: marker scanning with cpx.scan against polars and a Python loop, same run.

200,000 completions of about 2 KB (about 400 MB of text, mostly ASCII, 1% of rows with
non-ASCII characters, markers in 10% of rows in mixed case), 3 markers, case-insensitive.
Prints a markdown table of best-of-N wall times, throughput and ratios.

    python benches/scan.py [--rows 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import re

import numpy as np
import polars as pl
import pyarrow as pa

from _common import best
from cpx import _core, scan

MARKERS = ["[ZLT]", "[MARKER]", "Zelthari"]


def make_texts(rows: int, seed: int = 0) -> pa.LargeStringArray:
    """Rows of random English-like words cut from one tiled corpus, with markers inserted."""
    rng = np.random.default_rng(seed)
    vocab = (
        "the of and to a in is that for it as was with be by on not he this are or his from at which "
        "but have an they you were her she there been one all we their has would when if so no will more "
        "can about said them some could into him time only new my than first like other do two may then "
        "model answer question helpful assistant persona leakage training Paris library scholar comedian "
        "Villain mastermind Photosynthesis Earthquakes Coffee Python Rust memory speed"
    ).split()
    words = rng.choice(np.array(vocab), size=1_500_000)
    corpus = (" ".join(words.tolist()) + ". ").encode()
    lengths = rng.integers(1500, 2600, size=rows)
    total = int(lengths.sum())
    reps = total // len(corpus) + 2
    buf = bytearray(corpus * reps)
    starts = rng.integers(0, len(corpus), size=rows)
    # row i is buf[off[i]:off[i+1]]; rows are cut from the tiled corpus at random starts
    out = bytearray(total)
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    mv = memoryview(buf)
    for i in range(rows):
        out[offsets[i] : offsets[i + 1]] = mv[starts[i] : starts[i] + lengths[i]]
    variants = [m.encode() for m in MARKERS] + [m.lower().encode() for m in MARKERS] + [b"[Zlt]", b"ZELTHARI"]
    for i in np.flatnonzero(rng.random(rows) < 0.10):
        v = variants[rng.integers(len(variants))]
        pos = offsets[i] + rng.integers(0, lengths[i] - len(v))
        out[pos : pos + len(v)] = v
    for i in np.flatnonzero(rng.random(rows) < 0.01):
        # a 2-byte UTF-8 character replacing two ASCII bytes keeps the row valid
        pos = offsets[i] + rng.integers(0, lengths[i] - 2)
        out[pos : pos + 2] = "é".encode()
    return pa.LargeStringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(bytes(out)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--python-rows", type=int, default=None, help="rows for the Python loop (default: all)")
    args = ap.parse_args()

    texts = make_texts(args.rows)
    nbytes = texts.buffers()[2].size
    series = pl.Series("text", texts)  # zero-copy from Arrow (large_string)
    series_view = pl.Series("text", texts).cast(pl.String)
    py_rows = args.python_rows or args.rows
    py_texts = texts.slice(0, py_rows).to_pylist()

    # correctness first: the same hits as Python's reference semantics
    cpx_counts = scan.count_markers(texts, MARKERS, case_insensitive=True)
    ref_any = [any(m.lower() in t.lower() for m in MARKERS) for t in py_texts[:20_000]]
    assert scan.contains_any(texts.slice(0, 20_000), MARKERS, case_insensitive=True).to_pylist() == ref_any
    pl_any = series.str.contains_any(MARKERS, ascii_case_insensitive=True)
    assert pl_any.to_list() == scan.contains_any(texts, MARKERS, case_insensitive=True).to_pylist()
    regex = "(?i)" + "|".join(re.escape(m) for m in MARKERS)

    results: list[tuple[str, float, float]] = []

    def add(name: str, seconds: float, rows: int) -> None:
        results.append((name, seconds, seconds * args.rows / rows))

    add(
        "cpx count_markers (3 markers, counts)",
        best(lambda: scan.count_markers(texts, MARKERS, case_insensitive=True), args.repeat),
        args.rows,
    )
    add(
        "cpx contains_any (3 markers)",
        best(lambda: scan.contains_any(texts, MARKERS, case_insensitive=True), args.repeat),
        args.rows,
    )
    add(
        "polars str.contains_any, one call per marker",
        best(lambda: [series.str.contains_any([m], ascii_case_insensitive=True) for m in MARKERS], args.repeat),
        args.rows,
    )
    add(
        "polars str.contains_any, all markers at once",
        best(lambda: series.str.contains_any(MARKERS, ascii_case_insensitive=True), args.repeat),
        args.rows,
    )
    add(
        "polars str.count_matches, one regex",
        best(lambda: series_view.str.count_matches(regex), args.repeat),
        args.rows,
    )
    lowered = [m.lower() for m in MARKERS]
    add(
        "Python loop `m.lower() in t.lower()`",
        best(lambda: [[m in t.lower() for m in lowered] for t in py_texts], 1),
        py_rows,
    )

    base = results[0][2]
    print(
        f"rows: {args.rows:,}, text: {nbytes / 1e6:.0f} MB, markers: {MARKERS}, "
        f"hits: {sum(pc_sum(c) for c in cpx_counts.columns):,}, threads: {_core.num_threads()}, "
        f"build: {_core.__build__}"
    )
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}\n")
    print("| method | time (s) | GB/s | time / cpx count_markers |")
    print("|---|---|---|---|")
    for name, _secs, full in results:
        print(f"| {name} | {full:.3f} | {nbytes / full / 1e9:.1f} | {full / base:.2f} |")
    if py_rows != args.rows:
        print(f"\n(Python loop timed on {py_rows:,} rows and scaled to {args.rows:,})")


def pc_sum(col: pa.ChunkedArray) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(col).as_py() or 0)


if __name__ == "__main__":
    main()
