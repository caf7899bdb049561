"""The engine's run: train one stack with checkpoints and resume, and share work over processes.

Every experiment trains its models through `train_stack`: the stack is sharded over the local
devices (padded with copies of its last model), checkpointed in its own directory every
train.checkpoint_every steps, at the experiment's `stops` and when a stop signal arrives, and
resumed from the newest good checkpoint when the command runs again; so a kill, even SIGKILL, costs
at most the steps since the last checkpoint. A checkpoint also holds what the experiment recorded
during training (a `Recorder`), so a resumed run scores as an uninterrupted one.

An experiment's work is a list of units (a stack, a width) each stored in the workdir when done
(`run_units`). With several processes (`jax.distributed`), unit i belongs to process
i % process_count (`Processes.owns`); every process then waits for the others (`barrier`) and
process 0 reads every stored unit and writes the report. The capacity sweep's chunks follow the
same rule, with per-process results files merged by row (engine/sweep.py).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from memjax import train as train_lib
from memjax.engine import checkpoint


class Recorder:
  """What an experiment records while a stack trains (e.g. scores at some steps); kept in the
  stack's checkpoints. `record(step, state, losses_M)` is called after every device call (with
  the own models' losses in it), `saved` gives a JSON-able dict for a checkpoint, and the
  constructor takes that dict back (None for a fresh stack)."""

  def __init__(self, saved: dict | None = None):
    self.saved_state = saved or {}

  def record(self, step: int, state, losses_M):
    pass

  def saved(self) -> dict:
    return self.saved_state


@dataclasses.dataclass
class TrainedStack:
  state: train_lib.StackState  # padded: the first n models are the stack's own
  n: int
  recorder: Recorder
  last_loss_M: list  # each own model's training loss in the last device call


def train_stack(shape, tcfg, specs: Sequence, ckpt_dir: str, keys: Sequence[str], *, label: str,
                quiet: bool = False, members=None, corpus_NxS=None, padded_size: int = 0,
                sharding=None, recorder=Recorder, stops=(), meta=None) -> TrainedStack:
  """Train `specs` as one stack (resuming from ckpt_dir), leaving a final checkpoint there.

  `keys` identify the models (a checkpoint of other models is not restored); `members`: one
  index array per model into `corpus_NxS` (text data), None for synthetic data; `sharding`: the
  model axis over the devices (None: over the local devices, at most one a model);
  `padded_size`: models on the devices (0: the next multiple of the device count);
  `recorder(saved)` makes the Recorder; `stops`: steps where a device call ends (for the recorder) and a checkpoint is
  saved. A stop signal saves a checkpoint and raises checkpoint.Interrupted. The caller deletes
  the checkpoints (checkpoint.ChunkCheckpoints(ckpt_dir).delete()) once it has stored what it
  scored.
  """
  n = len(specs)
  # No more devices than models: a padding copy on a spare device trains for nothing and takes
  # the core that XLA would otherwise give the other devices' work.
  sharding = sharding or train_lib.model_sharding(jax.local_devices()[:n])
  padded = train_lib.padded_to(list(specs), sharding.num_devices)
  padded += [specs[-1]] * (max(padded_size, len(padded)) - len(padded))
  padded_members = None if members is None else list(members) + [members[-1]] * (
      len(padded) - n)
  state = train_lib.init_stack_from_specs(shape, tcfg, padded, padded_members, sharding=sharding)
  ckpts = checkpoint.ChunkCheckpoints(ckpt_dir)
  expect = {"keys": list(keys)}
  done, finished, saved, losses = 0, False, None, [float("nan")] * n
  restored = ckpts.restore(state, n, expect=expect)
  if restored is not None:
    done, leaves, stored_meta = restored
    state = checkpoint.host_to_state(state, leaves, sharding)
    finished = bool(stored_meta.get("finished"))
    saved = stored_meta.get("recorded")
    losses = stored_meta.get("last_loss", losses)
    logging.info("%s: resuming from its checkpoint at step %d%s", label, done,
                 " (training finished)" if finished else "")
  rec = recorder(saved)

  def save(step, st, is_final=False):
    ckpts.save(step, st, n, {**(meta or {}), **expect, "finished": is_final,
                             "recorded": rec.saved(), "last_loss": losses})

  if not finished:
    state, done = _train_loop(shape, tcfg, state, n, done, label, quiet, rec, save, corpus_NxS,
                              stops, ckpt_dir, losses)
    save(done, state, is_final=True)  # a kill while scoring does not train again
  return TrainedStack(state, n, rec, losses)


def _train_loop(shape, tcfg, state, n, done, label, quiet, rec, save, corpus_NxS, stops,
                ckpt_dir, losses):
  """train.train from loop step `done` with a progress bar, checkpoints and stop signals;
  `losses` (the list the checkpoints save) holds the own models' losses of the last call."""
  tokens_per_step = tcfg.batch_size * shape.seq_len
  stops = tuple(stops)
  with tqdm(total=tcfg.steps, initial=done, desc=f"train {label}", unit="step", disable=quiet,
            leave=False, dynamic_ncols=True) as bar, checkpoint.StopSignals() as signals:
    last = {"t": time.time(), "done": done, "active": n}

    def progress(k, losses_M):
      losses[:] = [float(x) for x in np.asarray(losses_M)[:n]]

    def on_call(step, st):
      # Tokens a second of the models that trained in the call (padding copies left out).
      now, k = time.time(), step - last["done"]
      tok_s = last["active"] * tokens_per_step * k / max(now - last["t"], 1e-9)
      last.update(t=now, done=step, active=int(np.asarray(st.active_M)[:n].sum()))
      bar.update(k)
      rec.record(step, st, list(losses))
      postfix = f"loss {np.nanmean(losses):.3f}, {tok_s:,.0f} tok/s"
      if tcfg.saturation:
        frozen = int((np.asarray(st.saturation.saturated_step_M)[:n] >= 0).sum())
        postfix = f"saturated {frozen}/{n}, " + postfix
      bar.set_postfix_str(postfix, refresh=False)
      if step < tcfg.steps and (train_lib.checkpoint_due(tcfg, step - k, step) or step in stops):
        save(step, st)

    state, _ = train_lib.train(shape, tcfg, state, progress, corpus_NxS, start_step=done,
                               on_call=on_call, should_stop=lambda: signals.requested,
                               stops=stops)
    done = last["done"]
    if signals.requested:
      save(done, state)
      message = (f"interrupted at step {done} of {label}; checkpoint saved in {ckpt_dir}; run "
                 "the same command again to continue")
      logging.warning("%s", message)
      raise checkpoint.Interrupted(signals.signum, message)
  return state, done


