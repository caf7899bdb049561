"""An infini-gram index larger than the memory a process may use, queried; the exact index refused.

  sudo python -m benchmarks.ngram_out_of_memory --tokens=220M --limit_gib=1 --dir=/tmp/oom

Builds (once, outside any limit, kept in --dir) an infini-gram index of --tokens of the
byte-level Python source corpus of benchmarks/ngram_backends.py (about 222M bytes here), then
runs two children under a memory limit of --limit_gib (a cgroup: memory.limit_in_bytes of cgroup
v1 or memory.max of v2, so it needs root): one counts 100k 5-grams (drawn by the parent) on the
memory-mapped index (its pages are evictable page cache, so an index bigger than the limit still
answers), one builds the exact in-memory index of the same tokens (which must hold the corpus
and its sorted keys: the kernel kills it once they pass the limit). Prints both outcomes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks import ngram_backends


def _cgroup(limit_bytes: int) -> str:
  """A fresh memory cgroup with the limit; the path of its process list."""
  for base, limit_file, procs in (("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "tasks"),
                                  ("/sys/fs/cgroup", "memory.max", "cgroup.procs")):
    if os.path.exists(os.path.join(base, "cgroup.procs")) and os.access(base, os.W_OK):
      path = os.path.join(base, f"memjax_oom_{os.getpid()}")
      os.makedirs(path, exist_ok=True)
      with open(os.path.join(path, limit_file), "w") as f:
        f.write(str(limit_bytes))
      return os.path.join(path, procs)
  raise SystemExit("no writable memory cgroup (needs root and cgroup v1 or v2)")


def child(mode: str, tokens: int, index_dir: str) -> None:
  import numpy as np
  from memjax.estimators import infini_gram, ngram
  rows_KxN = np.load(os.path.join(os.path.dirname(index_dir), "queries.npy"))
  t0 = time.time()
  if mode == "query":
    counts_K = infini_gram.InfiniGramCounts(index_dir, 256).counts(rows_KxN)
    print(f"infini-gram: {len(rows_KxN):,} 5-gram counts in {time.time() - t0:.1f}s "
          f"(checksum {int(counts_K.sum())})", flush=True)
  else:
    tokens_T, lengths_D = ngram_backends.corpus(tokens)
    index = ngram.NgramIndex.build_from_flat(tokens_T, lengths_D, 5, 256, doc_index=False)
    print(f"exact: built in {time.time() - t0:.1f}s ({int(index.counts(rows_KxN).sum())})")


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--tokens", default="220M")
  p.add_argument("--limit_gib", type=float, default=1.0)
  p.add_argument("--dir", default="/tmp/memjax_ngram_oom")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  tokens = ngram_backends._tokens(args.tokens)[0]
  index_dir = os.path.join(args.dir, "index")
  if args.child:
    return child(args.child, tokens, index_dir)
  import numpy as np
  from memjax.estimators import infini_gram
  if not os.path.exists(index_dir):
    t0 = time.time()
    tokens_T, lengths_D = ngram_backends.corpus(tokens)
    infini_gram.build_index(tokens_T, lengths_D, 256, index_dir)
    np.save(os.path.join(args.dir, "queries.npy"), ngram_backends._query_rows(tokens_T, lengths_D))
    del tokens_T, lengths_D
    print(f"built the infini-gram index of {tokens:,} tokens in {time.time() - t0:.0f}s")
  disk = ngram_backends._dir_bytes(index_dir)
  procs = _cgroup(int(args.limit_gib * 2**30))
  print(f"index {disk / 2**30:.2f} GiB on disk; children limited to {args.limit_gib:g} GiB "
        f"({ngram_backends._machine()})", flush=True)
  for mode in ("query", "exact"):
    # The child joins the cgroup before it reads anything (preexec_fn runs in the child).
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ngram_out_of_memory", f"--tokens={args.tokens}",
         f"--dir={args.dir}", f"--child={mode}"],
        preexec_fn=lambda: open(procs, "w").write(str(os.getpid())), capture_output=True,
        text=True)
    out = proc.stdout.strip() or proc.stderr.strip()[-300:]
    killed = " (killed by the memory limit)" if proc.returncode == -9 else ""
    print(f"{mode}: exit {proc.returncode}{killed}: {out}", flush=True)


if __name__ == "__main__":
  main()
