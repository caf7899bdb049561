"""How many Adam updates pure bf16 parameters lose to rounding (docs/results.md, bf16 capacity).

Trains one small model in bf16 on N uniform sequences, as memjax trains it, and after every call
of `--steps_per_call` steps takes one more optimizer step by hand: of the parameter entries whose
update is not zero, the fraction for which `bf16(p + u) == p` (the step is rounded away), next to
the training loss. The same model in bf16-mixed (bf16 compute, fp32 parameters: no update is
rounded away) and in fp32 shows the loss it would reach.

  python -m benchmarks.bf16_rounding                      # CPU, 1-3 minutes
  python -m benchmarks.bf16_rounding --lr 2e-3 --steps 2000 --dataset_size 128
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from memjax import likelihood
from memjax.model import gpt2
from memjax import train as train_lib


@functools.partial(jax.jit, static_argnums=(0, 1))
def _lost_and_nonzero(cfg, tcfg, state):
  one = train_lib.model_slice(state, 0)
  tokens = train_lib.batch_tokens(cfg, tcfg, one)
  grads = jax.grad(lambda p: likelihood.mean_loss(cfg, p, tokens, tcfg.vocab_chunk))(one.params)
  updates, _ = train_lib.make_optimizer(tcfg).update(grads, one.opt_state, one.params)
  new_params = optax.apply_updates(one.params, updates)
  lost = nonzero = 0
  for p, u, q in zip(*(jax.tree.leaves(t) for t in (one.params, updates, new_params))):
    lost += ((u != 0) & (q == p)).sum()
    nonzero += (u != 0).sum()
  return lost, nonzero


def lost_fraction(cfg, tcfg, state):
  """Fraction of the nonzero updates of model 0 that leave its parameters unchanged."""
  lost, nonzero = _lost_and_nonzero(cfg, tcfg, state)
  return int(lost) / max(int(nonzero), 1)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--vocab_size", type=int, default=128)
  ap.add_argument("--seq_len", type=int, default=32)
  ap.add_argument("--d_model", type=int, default=32)
  ap.add_argument("--dataset_size", type=int, default=128)
  ap.add_argument("--steps", type=int, default=2000)
  ap.add_argument("--steps_per_call", type=int, default=250)
  ap.add_argument("--lr", type=float, default=2e-3)
  args = ap.parse_args()
  print(f"device: {jax.devices()[0].device_kind}; L1 d{args.d_model} V={args.vocab_size} "
        f"S={args.seq_len} N={args.dataset_size}, AdamW lr {args.lr} (warmup 100, cosine to 0.1x)")
  for precision in ("bf16", "bf16-mixed", "fp32"):
    cfg = gpt2.ModelConfig(args.vocab_size, args.seq_len, 1, args.d_model, 2, precision)
    tcfg = dataclasses.replace(train_lib.TrainConfig(), steps=args.steps, batch_size=64,
                               learning_rate=args.lr, steps_per_call=args.steps_per_call)
    state = train_lib.init_stack_from_specs(
        cfg, tcfg, [train_lib.ModelSpec(args.dataset_size, 0, args.lr)])
    done = 0
    while done < tcfg.steps:
      k = train_lib.next_boundary(tcfg, done) - done
      state, losses = train_lib.train_steps(cfg, tcfg, state, k)
      done += k
      lr_now = float(train_lib.lr_schedule(args.lr, tcfg)(jnp.asarray(done)))
      lost = f"{lost_fraction(cfg, tcfg, state):7.1%}" if precision == "bf16" else "    n/a"
      print(f"{precision:>10} step {done:6d}  lr {lr_now:.2e}  train loss {float(losses[-1, 0]):.4f} "
            f"nats  updates rounded away {lost}")


if __name__ == "__main__":
  main()
