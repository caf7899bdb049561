"""Tables and matplotlib figures, rebuilt from results rows and the summary."""

from __future__ import annotations

import math
import os


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend, imported when a figure is first drawn
  (every experiment draws through this, so a config error never pays for the import)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save(fig, path, dpi=120):
  """Lay out, write and close a figure."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)


def capacity_table_text(summary) -> str:
  w = max([5] + [len(t["precision"]) for t in summary["models"]])
  # A learning-rate sweep picks the best rate like the best N; the table then names it.
  with_lr = len(summary.get("learning_rates", ())) > 1
  lines = [f"{'layers':>6} {'d_model':>7} {'prec':>{w}} {'params':>10} {'capacity_bits':>14} "
           f"{'+-seeds':>9} {'bits/param':>10} {'best_N':>8}" + (f" {'best_lr':>8}" * with_lr)]
  for t in summary["models"]:
    edge = "*" if t.get("best_at_largest_n") else " "
    lines.append(f"{t['layers']:>6} {t['d_model']:>7} {t['precision']:>{w}} {t['n_params']:>10,} "
                 f"{t['capacity_bits']:>14,.0f} {t['capacity_std']:>9,.0f} "
                 f"{t['bits_per_param']:>10.3f} {t['best_dataset_size']:>8,}{edge}"
                 + (f" {_rate(t.get('best_learning_rate')):>8}" if with_lr else ""))
  for prec, fit in summary["by_precision"].items():
    lines.append(f"alpha ({prec}): {fit['alpha_fit']:.3f} bits/param fitted through the origin; "
                 f"mean ratio {fit['alpha_mean']:.3f} +- {fit['alpha_std']:.3f} over shapes")
  if any(t.get("best_at_largest_n") for t in summary["models"]):
    lines.append("* the best N is the largest N tried: that capacity is a lower bound; add larger "
                 "dataset sizes")
  for t in summary["models"]:
    if t.get("points_left_out"):
      lines.append(f"{_shape_label(t)}: {t['points_left_out']} (N, learning rate) point(s) left "
                   f"out, completed by fewer than the {t['seeds_at_best']} of "
                   f"{t['num_seeds']} seeds behind the capacity (diverged or not yet trained)")
  for t in summary.get("shapes_left_out", ()):
    lines.append(f"{_shape_label(t)}: all {t['models']} models diverged or gave no finite "
                 "memorization; left out of the table and the fits")
  return "\n".join(lines)


def _rate(value) -> str:
  # As many digits as the rate has (up to 6): two swept rates must not print the same.
  return "-" if value is None else f"{value:g}"  # "-": rows written before rates were recorded


def _shape_label(row):
  return f"L{row['layers']} d{row['d_model']} {row['precision']}"


# The memorization axes are logarithmic: a point of 0 bits (a model that memorized nothing) is
# drawn at this floor instead of being dropped (this figure's and the text experiment's).
LOG_FLOOR_BITS = 1e-1


def plot_memorization(rows, summary, path):
  """Memorization against dataset size, one line per model shape of the summary's capacity table
  (at each N the seed-mean of the best learning rate), with the memorizable-bits diagonal
  N (S-1) log2 V (the first token of a sequence has no context, so no model can compress it).
  Memorization below LOG_FLOOR_BITS (0 bits) is drawn at that floor of the log axis."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.5))
  all_n = sorted({r["dataset_size"] for r in rows})
  for t in sorted(summary["models"], key=_shape_label):
    curve = {int(n): m for n, m in t["mem_bits_by_dataset_size"].items()}
    ns = sorted(curve)
    ax.plot(ns, [max(curve[n], LOG_FLOOR_BITS) for n in ns], marker="o", label=_shape_label(t))
  if all_n and rows:
    # Older rows carry only data_bits (N S log2 V).
    field = "memorizable_bits" if "memorizable_bits" in rows[0] else "data_bits"
    bits_per_seq = rows[0][field] / rows[0]["dataset_size"]
    ax.plot(all_n, [n * bits_per_seq for n in all_n], "k--", lw=1,
            label=field.replace("_", " "))
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("dataset size N (sequences)")
  ax.set_ylabel("memorization (bits, mean over seeds)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_capacity(summary, path):
  """Capacity against parameter count, per precision, with the fitted line through the origin."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for prec, fit in summary["by_precision"].items():
    models = [t for t in summary["models"] if t["precision"] == prec]
    params = [t["n_params"] for t in models]
    points = ax.errorbar(params, [t["capacity_bits"] for t in models],
                         yerr=[t["capacity_std"] for t in models], fmt="o", label=f"{prec}")
    if params and math.isfinite(fit["alpha_fit"]):
      xs = [0, max(params) * 1.05]
      # The fitted line in its points' colour, so each precision reads as one.
      ax.plot(xs, [x * fit["alpha_fit"] for x in xs], "--", color=points[0].get_color(),
              label=f"{prec}: {fit['alpha_fit']:.2f} bits/param")
  ax.set_xlabel("parameters")
  ax.set_ylabel("capacity (bits)")
  if summary["models"]:  # every shape diverged: an empty plot, without an empty legend
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_convergence(rows, path):
  """The convergence record: bits/param against training steps, a panel per model shape and a
  line per model (N, seed, rate), from the rows' curve_steps / curve_bits."""
  plt = pyplot()
  shapes = sorted({_shape_label(r) for r in rows if r.get("curve_steps")})
  fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False)
  for ax, shape in zip(axes[0], shapes):
    mine = sorted((r for r in rows if _shape_label(r) == shape and r.get("curve_steps")),
                  key=lambda r: (r["dataset_size"], r["seed"], r["learning_rate"]))
    for r in mine:
      ax.plot(r["curve_steps"], [b / r["n_params"] for b in r["curve_bits"]], marker=".",
              label=f"N={r['dataset_size']:,} s{r['seed']} b{r['batch_size']}")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor labels overlap over one decade
    ax.set_title(shape)
    ax.set_xlabel("training step")
    ax.set_ylabel("memorization (bits/param)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_capacity_figures(rows, summary, workdir):
  paths = [os.path.join(workdir, "memorization_vs_dataset_size.png"),
           os.path.join(workdir, "capacity_vs_params.png")]
  plot_memorization(rows, summary, paths[0])
  plot_capacity(summary, paths[1])
  if any(r.get("curve_steps") for r in rows):
    paths.append(os.path.join(workdir, "convergence.png"))
    plot_convergence(rows, paths[-1])
  return paths