def own_models(tree, n: int):
  """The first n models of a stacked pytree (the padding copies dropped), on the default device
  (where scoring runs)."""
  return jax.device_put(jax.tree.map(lambda a: a[:n], tree), jax.local_devices()[0])


# ---------------------------------------------------------------------------------------------
# Work shared over processes.


class Processes:
  """This process's index and the process count; unit i of a run belongs to i % count."""

  def __init__(self, index: int | None = None, count: int | None = None):
    self.index = jax.process_index() if index is None else index
    self.count = jax.process_count() if count is None else count

  def owns(self, unit_index: int) -> bool:
    return unit_index % self.count == self.index

  @property
  def writes_report(self) -> bool:
    return self.index == 0

  def barrier(self, name: str, hours: float = 24):
    """Wait for every process, as long as the slowest one trains. Its units can take very
    different times (3 units over 2 processes, or a resume where one has nothing left): a device
    collective gives up after Gloo's 30 s on CPUs, so this uses the coordination service's
    barrier with its own timeout."""
    if self.count == 1:
      return
    client = coordination_client(self.count)
    client.wait_at_barrier(name, timeout_in_ms=int(hours * 3600 * 1000))


def coordination_client(nproc):
  """The coordination service's client of a multi-process run, or None."""
  from jax._src import distributed  # the client jax.distributed.initialize() made
  return distributed.global_state.client if nproc > 1 else None


def dry_run_processes(process=None) -> Processes:
  """A dry run's processes: (index, count) from the process flags, which a dry run does not join
  (it would wait for every process); by default this process's own."""
  return Processes(*process) if process else Processes()


def unit_line(procs: Processes, i: int, label: str, shape, n_models: int, tcfg, status="") -> str:
  """A dry run's line of unit i: its shape, models, training tokens, status and process."""
  from memjax.model import hf
  tokens = n_models * tcfg.steps * tcfg.batch_size * shape.seq_len
  return (f"  {label}: {hf.n_params(shape):,} params, {n_models} model{'s' * (n_models != 1)}, "
          f"{tcfg.steps:,} steps of {tcfg.batch_size} sequences ({tokens:,} tokens at most)"
          f"{f'; {status}' if status else ''}{describe_owner(procs, i)}")


def describe_owner(procs: Processes, unit_index: int) -> str:
  """'process k' (and 'this one') for a dry run's plan; empty with one process."""
  if procs.count == 1:
    return ""
  owner = unit_index % procs.count
  return f"; process {owner}{' (this one)' if owner == procs.index else ''}"


def run_units(procs: Processes, count: int, load, compute, name: str) -> list | None:
  """The stored result of every unit of a run, computing this process's missing ones.

  `load(i, earlier)` gives unit i's stored result or None (`earlier`: stored by an earlier run,
  which the experiment may count; False: by another process of this run); `compute(i)` makes
  and stores it. Each process does its own units (i % process count), all wait for each other,
  then process 0 loads the rest and gets the list; the others get None (process 0 reports).
  """
  results = [None] * count
  for i in range(count):
    if procs.owns(i):
      results[i] = load(i, True)
      if results[i] is None:
        results[i] = compute(i)
  procs.barrier(f"memjax: every {name} done")
  if not procs.writes_report:
    return None
  for i in range(count):
    if results[i] is None:
      results[i] = load(i, False)
    if results[i] is None:
      raise RuntimeError(f"{name} {i} is not stored, though process {i % procs.count} ran it")
  return results


def other_process_line(count: int, what: str, start: float) -> str:
  """What a process other than 0 prints at the end of a multi-process run."""
  return (f"{count} {what} trained by process {jax.process_index()}; process 0 writes the "
          f"report ({time.time() - start:.0f}s)")
