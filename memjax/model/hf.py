"""Hugging Face checkpoint directories in and out: GPT-2 and GPT-NeoX (Pythia).

A checkpoint directory holds config.json and model.safetensors (or the shards that
model.safetensors.index.json lists; pytorch_model.bin is read only when torch is installed), and
usually tokenizer.json. `read_config` turns config.json into a memjax model config,
`load_params` one directory into memjax parameters, `load_stack` several directories of one
shape into one stacked pytree (leading model axis M), reading one checkpoint at a time into
arrays allocated once for the whole stack. `write_gpt2` writes a memjax GPT-2 back out in the
layout `transformers.GPT2LMHeadModel.from_pretrained` reads, `write_neox` a GPT-NeoX.

Layouts: GPT-2's Conv1D weights are stored [in, out], as memjax's Dense kernels, and its output
layer is the token embedding (tied); GPT-NeoX's Linear weights are stored [out, in] and are
transposed, and its output layer `embed_out` is a separate matrix.

Every bad input raises `CheckpointError`, one line that names the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy, so safetensors reads BF16 tensors
import numpy as np

from memjax.model import gpt2
from memjax.model import gpt_neox

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TOKENIZER_FILE = "tokenizer.json"
ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "GPTNeoXForCausalLM": "gpt_neox"}
PRECISIONS = tuple(gpt2.PRECISIONS)


class CheckpointError(ValueError):
  """A checkpoint directory memjax cannot import; the message is one line naming the file."""


# ---------------------------------------------------------------------------------------------
# config.json -> a model config.


def _read_json(path):
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file (a Hugging Face checkpoint directory holds "
                          "config.json and model.safetensors)")
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: does not parse as JSON ({e})") from e
  if not isinstance(value, dict):
    raise CheckpointError(f"{path}: must hold a JSON object, got {type(value).__name__}")
  return value


def architecture(path: str, raw: dict | None = None) -> str:
  """"gpt2" or "gpt_neox", from config.json's `architectures` (else its `model_type`)."""
  where = os.path.join(path, CONFIG_FILE)
  raw = _read_json(where) if raw is None else raw
  names = raw.get("architectures")
  if names is None:  # a config saved from a base model class: its model_type alone says it
    by_type = {"gpt2": "gpt2", "gpt_neox": "gpt_neox"}
    if raw.get("model_type") in by_type:
      return by_type[raw["model_type"]]
    raise CheckpointError(f"{where}: architectures is missing and model_type="
                          f"{raw.get('model_type')!r} is not gpt2 or gpt_neox")
  if not isinstance(names, list) or len(names) != 1 or names[0] not in ARCHITECTURES:
    raise CheckpointError(f"{where}: architectures={names!r} is not supported; memjax imports "
                          f"{' and '.join(ARCHITECTURES)}")
  return ARCHITECTURES[names[0]]


def _field(raw, where, name, kind, default=None, required=True):
  if name not in raw or raw[name] is None:
    if required and default is None:
      raise CheckpointError(f"{where}: no field {name!r}")
    return default
  value = raw[name]
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
        else isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
  if not ok or (kind is int and value < 1):
    raise CheckpointError(f"{where}: {name} must be a{' positive' if kind is int else ''} "
                          f"{kind.__name__}, got {value!r}")
  return value


def _require(raw, where, name, allowed, default, why):
  value = raw.get(name, default)
  if value is None:
    value = default
  if value not in allowed:
    raise CheckpointError(f"{where}: {name}={value!r} is not supported ({why})")


def _gpt2_config(raw, where, precision) -> gpt2.ModelConfig:
  d = _field(raw, where, "n_embd", int)
  heads = _field(raw, where, "n_head", int)
  if d % heads:
    raise CheckpointError(f"{where}: n_embd={d} is not a multiple of n_head={heads}")
  # memjax's GPT-2 is the original one: these are the values it computes with.
  _require(raw, where, "activation_function", ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"),
           "gelu_new", "memjax's GPT-2 uses the tanh GELU")
  _require(raw, where, "n_inner", (None, 4 * d), None, f"memjax's GPT-2 MLP is 4*n_embd={4 * d}")
  _require(raw, where, "layer_norm_epsilon", (1e-5,), 1e-5, "memjax's GPT-2 uses 1e-5")
  _require(raw, where, "scale_attn_weights", (True,), True, "memjax scales by 1/sqrt(head)")
  _require(raw, where, "scale_attn_by_inverse_layer_idx", (False,), False,
           "memjax's attention is not scaled by layer")
  _require(raw, where, "add_cross_attention", (False,), False, "a decoder-only GPT-2 is needed")
  _require(raw, where, "tie_word_embeddings", (True,), True, "memjax's GPT-2 ties its output "
           "layer to wte")
  return gpt2.ModelConfig(
      vocab_size=_field(raw, where, "vocab_size", int),
      seq_len=_field(raw, where, "n_positions", int, raw.get("n_ctx")),
      layers=_field(raw, where, "n_layer", int), d_model=d, num_heads=heads,
      precision=precision)


