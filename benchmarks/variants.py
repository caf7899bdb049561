"""Timing of kernel variants, to choose memjax's defaults (the profile step of issue 8).

Times a few training and scoring rows under each variant of the knobs that change only speed and
memory, not results: the attention implementation (`model.ATTENTION`), weight gradients with or
without written-out transposes (`model.EXPLICIT_TRANSPOSES`, `{"explicit_transposes": false}`;
the default writes them out on a CPU only), the fused Pallas kernel of the vocabulary projection
and log-softmax (`likelihood.KERNEL = "pallas"`: `{"kernel": "pallas"}`, its block sizes as
`{"pallas_blocks": [rows, vocab]}`; GPU rows only, since off a GPU it is interpreted), the logits
block that bounds the vocabulary chunk (`likelihood.LOGITS_BLOCK_ELEMENTS`), the previous
likelihood kernel as the reference (gather of target rows, scatter-add in the backward pass, a
scan even for one chunk), and how the stack's step is lifted over models: memjax's choice
(`train.stack_layout`), `jax.vmap` over all (`{"layout": "vmap"}`), `lax.map` one model after
another (`{"layout": "map"}`), or `jax.lax.map(..., batch_size=n)` (n models vectorized at a
time, the groups one after another; `{"map_group": n}`). Stacks here are on one device. Prints
one line per (row, variant) as it goes, and writes `--out` after each; starts no new variant once
`--budget_s` seconds have passed (the variants left are listed as skipped).

  python -m benchmarks.variants            # small CPU rows
  python -m benchmarks.variants --gpu      # the issue's GPU shapes
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time

import jax
import jax.numpy as jnp

from benchmarks import throughput
from memjax import fused_logprobs
from memjax import likelihood
from memjax.model import gpt2
from memjax import train as train_lib


# --- the kernel before issue 8, kept only as the baseline of this comparison -------------------
def _old_chunks(w_VxD, chunk):
  v, d = w_VxD.shape
  k = min(chunk, v)
  c = -(-v // k)
  w = jnp.pad(w_VxD, ((0, c * k - v), (0, 0))).reshape(c, k, d)
  return w, (jnp.arange(c * k) < v).reshape(c, k)


def _old_logits(h, w, valid):
  return jnp.where(valid, jnp.einsum("nd,kd->nk", h, w, preferred_element_type=jnp.float32),
                   -jnp.inf)


def _old_lse(h, w_VxD, chunk):
  w, valid = _old_chunks(w_VxD, chunk)
  if w.shape[0] == 1:
    return jax.nn.logsumexp(_old_logits(h, w[0], valid[0]), axis=-1)

  def body(carry, xs):
    m, s = carry
    logits = _old_logits(h, *xs)
    new_m = jnp.maximum(m, logits.max(-1))
    return (new_m, s * jnp.exp(m - new_m) + jnp.exp(logits - new_m[:, None]).sum(-1)), None

  n = h.shape[0]
  (m, s), _ = jax.lax.scan(body, (jnp.full((n,), -jnp.inf), jnp.zeros((n,))), (w, valid))
  return m + jnp.log(s)


def _old_target(h, w, t):
  return jnp.einsum("nd,nd->n", h, jnp.take(w, t, axis=0), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def old_target_logprobs(h, w, t, chunk=likelihood.DEFAULT_VOCAB_CHUNK):
  return _old_target(h, w, t) - _old_lse(h, w, chunk)


def _old_fwd(h, w, t, chunk):
  lse = _old_lse(h, w, chunk)
  return _old_target(h, w, t) - lse, (h, w, t, lse)


def _old_bwd(chunk, res, g):
  h, w_VxD, t, lse = res
  v, d = w_VxD.shape
  g = g.astype(jnp.float32)
  gh = g[:, None] * jnp.take(w_VxD, t, axis=0).astype(jnp.float32)
  gw = jnp.zeros((v, d), jnp.float32).at[t].add(g[:, None] * h.astype(jnp.float32))
  w, valid = _old_chunks(w_VxD, chunk)

  def body(gh, xs):
    wk, vk = xs
    gp = (g[:, None] * jnp.exp(_old_logits(h, wk, vk) - lse[:, None])).astype(h.dtype)
    gh = gh - jnp.einsum("nk,kd->nd", gp, wk, preferred_element_type=jnp.float32)
    return gh, -jnp.einsum("nk,nd->kd", gp, h, preferred_element_type=jnp.float32)

  gh, gwc = jax.lax.scan(body, gh, (w, valid))
  return gh.astype(h.dtype), (gw + gwc.reshape(-1, d)[:v]).astype(w_VxD.dtype), None


old_target_logprobs.defvjp(_old_fwd, _old_bwd)
# ------------------------------------------------------------------------------------------------

NEW_TARGET_LOGPROBS = likelihood.target_logprobs


def set_variant(variant):
  """Apply a variant's knobs (and drop compiled programs, which baked in the previous ones)."""
  gpt2.ATTENTION = variant.get("attention", "auto")
  gpt2.EXPLICIT_TRANSPOSES = variant.get("explicit_transposes")
  likelihood.LOGITS_BLOCK_ELEMENTS = variant.get("logits_block")
  likelihood.target_logprobs = (old_target_logprobs if variant.get("kernel") == "old"
                                else NEW_TARGET_LOGPROBS)
  likelihood.KERNEL = "pallas" if variant.get("kernel") == "pallas" else "xla"
  fused_logprobs.BLOCK_ROWS, fused_logprobs.BLOCK_VOCAB = variant.get("pallas_blocks", (64, 128))
  jax.clear_caches()


