"""The baseline a user would otherwise write: one PyTorch GPT-2 trained at a time.

Same parameterization as memjax.model.gpt2 (learned positions, pre-LayerNorm, GELU MLP of 4d,
biases, tied embeddings), AdamW, bf16 autocast on CUDA (fp32 master weights), as the public
reproductions of Morris et al. train. Imported only when torch is installed.
"""

import math
import time

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
  def __init__(self, d, heads):
    super().__init__()
    self.heads = heads
    self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
    self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
    self.c_fc, self.mlp_c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

  def forward(self, x):
    b, s, d = x.shape
    q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
    q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
    att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.c_proj(att.transpose(1, 2).reshape(b, s, d))
    return x + self.mlp_c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
  def __init__(self, vocab_size, seq_len, layers, d, heads):
    super().__init__()
    self.wte = nn.Embedding(vocab_size, d)
    self.wpe = nn.Embedding(seq_len, d)
    self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
    self.ln_f = nn.LayerNorm(d)

  def forward(self, tokens):
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    x = self.wte(tokens) + self.wpe(pos)
    for block in self.blocks:
      x = block(x)
    logits = self.ln_f(x) @ self.wte.weight.T  # tied output layer
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                           tokens[:, 1:].reshape(-1))


def n_params(model):
  return sum(p.numel() for p in model.parameters())


def describe():
  device = "cuda" if torch.cuda.is_available() else "cpu"
  amp = "bf16 autocast, fp32 weights" if device == "cuda" else "fp32"
  return f"torch {torch.__version__} {device}, {amp}, AdamW"


def make_trainer(vocab_size, seq_len, layers, d, heads, batch_size, warmup_steps=3):
  """One model and its AdamW loop; returns (run, n_params), run(steps) -> seconds for `steps`
  steps (synchronized, data drawn on the device like memjax). Warmed up before it returns."""
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  model = GPT2(vocab_size, seq_len, layers, d, heads).to(device)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
  dataset = torch.randint(0, vocab_size, (max(batch_size * 4, 1024), seq_len), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
  position = [0]

  def step():
    i = position[0]
    position[0] += 1
    idx = (torch.arange(batch_size, device=device) + i * batch_size) % dataset.shape[0]
    with autocast:
      loss = model(dataset[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss

  def sync():
    if device == "cuda":
      torch.cuda.synchronize()

  def run(steps):
    sync()
    start = time.perf_counter()
    for _ in range(steps):
      loss = step()
    sync()
    seconds = time.perf_counter() - start
    assert math.isfinite(loss.item())
    return seconds

  run(warmup_steps)
  return run, n_params(model)


def time_training(vocab_size, seq_len, layers, d, heads, batch_size, steps, calls=3,
                  warmup_steps=3):
  """Best seconds per step of one model trained alone, over `calls` windows of `steps` steps,
  and its parameter count."""
  run, params = make_trainer(vocab_size, seq_len, layers, d, heads, batch_size, warmup_steps)
  best = min(run(steps) for _ in range(calls)) / steps
  release()
  return best, params


def release():
  """Give cached GPU memory back (the JAX stacks that follow need it)."""
  import gc
  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
