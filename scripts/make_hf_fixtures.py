"""Makes the Hugging Face test checkpoints under tests/data/hf/ with Hugging Face's own code.

    pip install torch transformers   # only here: the tests themselves need neither
    python scripts/make_hf_fixtures.py [--out=tests/data/hf]

Each checkpoint is a tiny random GPT2LMHeadModel or GPTNeoXForCausalLM saved with
save_pretrained (config.json + model.safetensors), a copy of one small BPE tokenizer.json trained
here with `tokenizers`, and transformers_logp2.npz: fixed token ids `tokens` [B, S] and
transformers' own log2-probabilities `logp2` [B, S-1] of tokens 1..S-1 (fp32 forward, eager
attention). The weights are drawn far wider than a fresh init (std 0.2, LayerNorm scales around
1, nonzero biases), so that the predictions are far from uniform and a wrong layout or a
missed term shows in the log-probabilities. Shapes: GPT-2 with n_positions > S; GPT-NeoX with
rotary_pct 0.25 and 1.0, both residual forms; two checkpoints of one shape for each
architecture (a stack).
"""

import argparse
import json
import os
import shutil

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

VOCAB = 64
TOKENS_SHAPE = (3, 24)  # B, S: S below every model's context

GPT2 = {
    "gpt2_a": dict(seed=0, n_embd=16, n_layer=2, n_head=2, n_positions=32),
    "gpt2_b": dict(seed=1, n_embd=16, n_layer=2, n_head=2, n_positions=32),
    "gpt2_c": dict(seed=2, n_embd=16, n_layer=1, n_head=4, n_positions=48),
}
NEOX = {
    "neox_a": dict(seed=0, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=32, rotary_pct=0.25, use_parallel_residual=True,
                   hidden_act="gelu", max_position_embeddings=64),
    "neox_b": dict(seed=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=32, rotary_pct=0.25, use_parallel_residual=True,
                   hidden_act="gelu", max_position_embeddings=64),
    "neox_c": dict(seed=2, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=32, rotary_pct=1.0, use_parallel_residual=False,
                   hidden_act="gelu_new", layer_norm_eps=1e-6, max_position_embeddings=32),
}

TEXT = """\
the cat sat on the mat and the dog sat on the log
a model that memorizes its data can repeat it word for word
the quick brown fox jumps over the lazy dog again and again
memorization is measured in bits and the bits are counted per parameter
""".splitlines()


def make_tokenizer(path):
  tok = Tokenizer(models.BPE(unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["[UNK]"], show_progress=False)
  tok.train_from_iterator(TEXT * 4, trainer)
  tok.save(path)


def widen(model, seed):
  """Weights far from a fresh init, so that every term of the forward pass shows."""
  g = torch.Generator().manual_seed(1000 + seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if "ln" in name or "layernorm" in name or "layer_norm" in name:
        p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.1 * noise)
      elif name.endswith("bias"):
        p.copy_(0.1 * noise)
      else:
        p.copy_(0.2 * noise)


def logp2(model, tokens):
  with torch.no_grad():
    logits = model(torch.as_tensor(tokens)).logits.float()
  logp = torch.log_softmax(logits, dim=-1)[:, :-1]
  target = torch.as_tensor(tokens)[:, 1:, None]
  return (logp.gather(-1, target)[..., 0].double() / np.log(2)).numpy()


def build(name, spec, out, tokenizer_path, tokens):
  spec = dict(spec)
  seed = spec.pop("seed")
  torch.manual_seed(seed)
  common = dict(vocab_size=VOCAB, attn_implementation="eager")
  if name.startswith("gpt2"):
    config = transformers.GPT2Config(**common, **spec, bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config)
  else:
    config = transformers.GPTNeoXConfig(**common, **spec, bos_token_id=None, eos_token_id=None)
    model = transformers.GPTNeoXForCausalLM(config)
  widen(model, seed)
  model.eval()
  path = os.path.join(out, name)
  shutil.rmtree(path, ignore_errors=True)
  model.save_pretrained(path, safe_serialization=True)
  shutil.copy(tokenizer_path, os.path.join(path, "tokenizer.json"))
  np.savez(os.path.join(path, "transformers_logp2.npz"), tokens=tokens,
           logp2=logp2(model, tokens))
  return path


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=os.path.join("tests", "data", "hf"))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  tokenizer_path = os.path.join(args.out, "tokenizer.json")
  make_tokenizer(tokenizer_path)
  tokens = np.random.default_rng(0).integers(0, VOCAB, TOKENS_SHAPE).astype(np.int32)
  for name, spec in {**GPT2, **NEOX}.items():
    path = build(name, spec, args.out, tokenizer_path, tokens)
    print(f"{path}: {sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)):,} "
          "bytes")
  with open(os.path.join(args.out, "versions.json"), "w") as f:
    json.dump({"torch": torch.__version__, "transformers": transformers.__version__}, f,
              indent=2)
    f.write("\n")


if __name__ == "__main__":
  main()