def time_fn(fn, state, calls):
  state, out = fn(state)
  jax.block_until_ready(out)
  best = math.inf
  for _ in range(calls):
    start = time.perf_counter()
    state, out = fn(state)
    jax.block_until_ready(out)
    best = min(best, time.perf_counter() - start)
  return best


@functools.partial(jax.jit, static_argnums=(0, 1, 3, 4), donate_argnums=(2,))
def mapped_train_steps(cfg, tcfg, state, num_steps, group):
  """train_steps with lax.map over groups of `group` models instead of one vmap over all."""
  step = lambda st: jax.lax.map(lambda s: train_lib.train_step(cfg, tcfg, s), st,
                                batch_size=group)
  return jax.lax.scan(lambda s, _: step(s), state, None, length=num_steps)


def train_row(cfg, batch, models, steps, calls, single=False, vocab_chunk=4096, group=0,
              layout=None):
  tcfg = train_lib.TrainConfig(steps=10**6, batch_size=batch, learning_rate=1e-3, warmup_steps=10,
                               steps_per_call=steps, vocab_chunk=vocab_chunk)
  specs = [train_lib.ModelSpec(100_000 + i, i, 1e-3) for i in range(models)]
  state = train_lib.init_stack_from_specs(cfg, tcfg, specs)
  if single:
    state = train_lib.model_slice(state, 0)
    fn = lambda s: train_lib.train_steps_single(cfg, tcfg, s, steps)
  elif group:
    fn = lambda s: mapped_train_steps(cfg, tcfg, s, steps, group)
  elif layout:
    forced = train_lib.StackLayout(sequential=layout == "map")
    fn = lambda s: train_lib.train_steps_in_layout(cfg, tcfg, s, steps, layout=forced)
  else:
    fn = lambda s: train_lib.train_steps(cfg, tcfg, s, steps)
  seconds = time_fn(fn, state, calls) / steps
  return seconds, models * batch * cfg.seq_len / seconds


def score_row(cfg, batch, models, calls, vocab_chunk=4096):
  """(seconds a call, model-sequences/s): `models` models each score the same `batch`."""
  specs = [train_lib.ModelSpec(1000, i, 1e-3) for i in range(models)]
  params = train_lib.init_stack_from_specs(cfg, train_lib.TrainConfig(), specs).params
  tokens = jax.random.randint(jax.random.key(0), (batch, cfg.seq_len), 0, cfg.vocab_size)
  fn = lambda s: (s, likelihood.shared_token_logprobs(cfg, params, tokens, vocab_chunk))
  seconds = time_fn(fn, None, calls)
  return seconds, models * batch / seconds