def _rope(raw, where):
  """(rotary_pct, base): Pythia's own fields, or the rope_parameters of transformers >= 5."""
  rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
  if not isinstance(rope, dict):
    raise CheckpointError(f"{where}: rope_parameters must be an object, got {rope!r}")
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise CheckpointError(f"{where}: rope_parameters.rope_type={rope.get('rope_type')!r} is not "
                          "supported (memjax implements the default rotary embedding)")
  pct = rope.get("partial_rotary_factor", raw.get("rotary_pct", 0.25))
  base = rope.get("rope_theta", raw.get("rotary_emb_base", raw.get("rope_theta", 10000.0)))
  for name, value in (("rotary_pct", pct), ("rotary_emb_base", base)):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
      raise CheckpointError(f"{where}: {name} must be a number >= 0, got {value!r}")
  if pct > 1:
    raise CheckpointError(f"{where}: rotary_pct={pct} must be at most 1")
  return float(pct), float(base)


def _neox_config(raw, where, precision) -> gpt_neox.NeoXConfig:
  d = _field(raw, where, "hidden_size", int)
  heads = _field(raw, where, "num_attention_heads", int)
  if d % heads:
    raise CheckpointError(f"{where}: hidden_size={d} is not a multiple of "
                          f"num_attention_heads={heads}")
  if raw.get("head_dim") not in (None, d // heads):
    raise CheckpointError(f"{where}: head_dim={raw['head_dim']} is not supported (it must be "
                          f"hidden_size / num_attention_heads = {d // heads})")
  act = raw.get("hidden_act", "gelu")
  if act not in gpt_neox.ACTIVATIONS:
    raise CheckpointError(f"{where}: hidden_act={act!r} is not supported; one of "
                          f"{', '.join(gpt_neox.ACTIVATIONS)}")
  pct, base = _rope(raw, where)
  eps = _field(raw, where, "layer_norm_eps", float, 1e-5)
  bools = {}
  for name, default in (("use_parallel_residual", True), ("attention_bias", True),
                        ("tie_word_embeddings", False)):
    value = raw.get(name, default)
    if not isinstance(value, bool):
      raise CheckpointError(f"{where}: {name} must be true or false, got {value!r}")
    bools[name] = value
  return gpt_neox.NeoXConfig(
      vocab_size=_field(raw, where, "vocab_size", int),
      seq_len=_field(raw, where, "max_position_embeddings", int),
      layers=_field(raw, where, "num_hidden_layers", int), d_model=d, num_heads=heads,
      intermediate_size=_field(raw, where, "intermediate_size", int, 4 * d),
      rotary_pct=pct, rotary_base=base, layer_norm_eps=float(eps), hidden_act=act,
      precision=precision, **bools)


def read_config(path: str, precision: str = "fp32"):
  """The memjax config (gpt2.ModelConfig or gpt_neox.NeoXConfig) of a checkpoint directory."""
  if precision not in PRECISIONS:
    raise CheckpointError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: not a directory (give a Hugging Face checkpoint directory)")
  where = os.path.join(path, CONFIG_FILE)
  raw = _read_json(where)
  if architecture(path, raw) == "gpt2":
    return _gpt2_config(raw, where, precision)
  return _neox_config(raw, where, precision)


# ---------------------------------------------------------------------------------------------
# Which tensor fills which parameter.


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One parameter: its path in the memjax tree, its Hugging Face names (the first that the file
  holds is read), its memjax shape, whether the stored tensor is its transpose, and the
  config.json fields that set its shape (named when the file disagrees)."""
  path: tuple
  names: tuple
  shape: tuple
  transpose: bool
  fields: str


def _gpt2_tensors(cfg: gpt2.ModelConfig) -> list[Tensor]:
  v, s, d = cfg.vocab_size, cfg.seq_len, cfg.d_model
  out = []

  def add(path, name, shape, fields):
    # Saved from GPT2LMHeadModel the names start with "transformer."; from GPT2Model they do not.
    out.append(Tensor(path, ("transformer." + name, name), shape, False, fields))

  add(("wte",), "wte.weight", (v, d), "vocab_size, n_embd")
  add(("wpe",), "wpe.weight", (s, d), "n_positions, n_embd")
  for i in range(cfg.layers):
    h = f"h.{i}."
    for ln in ("ln_1", "ln_2"):
      add((f"h_{i}", ln, "scale"), h + ln + ".weight", (d,), "n_embd")
      add((f"h_{i}", ln, "bias"), h + ln + ".bias", (d,), "n_embd")
    for mine, theirs, shape in (("c_attn", "attn.c_attn", (d, 3 * d)),
                                ("c_proj", "attn.c_proj", (d, d)),
                                ("c_fc", "mlp.c_fc", (d, 4 * d)),
                                ("mlp_c_proj", "mlp.c_proj", (4 * d, d))):
      add((f"h_{i}", mine, "kernel"), h + theirs + ".weight", shape, "n_embd")
      add((f"h_{i}", mine, "bias"), h + theirs + ".bias", shape[1:], "n_embd")
  add(("ln_f", "scale"), "ln_f.weight", (d,), "n_embd")
  add(("ln_f", "bias"), "ln_f.bias", (d,), "n_embd")
  return out


def _neox_tensors(cfg: gpt_neox.NeoXConfig) -> list[Tensor]:
  v, d, inner = cfg.vocab_size, cfg.d_model, cfg.intermediate_size
  out = [Tensor(("embed_in",), ("gpt_neox.embed_in.weight", "embed_in.weight"), (v, d), False,
                "vocab_size, hidden_size")]
  if not cfg.tie_word_embeddings:
    out.append(Tensor(("embed_out",), ("embed_out.weight",), (v, d), False,
                      "vocab_size, hidden_size"))

  def add(path, name, shape, transpose, fields):
    out.append(Tensor(path, ("gpt_neox." + name, name), shape, transpose, fields))

  for i in range(cfg.layers):
    h = f"layers.{i}."
    for mine, theirs in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
      add((f"h_{i}", mine, "scale"), h + theirs + ".weight", (d,), False, "hidden_size")
      add((f"h_{i}", mine, "bias"), h + theirs + ".bias", (d,), False, "hidden_size")
    for mine, theirs, shape, fields in (
        ("qkv", "attention.query_key_value", (d, 3 * d), "hidden_size"),
        ("dense", "attention.dense", (d, d), "hidden_size"),
        ("fc_in", "mlp.dense_h_to_4h", (d, inner), "hidden_size, intermediate_size"),
        ("fc_out", "mlp.dense_4h_to_h", (inner, d), "hidden_size, intermediate_size")):
      add((f"h_{i}", mine, "kernel"), h + theirs + ".weight", shape, True, fields)
      # attention_bias=false: no attention biases stored; zeros compute the same.
      optional = mine in ("qkv", "dense") and not cfg.attention_bias
      add((f"h_{i}", mine, "bias"), h + theirs + ".bias", shape[1:], False,
          "" if optional else fields)
  add(("final_ln", "scale"), "final_layer_norm.weight", (d,), False, "hidden_size")
  add(("final_ln", "bias"), "final_layer_norm.bias", (d,), False, "hidden_size")
  return out


def tensors_of(cfg) -> list[Tensor]:
  return _neox_tensors(cfg) if isinstance(cfg, gpt_neox.NeoXConfig) else _gpt2_tensors(cfg)


def _layers_field(cfg) -> str:
  return "num_hidden_layers" if isinstance(cfg, gpt_neox.NeoXConfig) else "n_layer"


# ---------------------------------------------------------------------------------------------
# Reading tensors: safetensors (one file or shards), or pytorch_model.bin with torch.


class _Weights:
  """The tensors of a checkpoint directory: name -> file, shape and a reader."""

  def __init__(self, path: str):
    self.files = {}  # tensor name -> file
    index = os.path.join(path, SAFETENSORS_INDEX_FILE)
    single = os.path.join(path, SAFETENSORS_FILE)
    torch_file = os.path.join(path, TORCH_FILE)
    self._torch = None
    if os.path.isfile(single):
      self._open_safetensors([single])
    elif os.path.isfile(index):
      weight_map = _read_json(index).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no weight_map object")
      shards = sorted({os.path.join(path, f) for f in weight_map.values()})
      self._open_safetensors(shards)
    elif os.path.isfile(torch_file):
      self._open_torch(torch_file)
    else:
      raise CheckpointError(f"{path}: no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or "
                            f"{TORCH_FILE}")

  def _open_safetensors(self, files):
    from safetensors import safe_open

    self._shapes = {}
    for file in files:
      if not os.path.isfile(file):
        raise CheckpointError(f"{file}: no such shard (named in {SAFETENSORS_INDEX_FILE})")
      try:
        with safe_open(file, framework="numpy") as f:
          for name in f.keys():
            self.files[name] = file
            self._shapes[name] = tuple(f.get_slice(name).get_shape())
      except Exception as e:  # noqa: BLE001 - a truncated or foreign file: the Rust side says why
        raise CheckpointError(f"{file}: does not read as safetensors ({_first_line(e)})") from e

  def _open_torch(self, file):
    try:
      import torch
    except ImportError:
      raise CheckpointError(f"{file}: reading pytorch_model.bin needs torch, which is not "
                            "installed; pip install torch, or convert the checkpoint to "
                            "model.safetensors") from None
    try:
      self._torch = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{file}: does not load with torch.load ({_first_line(e)})") from e
    self.files = {name: file for name in self._torch}
    self._shapes = {name: tuple(t.shape) for name, t in self._torch.items()}

  def find(self, tensor: Tensor):
    """The first of the tensor's names that the checkpoint holds, or None."""
    return next((n for n in tensor.names if n in self.files), None)

  def shape(self, name):
    return self._shapes[name]

  def read(self, name) -> np.ndarray:
    if self._torch is not None:
      t = self._torch[name]
      return t.float().numpy() if t.dtype.is_floating_point else t.numpy()
    from safetensors import safe_open

    with safe_open(self.files[name], framework="numpy") as f:
      return f.get_tensor(name)


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _check_tensors(path, cfg, weights: _Weights) -> list[tuple[Tensor, str | None]]:
  """(tensor, stored name) of every parameter, every shape checked before anything is read."""
  found = []
  for t in tensors_of(cfg):
    name = weights.find(t)
    if name is None:
      if not t.fields:  # an optional bias (attention_bias=false)
        found.append((t, None))
        continue
      where = weights.files[next(iter(weights.files))] if weights.files else path
      raise CheckpointError(
          f"{where}: no tensor {t.names[0]!r} ({CONFIG_FILE} says {_layers_field(cfg)}="
          f"{cfg.layers}, so the checkpoint must hold it)")
    want = t.shape[::-1] if t.transpose else t.shape
    got = weights.shape(name)
    if got != want:
      raise CheckpointError(
          f"{weights.files[name]}: tensor {name!r} has shape {list(got)}, but "
          f"{os.path.join(path, CONFIG_FILE)} ({t.fields}) gives {list(want)}")
    found.append((t, name))
  _check_tied_head(path, cfg, weights)
  return found


def _check_tied_head(path, cfg, weights):
  """GPT-2's lm_head, when stored at all, must be its wte (memjax's GPT-2 is tied)."""
  if isinstance(cfg, gpt_neox.NeoXConfig) or "lm_head.weight" not in weights.files:
    return
  wte = weights.find(tensors_of(cfg)[0])
  head = weights.read("lm_head.weight")
  if head.shape != weights.shape(wte) or not np.array_equal(head, weights.read(wte)):
    raise CheckpointError(f"{weights.files['lm_head.weight']}: tensor 'lm_head.weight' differs "
                          "from 'transformer.wte.weight'; memjax's GPT-2 needs tied embeddings "
                          "(tie_word_embeddings=true)")


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _fill(path, cfg, out: dict, slot):
  """Reads one checkpoint into the preallocated host arrays `out` (path tuple -> array) at index
  `slot` of their leading axis (None: no leading axis). One tensor at a time is in memory."""
  weights = _Weights(path)
  for t, name in _check_tensors(path, cfg, weights):
    dest = out[t.path] if slot is None else out[t.path][slot]
    if name is None:
      dest[...] = 0
      continue
    value = weights.read(name)
    if not np.issubdtype(value.dtype, np.floating) and value.dtype != ml_dtypes.bfloat16:
      raise CheckpointError(f"{weights.files[name]}: tensor {name!r} has dtype {value.dtype}, "
                            "not a float")
    dest[...] = (value.T if t.transpose else value).astype(dest.dtype)


def _host_dtype(cfg):
  return np.dtype(ml_dtypes.bfloat16) if cfg.param_dtype == jax.numpy.bfloat16 else np.float32


def _as_tree(arrays: dict):
  """The host arrays as a pytree of device arrays, each host array let go once it is copied
  (so memory holds the stack once plus one array, not twice)."""
  tree = {}
  for p in list(arrays):
    _set(tree, p, jax.numpy.asarray(arrays.pop(p)))
  return tree


def load_params(path: str, precision: str = "fp32"):
  """(config, parameters) of one checkpoint directory, parameters in the precision's dtype."""
  cfg = read_config(path, precision)
  arrays = {t.path: np.empty(t.shape, _host_dtype(cfg)) for t in tensors_of(cfg)}
  _fill(path, cfg, arrays, None)
  return cfg, _as_tree(arrays)


# memjax config field -> the config.json field it comes from, to name it in errors.
_GPT2_FIELDS = {"seq_len": "n_positions", "layers": "n_layer", "d_model": "n_embd",
                "num_heads": "n_head"}
_NEOX_FIELDS = {"seq_len": "max_position_embeddings", "layers": "num_hidden_layers",
                "d_model": "hidden_size", "num_heads": "num_attention_heads",
                "rotary_pct": "rotary_pct (partial_rotary_factor)",
                "rotary_base": "rotary_emb_base (rope_theta)"}


def _first_difference(a, b):
  """(config.json field, value in a, value in b) of the first field where a and b differ."""
  if type(a) is not type(b):
    names = {gpt2.ModelConfig: "GPT2LMHeadModel", gpt_neox.NeoXConfig: "GPTNeoXForCausalLM"}
    return "architectures", names[type(a)], names[type(b)]
  names = _NEOX_FIELDS if isinstance(a, gpt_neox.NeoXConfig) else _GPT2_FIELDS
  for f in dataclasses.fields(a):
    if getattr(a, f.name) != getattr(b, f.name):
      return names.get(f.name, f.name), getattr(a, f.name), getattr(b, f.name)
  return None


def check_same_shape(paths: Sequence[str], configs: Sequence) -> None:
  """Raises CheckpointError naming the first two directories whose shapes differ."""
  for path, cfg in zip(paths[1:], configs[1:]):
    diff = _first_difference(configs[0], cfg)
    if diff:
      field, a, b = diff
      raise CheckpointError(
          f"{os.path.join(path, CONFIG_FILE)}: {field}={b} but {paths[0]} has {field}={a}; a "
          "stack needs checkpoints of one architecture and shape (memjax.score groups "
          "checkpoints by shape itself)")


def load_stack(paths: Sequence[str], precision: str = "fp32"):
  """(config, parameters [M, ...]) of M checkpoint directories of one architecture and shape.

  The stacked host arrays are allocated once; each checkpoint is read into its slot in turn, so
  memory holds the stack plus one tensor, never two whole checkpoints. Refuses directories of
  different shapes, naming the two.
  """
  if not paths:
    raise CheckpointError("no checkpoint directories given")
  configs = [read_config(p, precision) for p in paths]
  check_same_shape(paths, configs)
  cfg, m = configs[0], len(paths)
  arrays = {t.path: np.empty((m,) + t.shape, _host_dtype(cfg)) for t in tensors_of(cfg)}
  for i, path in enumerate(paths):
    _fill(path, cfg, arrays, i)
  return cfg, _as_tree(arrays)


def tokenizer_bytes(path: str) -> bytes | None:
  """The raw tokenizer.json of a checkpoint directory (to tell two tokenizers apart), or None."""
  file = os.path.join(path, TOKENIZER_FILE)
  if not os.path.isfile(file):
    return None
  with open(file, "rb") as f:
    return f.read()


def load_tokenizer(path: str):
  """The directory's tokenizer.json as memjax's tokenizer (no special tokens added), or None."""
  from memjax.data import tokenize as tokenize_lib

  file = os.path.join(path, TOKENIZER_FILE)
  if not os.path.isfile(file):
    return None
  try:
    return tokenize_lib.load_tokenizer_file(file)
  except ValueError as e:
    raise CheckpointError(_first_line(e)) from e


# ---------------------------------------------------------------------------------------------
# Writing a memjax GPT-2 as a Hugging Face GPT-2 directory.


def gpt2_config_json(cfg: gpt2.ModelConfig) -> dict:
  """config.json of a memjax GPT-2 as GPT2LMHeadModel: every field that sets its computation."""
  return {
      "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
      "vocab_size": cfg.vocab_size, "n_positions": cfg.seq_len, "n_ctx": cfg.seq_len,
      "n_embd": cfg.d_model, "n_layer": cfg.layers, "n_head": cfg.num_heads, "n_inner": None,
      "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
      "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
      "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
      "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True,
      # memjax's models have no special tokens (there is no BOS: see DESIGN.md).
      "bos_token_id": None, "eos_token_id": None, "dtype": "float32",
      "memjax_precision": cfg.precision,
  }


def write_gpt2(out_dir: str, cfg: gpt2.ModelConfig, params, tokenizer_json: str | None = None):
  """Writes config.json, model.safetensors (fp32, Hugging Face's names; the tied lm_head left
  out, as save_pretrained does) and tokenizer.json when given. Returns the files written."""
  return _write_dir(out_dir, cfg, params, gpt2_config_json(cfg), tokenizer_json)


def neox_config_json(cfg: gpt_neox.NeoXConfig) -> dict:
  """config.json of a memjax GPT-NeoX as GPTNeoXForCausalLM, the rotary settings both in
  transformers 5's rope_parameters and in Pythia's own fields (older readers take those)."""
  return {
      "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
      "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.seq_len,
      "hidden_size": cfg.d_model, "num_hidden_layers": cfg.layers,
      "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size,
      "hidden_act": cfg.hidden_act, "layer_norm_eps": cfg.layer_norm_eps,
      "use_parallel_residual": cfg.use_parallel_residual,
      "attention_bias": cfg.attention_bias, "tie_word_embeddings": cfg.tie_word_embeddings,
      "rope_parameters": {"rope_type": "default", "partial_rotary_factor": cfg.rotary_pct,
                          "rope_theta": cfg.rotary_base},
      "rotary_pct": cfg.rotary_pct, "rotary_emb_base": cfg.rotary_base,
      "attention_dropout": 0.0, "hidden_dropout": 0.0, "use_cache": True,
      "bos_token_id": None, "eos_token_id": None, "dtype": "float32",
  }


def write_neox(out_dir: str, cfg: gpt_neox.NeoXConfig, params,
               tokenizer_json: str | None = None):
  """Writes memjax GPT-NeoX parameters as a GPTNeoXForCausalLM directory (fp32; Linear weights
  transposed back to [out, in]): what `load_params` reads, and transformers too."""
  return _write_dir(out_dir, cfg, params, neox_config_json(cfg), tokenizer_json)


def _write_dir(out_dir, cfg, params, config_json, tokenizer_json):
  """config.json, model.safetensors (each file written whole or not at all) and tokenizer.json
  when given; returns the files written."""
  from safetensors.numpy import save_file

  tensors = {}
  for t in tensors_of(cfg):
    if not t.fields:  # a bias that attention_bias=false leaves out (zeros in memjax)
      continue
    value = params
    for key in t.path:
      value = value[key]
    value = np.asarray(value, np.float32)
    tensors[t.names[0]] = np.ascontiguousarray(value.T if t.transpose else value)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  model_file = os.path.join(out_dir, SAFETENSORS_FILE)
  save_file(tensors, model_file + ".tmp", metadata={"format": "pt"})
  os.replace(model_file + ".tmp", model_file)
  written.append(model_file)
  config_file = os.path.join(out_dir, CONFIG_FILE)
  with open(config_file, "w", encoding="utf-8") as f:
    json.dump(config_json, f, indent=2, sort_keys=True)
    f.write("\n")
  written.append(config_file)
  if tokenizer_json is not None:
    tok_file = os.path.join(out_dir, TOKENIZER_FILE)
    with open(tok_file, "w", encoding="utf-8") as f:
      f.write(tokenizer_json)
    written.append(tok_file)
  return written


def n_params(cfg) -> int:
  """Parameter count of an imported model (GPT-2: by memjax's formula)."""
  if isinstance(cfg, gpt_neox.NeoXConfig):
    return gpt_neox.n_params(cfg)
  return gpt2.n_params(cfg)


def context_size(cfg) -> int:
  """The longest sequence the model takes: n_positions / max_position_embeddings."""
  return cfg.seq_len


def describe(cfg) -> str:
  """One line: architecture and shape."""
  arch = "GPT-NeoX" if isinstance(cfg, gpt_neox.NeoXConfig) else "GPT-2"
  return (f"{arch} L{cfg.layers} d{cfg.d_model} h{cfg.num_heads} V{cfg.vocab_size} "
          f"ctx {cfg.seq_len} {cfg.precision}, {n_params(cfg):,} parameters")

