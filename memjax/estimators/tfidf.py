"""TF-IDF of token sequences: which training samples are memorized (Morris et al. 2025).

Each sequence of the training pool is a document and each token id a term:

    idf(v)      = ln((1 + D) / (1 + df(v))) + 1        (D documents; df: documents containing v)
    tf(v, x)    = count of v in x / S
    tfidf(x)    = mean over the S token positions i of x of tf(x_i, x) * idf(x_i)
                = sum over the distinct tokens v of x of count(v, x)^2 idf(v) / S^2

(smoothed idf as in scikit-learn). High values come from rare tokens and from tokens repeated
within the sample. `mean_idf(x)`, the mean idf of its tokens, measures rarity alone.
"""

from __future__ import annotations

import numpy as np


def _runs(tokens_BxS: np.ndarray):
  """For each row's distinct tokens: (row, token, count), from the sorted rows."""
  b, s = tokens_BxS.shape
  sorted_BxS = np.sort(tokens_BxS, axis=1)
  first_BxS = np.ones((b, s), bool)
  first_BxS[:, 1:] = sorted_BxS[:, 1:] != sorted_BxS[:, :-1]
  first = first_BxS.ravel()
  run_id = np.cumsum(first) - 1
  counts = np.bincount(run_id)
  tokens = sorted_BxS.ravel()[first].astype(np.int64)
  rows = np.repeat(np.arange(b), first_BxS.sum(1))
  return rows, tokens, counts


def document_frequency(tokens_NxS, vocab_size: int, batch: int = 65536) -> np.ndarray:
  """df[v]: the number of sequences (rows) that contain token v at least once."""
  df = np.zeros(vocab_size, np.int64)
  for start in range(0, tokens_NxS.shape[0], batch):
    _, tokens, _ = _runs(np.asarray(tokens_NxS[start:start + batch]))
    df += np.bincount(tokens, minlength=vocab_size)
  return df


def idf_from_document_frequency(df_V: np.ndarray, num_documents: int) -> np.ndarray:
  """Smoothed idf [V] (natural log) from document frequencies over num_documents documents."""
  return np.log((1.0 + num_documents) / (1.0 + np.asarray(df_V, np.float64))) + 1.0


def inverse_document_frequency(tokens_NxS, vocab_size: int) -> np.ndarray:
  """Smoothed idf [V] over the rows of tokens_NxS as documents (natural log)."""
  return idf_from_document_frequency(document_frequency(tokens_NxS, vocab_size),
                                     tokens_NxS.shape[0])


def sample_tfidf(tokens_BxS, idf_V: np.ndarray) -> np.ndarray:
  """Mean TF-IDF over each sequence's token positions, [B] float64."""
  tokens_BxS = np.asarray(tokens_BxS)
  b, s = tokens_BxS.shape
  if b == 0:
    return np.zeros(0)
  rows, tokens, counts = _runs(tokens_BxS)
  return np.bincount(rows, weights=counts.astype(np.float64)**2 * idf_V[tokens],
                     minlength=b) / s**2


def mean_idf(tokens_BxS, idf_V: np.ndarray) -> np.ndarray:
  """Mean idf of each sequence's tokens (rarity without term frequency), [B] float64."""
  tokens_BxS = np.asarray(tokens_BxS)
  if tokens_BxS.shape[0] == 0:
    return np.zeros(0)
  return idf_V[tokens_BxS.astype(np.int64)].mean(1)
