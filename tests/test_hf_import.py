"""Import of Hugging Face GPT-2 and GPT-NeoX checkpoints against transformers' own log-probs.

The checkpoints under tests/data/hf/ and their transformers_logp2.npz were made by
scripts/make_hf_fixtures.py with transformers (fp32, eager attention); these tests need neither
torch nor transformers, except the last one, which compares live when both are installed.
"""

import json
import math
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import likelihood
from memjax.model import gpt2
from memjax.model import gpt_neox
from memjax.model import hf

DATA = os.path.join(os.path.dirname(__file__), "data", "hf")
FIXTURES = ["gpt2_a", "gpt2_b", "gpt2_c", "neox_a", "neox_b", "neox_c"]


def fixture(name):
  return os.path.join(DATA, name)


def expected(name):
  with np.load(os.path.join(fixture(name), "transformers_logp2.npz")) as f:
    return f["tokens"], f["logp2"]


def logp2(cfg, params, tokens):
  return np.asarray(likelihood.token_logprobs(cfg, params, jnp.asarray(tokens)))


def copy_fixture(name, tmp_path):
  path = str(tmp_path / name)
  shutil.copytree(fixture(name), path)
  return path


def edit_config(path, **changes):
  file = os.path.join(path, "config.json")
  with open(file) as f:
    raw = json.load(f)
  for key, value in changes.items():
    if value is None:
      raw.pop(key, None)
    else:
      raw[key] = value
  with open(file, "w") as f:
    json.dump(raw, f)


@pytest.mark.parametrize("name", FIXTURES)
def test_import_matches_transformers(name):
  cfg, params = hf.load_params(fixture(name))
  tokens, want = expected(name)
  got = logp2(cfg, params, tokens)
  assert got.shape == tokens.shape
  np.testing.assert_allclose(got[:, 0], -math.log2(cfg.vocab_size))
  assert np.abs(got[:, 1:] - want).max() < 1e-5
  assert tokens.shape[1] < cfg.seq_len  # sequences shorter than the model's context
  assert sum(a.size for a in jax.tree.leaves(params)) == hf.n_params(cfg)


def test_configs_read_as_their_architectures():
  cfg = hf.read_config(fixture("gpt2_c"))
  assert cfg == gpt2.ModelConfig(vocab_size=64, seq_len=48, layers=1, d_model=16, num_heads=4)
  cfg = hf.read_config(fixture("neox_c"), "bf16")
  assert isinstance(cfg, gpt_neox.NeoXConfig)
  assert (cfg.rotary_pct, cfg.use_parallel_residual, cfg.hidden_act, cfg.layer_norm_eps,
          cfg.precision) == (1.0, False, "gelu_new", 1e-6, "bf16")
  assert hf.read_config(fixture("neox_a")).rotary_dims == 4  # 0.25 of a head of 16


def test_pythia_style_rotary_fields(tmp_path):
  # Pythia's own config.json says rotary_pct and rotary_emb_base (transformers 5 writes
  # rope_parameters); both read the same.
  path = copy_fixture("neox_a", tmp_path)
  edit_config(path, rope_parameters=None, rotary_pct=0.25, rotary_emb_base=10000)
  cfg, params = hf.load_params(path)
  tokens, want = expected("neox_a")
  assert np.abs(logp2(cfg, params, tokens)[:, 1:] - want).max() < 1e-5


@pytest.mark.parametrize("names", [("gpt2_a", "gpt2_b"), ("neox_a", "neox_b")])
def test_stack_equals_each_alone(names):
  cfg, params_M = hf.load_stack([fixture(n) for n in names])
  assert jax.tree.leaves(params_M)[0].shape[0] == 2
  tokens, _ = expected(names[0])
  stacked = np.asarray(likelihood.shared_token_logprobs(cfg, params_M, jnp.asarray(tokens)))
  for i, name in enumerate(names):
    alone_cfg, alone = hf.load_params(fixture(name))
    np.testing.assert_allclose(stacked[i], logp2(alone_cfg, alone, tokens), atol=1e-5)
    assert np.abs(stacked[i, :, 1:] - expected(name)[1]).max() < 1e-5
  assert np.abs(stacked[0] - stacked[1]).max() > 0.1  # two different models


