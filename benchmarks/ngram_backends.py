"""Exact (in-memory) vs infini-gram n-gram counts: build time, disk, peak memory, query time.

  python -m benchmarks.ngram_backends --tokens=10M,100M [--out=report.json]

The corpus is real text that needs no download: the Python source files of this interpreter's
standard library, then of its installed packages (sorted by path, one document a file), tokenized
byte-level (token = byte, V = 256, so the infini-gram index is u16). Each (backend, size) runs in
a subprocess of its own, so that its peak RSS is its own: the process's (with the corpus, loaded
before the build: its own column) and its children's (the wheel's builder, for infini-gram). Queries: 100k 5-grams at random positions of the corpus, counted with
`counts` (the exact index's lookups; for infini-gram, memjax's batched search of the suffix array
and, in its own column, the engine's `count`, one C++ call per distinct 5-gram; both must agree).
The exact index is built as the experiments build it (max_n=5, no document lists); its disk
column is its .npz (memjax keeps it in memory; nothing is written by the experiments).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np

QUERIES = 100_000
QUERY_N = 5


def corpus(num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """(bytes of Python source files as int32 tokens, document lengths), num_tokens in all."""
  paths = []
  stdlib, purelib = sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]
  for root in (stdlib, purelib):
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames.sort()
      if root == stdlib and "site-packages" in dirpath:
        continue
      paths += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
  chunks, total = [], 0
  for p in paths:
    with open(p, "rb") as f:
      data = np.frombuffer(f.read(), np.uint8)[: num_tokens - total]
    if data.size:
      chunks.append(data)
      total += data.size
    if total >= num_tokens:
      break
  if total < num_tokens:
    raise SystemExit(f"--tokens: only {total:,} bytes of Python source here, {num_tokens:,} asked")
  return np.concatenate(chunks).astype(np.int32), np.array([c.size for c in chunks], np.int64)


def _query_rows(tokens_T, lengths_D, seed=0):
  """QUERIES 5-grams starting at random positions that leave 5 tokens in their document."""
  ends_D = np.cumsum(lengths_D)
  picks = np.random.default_rng(seed).integers(0, tokens_T.size, 2 * QUERIES)
  # small arrays only: the corpus is what the peak RSS should hold besides the index
  fits = ends_D[np.searchsorted(ends_D, picks, "right")] - picks >= QUERY_N
  return tokens_T[picks[fits][:QUERIES, None] + np.arange(QUERY_N)]


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def measure(backend: str, num_tokens: int) -> dict:
  """One (backend, size) in this process: the numbers of one table row."""
  from memjax.estimators import infini_gram
  from memjax.estimators import ngram
  tokens_T, lengths_D = corpus(num_tokens)
  rows_KxN = _query_rows(tokens_T, lengths_D)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  work = tempfile.mkdtemp(prefix="ngram_bench_")
  try:
    t0, c0 = time.time(), os.times()
    if backend == "exact":
      index = ngram.NgramIndex.build_from_flat(tokens_T, lengths_D, QUERY_N, 256, doc_index=False)
    else:
      index_dir = infini_gram.build_index(tokens_T, lengths_D, 256, os.path.join(work, "index"))
    build_s, c1 = time.time() - t0, os.times()
    cpu_s = sum(c1[i] - c0[i] for i in range(4))  # user + system, this process and children
    if backend == "exact":
      path = os.path.join(work, "index.npz")
      index.save(path)
      disk = os.path.getsize(path)
    else:
      disk = _dir_bytes(index_dir)
      index = infini_gram.InfiniGramCounts(index_dir, 256)
    t0 = time.time()
    counts_K = index.counts(rows_KxN)
    query_s = time.time() - t0
    engine_s = None
    if backend != "exact":  # the same queries through the engine's own count, one call each
      t0 = time.time()
      engine_K = infini_gram.InfiniGramCounts(index_dir, 256, queries="engine").counts(rows_KxN)
      engine_s = round(time.time() - t0, 2)
      assert (engine_K == counts_K).all(), "numpy search and engine counts differ"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    builder_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return {"backend": backend, "tokens": num_tokens, "docs": int(lengths_D.size),
          "build_s": round(build_s, 1), "build_cpu_s": round(cpu_s, 1), "disk_bytes": disk,
          "peak_rss_bytes": peak * 1024, "corpus_rss_bytes": rss_before * 1024,
          "builder_peak_rss_bytes": builder_peak * 1024,
          "query_s": round(query_s, 2), "query_engine_s": engine_s, "queries": QUERIES,
          "checksum": int(counts_K.sum())}


def _machine() -> str:
  load = os.getloadavg()[0]
  return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"load {load:.1f} at start")


def table(rows) -> str:
  lines = [f"{'tokens':>8} {'backend':>11} {'build':>7} {'CPU':>7} {'disk':>9} {'peak RSS':>9} "
           f"{'of it corpus':>12} {'builder':>8} {'100k 5-gram counts':>19} {'(engine count)':>14}"]
  for r in rows:
    engine = "" if r["query_engine_s"] is None else f"{r['query_engine_s']:.2f}s"
    lines.append(f"{r['tokens'] / 1e6:>7.0f}M {r['backend']:>11} {r['build_s']:>6.1f}s "
                 f"{r['build_cpu_s']:>6.1f}s {r['disk_bytes'] / 2**30:>7.2f}G "
                 f"{r['peak_rss_bytes'] / 2**30:>8.2f}G {r['corpus_rss_bytes'] / 2**30:>11.2f}G "
                 f"{r['builder_peak_rss_bytes'] / 2**30:>7.2f}G {r['query_s']:>18.2f}s "
                 f"{engine:>14}")
  return "\n".join(lines)


def _tokens(text: str) -> list[int]:
  scale = {"K": 10**3, "M": 10**6, "G": 10**9}
  return [int(float(t[:-1]) * scale[t[-1]]) if t[-1] in scale else int(t)
          for t in text.split(",")]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", default="10M", help="corpus sizes, e.g. 10M,100M")
  parser.add_argument("--backends", default="exact,infini_gram")
  parser.add_argument("--out", default="")
  parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # "backend:tokens", internal
  args = parser.parse_args(argv)
  if args.one:
    backend, n = args.one.split(":")
    print(json.dumps(measure(backend, int(n))))
    return
  machine, rows = _machine(), []
  for n in _tokens(args.tokens):
    for backend in args.backends.split(","):
      out = subprocess.run([sys.executable, "-m", "benchmarks.ngram_backends",
                            f"--one={backend}:{n}"], capture_output=True, text=True)
      if out.returncode:
        raise SystemExit(f"{backend} at {n:,} tokens failed: {out.stderr[-2000:]}")
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(table(rows[-1:]).splitlines()[-1], flush=True)
  report = {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rows": rows}
  same = {r["tokens"]: r["checksum"] for r in rows if r["backend"] == "exact"}
  assert all(same.get(r["tokens"], r["checksum"]) == r["checksum"] for r in rows), \
      "the backends' query counts differ"
  print(f"\n{machine}, {report['date']}\n{table(rows)}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