PALLAS = {"kernel": "pallas"}  # memjax.fused_logprobs, its default blocks
GPU_PLAN = [
    # (label, kind, (V, S, L, d, heads, precision), batch, models, steps, variants)
    ("L1 d32 @2048", "train", (2048, 64, 1, 32, 4, "bf16"), 2048, 16, 10,
     [{}, PALLAS, {**PALLAS, "pallas_blocks": (128, 64)}, {**PALLAS, "pallas_blocks": (32, 256)},
      {"kernel": "old"}, {"logits_block": 2**30}, {"logits_block": 2**26}]),
    ("L1 d32 @2048 single", "single", (2048, 64, 1, 32, 4, "bf16"), 2048, 1, 10, [{}, PALLAS]),
    ("L1 d32 @64", "train", (2048, 64, 1, 32, 4, "bf16"), 64, 256, 20,
     [{}, PALLAS, {"kernel": "old"}, {"attention": "cudnn"}, {"logits_block": 2**22},
      {"explicit_transposes": True}]),
    ("L1 d32 @64 single", "single", (2048, 64, 1, 32, 4, "bf16"), 64, 1, 20, [{}, PALLAS]),
    ("L8 d256 @2048", "train", (2048, 64, 8, 256, 4, "bf16"), 2048, 4, 5,
     [{}, PALLAS, {"attention": "cudnn"}, {"logits_block": 2**30}]),
    ("score V=50257", "score", (50257, 64, 1, 32, 4, "bf16"), 1024, 8, 0,
     [{}, PALLAS, {"logits_block": 2**26}, {"logits_block": 2**28}]),
    ("score V=2048", "score", (2048, 64, 1, 32, 4, "bf16"), 4096, 64, 0,
     [{}, PALLAS, {"logits_block": 2**30}]),
]
CPU_PLAN = [
    ("L1 d32 @8", "train", (256, 32, 1, 32, 2, "fp32"), 8, 8, 20,
     [{}, {"explicit_transposes": False}, {"kernel": "old"}, {"layout": "vmap"},
      {"layout": "map"}, {"map_group": 4}]),
    ("L1 d32 @8 single", "single", (256, 32, 1, 32, 2, "fp32"), 8, 1, 20,
     [{}, {"explicit_transposes": False}, {"kernel": "old"}]),
    ("L1 d32 @64", "train", (256, 32, 1, 32, 2, "fp32"), 64, 8, 10,
     [{}, {"explicit_transposes": False}, {"kernel": "old"}, {"layout": "vmap"},
      {"layout": "map"}, {"map_group": 4}]),
    ("L1 d32 @64 single", "single", (256, 32, 1, 32, 2, "fp32"), 64, 1, 10,
     [{}, {"explicit_transposes": False}, {"kernel": "old"}]),
    ("score V=2048", "score", (2048, 32, 1, 32, 2, "fp32"), 256, 8, 0,
     [{}, {"kernel": "old"}, {"logits_block": 2**24}]),
]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gpu", action="store_true", help="the issue's GPU shapes")
  parser.add_argument("--budget_s", type=throughput.positive(float), default=150.0,
                      help="start no new variant after this many seconds")
  parser.add_argument("--calls", type=throughput.positive(int), default=3,
                      help="timed calls per variant (each reports its best)")
  parser.add_argument("--out", help="write the results as JSON here")
  args = parser.parse_args(argv)
  throughput.check_out_path(parser, args.out)
  start = time.perf_counter()
  header = {"device": throughput.device_kind(), "devices_used": 1, "jax": jax.__version__,
            "commit": throughput.git_commit(), "date": time.strftime("%Y-%m-%d"),
            "calls": args.calls, "units": {"train": "tokens/s of the stack, best call",
                                           "single": "tokens/s of one model, best call",
                                           "score": "model-sequences/s (models x sequences "
                                                    "scored), best call"}}
  print(f"device: {header['device']} (one device)  jax {header['jax']}  commit "
        f"{header['commit']}", flush=True)
  results = []
  for label, kind, shape, batch, models, steps, variants in (GPU_PLAN if args.gpu else CPU_PLAN):
    for variant in variants:
      if time.perf_counter() - start > args.budget_s:
        print(f"{label} {variant}: skipped (over the time budget)", flush=True)
        results.append({"row": label, "kind": kind, "models": models, "variant": variant,
                        "skipped": "over the time budget"})
        continue
      set_variant(variant)
      cfg = gpt2.ModelConfig(*shape)
      t0 = time.perf_counter()
      try:
        if kind == "score":
          seconds, rate = score_row(cfg, batch, models, args.calls)
          unit = "model-seq/s"
        else:
          seconds, rate = train_row(cfg, batch, models, steps, args.calls, single=kind == "single",
                                    group=variant.get("map_group", 0),
                                    layout=variant.get("layout"))
          unit = "tok/s"
        line = f"{rate:.4g} {unit}  ({seconds * 1e3:.3f} ms a {'call' if kind == 'score' else 'step'})"
        results.append({"row": label, "kind": kind, "models": models, "variant": variant,
                        "seconds": seconds, "rate": rate, "unit": unit})
      except Exception as e:  # noqa: BLE001 - report and go on with the next variant
        line = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        results.append({"row": label, "kind": kind, "models": models, "variant": variant,
                        "error": line})
      print(f"{label:>20} M={models:<4} {json.dumps(variant):<32} {line}  "
            f"[{time.perf_counter() - t0:.1f}s]", flush=True)
      save(args.out, header, start, results)  # after each variant: a kill keeps the rest
  set_variant({})
  save(args.out, header, start, results)
  return results


def save(out, header, start, results):
  if out:
    with open(out, "w") as f:
      json.dump({**header, "seconds": time.perf_counter() - start, "results": results}, f,
                indent=2)


if __name__ == "__main__":
  main()