def test_bf16_stack():
  cfg, params_M = hf.load_stack([fixture("neox_a"), fixture("neox_b")], "bf16")
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(params_M))
  tokens, want = expected("neox_a")
  got = np.asarray(likelihood.shared_token_logprobs(cfg, params_M, jnp.asarray(tokens)))
  assert got.dtype == np.float32
  # bf16 weights and activations: close to the fp32 log-probs, not equal.
  assert 1e-4 < np.abs(got[0, :, 1:] - want).mean() < 0.5


def test_different_shapes_refused():
  with pytest.raises(hf.CheckpointError, match=r"gpt2_c/config.json: n_positions=48 but .*gpt2_a"
                     r" has n_positions=32"):
    hf.load_stack([fixture("gpt2_a"), fixture("gpt2_c")])
  with pytest.raises(hf.CheckpointError, match="architectures=GPTNeoXForCausalLM but"):
    hf.load_stack([fixture("gpt2_a"), fixture("neox_a")])


def test_write_gpt2_reimports_to_the_same_logprobs(tmp_path):
  cfg, params = hf.load_params(fixture("gpt2_a"))
  out = str(tmp_path / "out")
  files = hf.write_gpt2(out, cfg, params, tokenizer_json="{}")
  assert sorted(os.path.basename(f) for f in files) == ["config.json", "model.safetensors",
                                                        "tokenizer.json"]
  cfg2, params2 = hf.load_params(out)
  assert cfg2 == cfg
  tokens, _ = expected("gpt2_a")
  np.testing.assert_array_equal(logp2(cfg2, params2, tokens), logp2(cfg, params, tokens))


@pytest.mark.parametrize("name", ["neox_a", "neox_c"])
def test_write_neox_reimports_to_the_same_logprobs(name, tmp_path):
  cfg, params = hf.load_params(fixture(name))
  out = str(tmp_path / "out")
  hf.write_neox(out, cfg, params)
  cfg2, params2 = hf.load_params(out)
  assert cfg2 == cfg
  tokens, want = expected(name)
  np.testing.assert_array_equal(logp2(cfg2, params2, tokens), logp2(cfg, params, tokens))
  assert np.abs(logp2(cfg2, params2, tokens)[:, 1:] - want).max() < 1e-5


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line that names the file and the field.


def _error(path, precision="fp32"):
  with pytest.raises(hf.CheckpointError) as info:
    hf.load_params(path, precision)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_other_architecture(tmp_path):
  path = copy_fixture("gpt2_a", tmp_path)
  edit_config(path, architectures=["LlamaForCausalLM"])
  assert _error(path) == (f"{path}/config.json: architectures=['LlamaForCausalLM'] is not "
                          "supported; memjax imports GPT2LMHeadModel and GPTNeoXForCausalLM")


def test_missing_tensor(tmp_path):
  from safetensors.numpy import load_file, save_file
  path = copy_fixture("neox_a", tmp_path)
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  del tensors["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"]
  save_file(tensors, file, metadata={"format": "pt"})
  assert _error(path) == (f"{file}: no tensor 'gpt_neox.layers.1.mlp.dense_4h_to_h.weight' "
                          "(config.json says num_hidden_layers=2, so the checkpoint must hold it)")


def test_shape_disagrees_with_config(tmp_path):
  path = copy_fixture("gpt2_a", tmp_path)
  edit_config(path, n_positions=40)
  assert _error(path) == (f"{path}/model.safetensors: tensor 'transformer.wpe.weight' has shape "
                          f"[32, 16], but {path}/config.json (n_positions, n_embd) gives [40, 16]")
  path = copy_fixture("neox_c", tmp_path)
  edit_config(path, intermediate_size=48)
  assert "'gpt_neox.layers.0.mlp.dense_h_to_4h.weight' has shape [32, 16]" in _error(path)
  assert "(hidden_size, intermediate_size) gives [48, 16]" in _error(path)


