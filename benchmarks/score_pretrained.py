"""Scoring imported Pythia-shaped checkpoints: memjax against transformers, a stack against a loop.

Makes M random checkpoints of Pythia-70M's shape (GPT-NeoX: 6 layers, d_model 512, 8 heads,
V 50,304, rotary_pct 0.25, parallel residual) in a temporary directory with memjax's own writer
(`hf.write_neox`: no torch needed), reads them back with `hf.load_stack` and, for each case
(S tokens a sequence, B sequences a call), times:
  a. memjax scoring one checkpoint: `score.score_stack`, the path `python -m memjax.score` takes
     (memjax's likelihood kernel, the log-probabilities copied back to the host), on a stack of 1;
  b. transformers' own forward pass on the same checkpoint and sequences (GPTNeoXForCausalLM, fp32,
     torch.no_grad, its default attention), with the log-softmax and the gather of each target's
     log-probability that give the same numbers as a; skipped when torch or transformers is
     missing. The largest |log2 p| difference between a and b is printed as a check;
  c. the M checkpoints scored as one stack (one vmapped program, every model the same sequences)
     against the same M scored one after another through a (M calls, each timed, not
     extrapolated).
Each function is called once to compile and warm up (the compile time is reported), then each
round calls a, b, c-stack and c-loop once in turn, so all see the same load on a shared machine;
each reports its best round. Sequences a second counts model-sequences: B per call for a and b,
M * B for the stack and the loop.

  python -m benchmarks.score_pretrained                    # memjax rows only without torch
  /tmp/hfvenv/bin/python -m benchmarks.score_pretrained    # with transformers (torch) rows
  python -m benchmarks.score_pretrained --cases=64x16,2048x2 --models=8 --rounds=3 --out=r.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import tempfile
import time

import jax
import numpy as np

from memjax import score
from memjax.model import gpt_neox
from memjax.model import hf

PYTHIA_70M = gpt_neox.NeoXConfig(
    vocab_size=50304, seq_len=2048, layers=6, d_model=512, num_heads=8, intermediate_size=2048,
    rotary_pct=0.25, rotary_base=10000.0, use_parallel_residual=True, hidden_act="gelu")


@dataclasses.dataclass(frozen=True)
class Case:
  seq_len: int  # S: tokens a sequence
  batch: int  # B: sequences a call, per model


# A sequence of S=2048 costs ~40x one of S=64 on a CPU (measured: 1.7 s against 0.04 s on the
# 2-core machine), and the stack and the loop score it 8 times each a round: two sequences a call
# keep the default run (3 rounds) near 5 minutes there.
DEFAULT_CASES = (Case(64, 16), Case(2048, 2))


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def device_line() -> str:
  dev = jax.devices()[0]
  where = f"{cpu_name()}, {os.cpu_count()} cores" if dev.platform == "cpu" else dev.device_kind
  return f"{dev.platform}: {where}"


def random_params(cfg, seed: int):
  """Parameters of a fresh-looking model (weights N(0, 0.02), LayerNorm gains 1, biases 0) as
  numpy arrays in memjax's NeoX layout; each seed gives another model."""
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return np.ones(shape, np.float32)
    if name.endswith("['bias']"):
      return np.zeros(shape, np.float32)
    return (0.02 * rng.standard_normal(shape, np.float32)).astype(np.float32)

  shapes = gpt_neox.param_shapes(cfg)
  return jax.tree_util.tree_map_with_path(leaf, shapes, is_leaf=lambda x: isinstance(x, tuple))


def make_checkpoints(root: str, cfg, m: int) -> list[str]:
  """M checkpoint directories of cfg's shape, model i from seed i."""
  paths = []
  for i in range(m):
    path = os.path.join(root, f"ckpt{i}")
    hf.write_neox(path, cfg, random_params(cfg, i))
    paths.append(path)
  return paths


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def memjax_scorer(cfg, params_M, tokens_BxS):
  """A call that scores the B sequences under every model of params_M, as memjax.score does."""
  seqs = list(tokens_BxS)
  return lambda: score.score_stack(cfg, params_M, seqs, len(seqs))


