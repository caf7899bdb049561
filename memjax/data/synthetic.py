"""Synthetic data of the capacity experiments, generated on the device and never stored.

Sample i of a model is `randint(fold_in(train_key, i), (S,), 0, V)`: uniform tokens, so a dataset
of N sequences carries exactly N * S * log2 V bits and a dataset of millions costs no memory. The
held-out sequences come from the same distribution under a different key.
"""

import jax
import jax.numpy as jnp


def train_key(data_key):
  return jax.random.fold_in(data_key, 0)


def test_key(data_key):
  return jax.random.fold_in(data_key, 1)


def sequences(key, indices_B, seq_len, vocab_size):
  """The sequences with these indices of the dataset drawn from `key`: [B, S] int32."""
  draw = lambda i: jax.random.randint(jax.random.fold_in(key, i), (seq_len,), 0, vocab_size)
  return jax.vmap(draw)(indices_B).astype(jnp.int32)


def cyclic_indices(position, batch_size, dataset_size):
  """Indices of the next batch when walking the dataset in order, wrapping around."""
  return (position + jnp.arange(batch_size, dtype=jnp.int32)) % dataset_size