def test_unsupported_fields(tmp_path):
  path = copy_fixture("gpt2_a", tmp_path)
  edit_config(path, activation_function="relu")
  assert _error(path).startswith(f"{path}/config.json: activation_function='relu' is not "
                                 "supported")
  path = copy_fixture("neox_a", tmp_path)
  edit_config(path, hidden_act="swiglu")
  assert _error(path).startswith(f"{path}/config.json: hidden_act='swiglu' is not supported")
  edit_config(path, hidden_act="gelu", hidden_size=None)
  assert _error(path) == f"{path}/config.json: no field 'hidden_size'"
  assert "precision must be one of fp32, bf16, bf16-mixed" in _error(fixture("gpt2_a"), "fp16")


def test_no_weights_and_no_directory(tmp_path):
  path = copy_fixture("gpt2_a", tmp_path)
  os.remove(os.path.join(path, "model.safetensors"))
  assert _error(path) == (f"{path}: no model.safetensors, model.safetensors.index.json or "
                          "pytorch_model.bin")
  assert "not a directory" in _error(str(tmp_path / "nowhere"))
  os.remove(os.path.join(path, "config.json"))
  assert _error(path).startswith(f"{path}/config.json: no such file")


def test_pytorch_bin_needs_torch(tmp_path, monkeypatch):
  path = copy_fixture("gpt2_a", tmp_path)
  os.remove(os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "pytorch_model.bin"), "wb") as f:
    f.write(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  assert _error(path) == (f"{path}/pytorch_model.bin: reading pytorch_model.bin needs torch, "
                          "which is not installed; pip install torch, or convert the checkpoint "
                          "to model.safetensors")


def test_truncated_safetensors(tmp_path):
  path = copy_fixture("gpt2_a", tmp_path)
  file = os.path.join(path, "model.safetensors")
  with open(file, "r+b") as f:
    f.truncate(100)
  assert _error(path).startswith(f"{file}: does not read as safetensors")


def test_untied_gpt2_head_refused(tmp_path):
  from safetensors.numpy import load_file, save_file
  path = copy_fixture("gpt2_a", tmp_path)
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1
  save_file(tensors, file, metadata={"format": "pt"})
  assert "'lm_head.weight' differs from 'transformer.wte.weight'" in _error(path)
  tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
  save_file(tensors, file, metadata={"format": "pt"})
  hf.load_params(path)  # a stored copy of the tied head is fine


# ---------------------------------------------------------------------------------------------
# Live, when transformers and torch are installed.


def test_export_loads_in_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  cfg, params = hf.load_params(fixture("gpt2_c"))
  out = str(tmp_path / "exported")
  hf.write_gpt2(out, cfg, params)
  model = transformers.GPT2LMHeadModel.from_pretrained(out, attn_implementation="eager").eval()
  tokens, _ = expected("gpt2_c")
  with torch.no_grad():
    logits = model(torch.as_tensor(tokens, dtype=torch.long)).logits.float()
  theirs = torch.log_softmax(logits, -1)[:, :-1].gather(
      -1, torch.as_tensor(tokens[:, 1:, None], dtype=torch.long))[..., 0].numpy() / math.log(2)
  assert np.abs(logp2(cfg, params, tokens)[:, 1:] - theirs).max() < 1e-5


@pytest.mark.parametrize("name", ["neox_a", "neox_c"])
def test_written_neox_loads_in_transformers(name, tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  cfg, params = hf.load_params(fixture(name))
  out = str(tmp_path / "exported")
  hf.write_neox(out, cfg, params)
  model = transformers.GPTNeoXForCausalLM.from_pretrained(
      out, attn_implementation="eager").eval()
  tokens, want = expected(name)
  with torch.no_grad():
    logits = model(torch.as_tensor(tokens, dtype=torch.long)).logits.float()
  theirs = torch.log_softmax(logits, -1)[:, :-1].gather(
      -1, torch.as_tensor(tokens[:, 1:, None], dtype=torch.long))[..., 0].numpy() / math.log(2)
  assert np.abs(theirs - want).max() < 1e-5


def test_pytorch_bin_with_torch(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import load_file
  path = copy_fixture("neox_c", tmp_path)
  file = os.path.join(path, "model.safetensors")
  torch.save(load_file(file), os.path.join(path, "pytorch_model.bin"))
  os.remove(file)
  cfg, params = hf.load_params(path)
  tokens, want = expected("neox_c")
  assert np.abs(logp2(cfg, params, tokens)[:, 1:] - want).max() < 1e-5