def torch_scorer(path, tokens_BxS):
  """(call, note) of transformers' forward pass giving log2 p of tokens 1..S-1; call None and a
  note saying why when torch or transformers is missing."""
  try:
    import torch
    import transformers
  except ImportError as e:
    return None, f"skipped: {e.name} is not installed"
  transformers.utils.logging.disable_progress_bar()  # its weight-loading bar, a case each
  model = transformers.GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  ids = torch.as_tensor(np.asarray(tokens_BxS), dtype=torch.long)

  def call():
    with torch.no_grad():
      logp = torch.log_softmax(model(ids).logits.float()[:, :-1], -1)
      return (logp.gather(-1, ids[:, 1:, None])[..., 0] / math.log(2)).numpy()

  note = (f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, attention {model.config._attn_implementation}")
  return call, note


def run_case(cfg, params_M, singles, path0, case: Case, rounds: int, use_torch: bool, log):
  """The timings of one case (see the module docstring) as a dict."""
  m = len(singles)
  tokens_BxS = np.random.default_rng(case.seq_len).integers(
      0, cfg.vocab_size, (case.batch, case.seq_len)).astype(np.int32)
  one = memjax_scorer(cfg, singles[0], tokens_BxS)
  stack = memjax_scorer(cfg, params_M, tokens_BxS)
  loop_calls = [memjax_scorer(cfg, p, tokens_BxS) for p in singles]
  compile_one_s, mine = _timed(one)
  compile_stack_s, _ = _timed(stack)
  theirs_fn, note = torch_scorer(path0, tokens_BxS) if use_torch else (None, "skipped: --no_torch")
  diff = None
  if theirs_fn is not None:
    theirs = theirs_fn()  # warm-up, and the check
    diff = float(max(np.abs(a - b).max() for a, b in zip(mine[0], theirs)))
  best = {"one": math.inf, "torch": math.inf, "stack": math.inf, "loop": math.inf}
  for _ in range(rounds):
    best["one"] = min(best["one"], _timed(one)[0])
    if theirs_fn is not None:
      best["torch"] = min(best["torch"], _timed(theirs_fn)[0])
    best["stack"] = min(best["stack"], _timed(stack)[0])
    best["loop"] = min(best["loop"], sum(_timed(c)[0] for c in loop_calls))
  b = case.batch
  row = {
      "seq_len": case.seq_len, "batch": b, "models": m, "rounds": rounds,
      "compile_s": {"one": compile_one_s, "stack": compile_stack_s},
      "seconds": {k: (v if math.isfinite(v) else None) for k, v in best.items()},
      "memjax_seq_per_s": b / best["one"],
      "torch_seq_per_s": b / best["torch"] if theirs_fn is not None else None,
      "torch_note": note, "max_abs_logp2_diff": diff,
      "stack_seq_per_s": m * b / best["stack"], "loop_seq_per_s": m * b / best["loop"],
      "stack_vs_loop": best["loop"] / best["stack"],
  }
  log(f"S={case.seq_len} B={b}: memjax {row['memjax_seq_per_s']:.3g} seq/s (compile "
      f"{compile_one_s:.1f}s), transformers "
      f"{'n/a' if diff is None else format(row['torch_seq_per_s'], '.3g') + ' seq/s'}; stack of "
      f"{m} {row['stack_seq_per_s']:.3g} seq/s against {row['loop_seq_per_s']:.3g} one after "
      f"another ({row['stack_vs_loop']:.2f}x)"
      + ("" if diff is None else f"; max |log2 p diff| vs transformers {diff:.2e}"))
  return row


def run(cfg=PYTHIA_70M, cases=DEFAULT_CASES, models=8, rounds=3, use_torch=True, log=print,
        out=None):
  """Makes the checkpoints, times every case, prints the table and returns the report."""
  start = time.time()
  report = {"device": device_line(), "jax": jax.__version__, "model": hf.describe(cfg),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cases": [],
            # On a shared machine the other jobs' load decides the figures: say what it was.
            "load_avg_start": _load()}
  log(f"{report['device']}; jax {report['jax']}; {models} checkpoints of {report['model']}")
  with tempfile.TemporaryDirectory(prefix="score_pretrained") as root:
    write_s, paths = _timed(lambda: make_checkpoints(root, cfg, models))
    load_s, (_, params_M) = _timed(lambda: hf.load_stack(paths))
    report.update(write_s=write_s, load_stack_s=load_s)
    log(f"wrote {models} checkpoints in {write_s:.1f}s, read them as one stack in {load_s:.1f}s")
    singles = [jax.tree.map(lambda a, i=i: a[i:i + 1], params_M) for i in range(models)]
    for case in cases:
      if case.seq_len > cfg.seq_len:
        raise ValueError(f"--cases: S={case.seq_len} is longer than the context {cfg.seq_len}")
      report["cases"].append(run_case(cfg, params_M, singles, paths[0], case, rounds,
                                      use_torch, log))
      if out:
        with open(out, "w", encoding="utf-8") as f:
          json.dump(report, f, indent=2)
  report["wall_s"] = time.time() - start
  report["load_avg_end"] = _load()
  log(format_table(report))
  return report


def _load():
  """The 1-minute load average (runnable processes, all users), or None where there is none."""
  try:
    return round(os.getloadavg()[0], 2)
  except (AttributeError, OSError):
    return None


def format_table(report) -> str:
  notes = {r["torch_note"] for r in report["cases"]}
  lines = [f"device: {report['device']}; jax {report['jax']}; {report['date']}",
           f"model: {report['model']}; transformers: {'; '.join(sorted(notes))}",
           "| S | batch | memjax seq/s | transformers seq/s | memjax / transformers | "
           "max abs log2p diff | stack of M seq/s | one after another seq/s | stack / loop |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in report["cases"]:
    torch_s = r["torch_seq_per_s"]
    lines.append(
        f"| {r['seq_len']} | {r['batch']} | {r['memjax_seq_per_s']:.3g} | "
        f"{'n/a' if torch_s is None else format(torch_s, '.3g')} | "
        f"{'n/a' if torch_s is None else format(r['memjax_seq_per_s'] / torch_s, '.2f') + 'x'} | "
        f"{'n/a' if r['max_abs_logp2_diff'] is None else format(r['max_abs_logp2_diff'], '.1e')}"
        f" | {r['stack_seq_per_s']:.3g} (M={r['models']}) | {r['loop_seq_per_s']:.3g} | "
        f"{r['stack_vs_loop']:.2f}x |")
  lines.append(f"(best of {report['cases'][0]['rounds'] if report['cases'] else 0} rounds; "
               f"whole run {report.get('wall_s', 0):.0f}s; 1-minute load average "
               f"{report.get('load_avg_start')} at the start, {report.get('load_avg_end')} at "
               f"the end, on {os.cpu_count()} cores)")
  return "\n".join(lines)


def parse_cases(text: str) -> tuple[Case, ...]:
  try:
    cases = tuple(Case(*(int(x) for x in part.split("x"))) for part in text.split(","))
  except (TypeError, ValueError):
    raise argparse.ArgumentTypeError(f"must be SxB pairs such as 64x8,2048x1, got {text!r}")
  if not cases or any(c.seq_len < 2 or c.batch < 1 for c in cases):
    raise argparse.ArgumentTypeError(f"needs S >= 2 and B >= 1 in each SxB, got {text!r}")
  return cases


def _positive(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", type=parse_cases, default=DEFAULT_CASES,
                      help="SxB pairs: tokens a sequence x sequences a call (default 64x16,2048x2)")
  parser.add_argument("--models", type=_positive, default=8, help="checkpoints in the stack")
  parser.add_argument("--rounds", type=_positive, default=3, help="timed rounds (best kept)")
  parser.add_argument("--no_torch", action="store_true", help="memjax rows only")
  parser.add_argument("--out", default=None, help="also write the report as JSON here")
  args = parser.parse_args(argv)
  return run(PYTHIA_70M, args.cases, args.models, args.rounds, not args.no_torch, out=args.out)


if __name__ == "__main__":
  main()
