"""A BERT encoder forward pass in JAX (the all-MiniLM-L6-v2 architecture), and its loader.

The project's own text encoder: a pure function of a nested dict of parameters, read from a
Hugging Face `config.json` + `model.safetensors` directory with no `transformers` dependency.
The architecture is the original BERT: word + absolute position + token-type embeddings, a
LayerNorm, then post-LN layers (self-attention, residual, LayerNorm; exact-erf GELU MLP,
residual, LayerNorm). The pooler is not used: callers want per-token states.

Parameters, with H = hidden_size, I = intermediate_size and kernels stored [in, out]:

  {"embeddings": {"word": [vocab, H], "position": [max_positions, H],
                  "token_type": [type_vocab, H], "norm": {"scale": [H], "bias": [H]}},
   "layers": [{"query" | "key" | "value" | "attention_out": {"kernel": [H, H], "bias": [H]},
               "attention_norm": {"scale": [H], "bias": [H]},
               "mlp_in": {"kernel": [H, I], "bias": [I]},
               "mlp_out": {"kernel": [I, H], "bias": [H]},
               "mlp_norm": {"scale": [H], "bias": [H]}}, ...]}   # num_hidden_layers entries
"""
import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp

# Full float32 matmuls: the encoder is small, and on GPUs the default (TF32) would move its
# states by ~1e-3 from the checkpoint's reference behaviour.
_PRECISION = jax.lax.Precision.HIGHEST

# Prefixes the same weights carry in other checkpoints: `bert.` in BertFor* task models,
# `0.auto_model.` in sentence-transformers' own saved state.
KEY_PREFIXES = ("", "bert.", "0.auto_model.")

# Our name -> the Hugging Face name (without ".weight"/".bias") inside encoder.layer.{i}.
_LAYER_KEYS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "mlp_in": "intermediate.dense",
    "mlp_out": "output.dense",
    "mlp_norm": "output.LayerNorm",
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture fields of a BERT `config.json`; defaults are all-MiniLM-L6-v2's."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"

  def __post_init__(self):
    if self.hidden_act != "gelu":
      raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; this BERT "
                       "implements 'gelu' (exact erf GELU) only")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_json(cls, path: str) -> "BertConfig":
    """Reads a Hugging Face BERT config.json; unknown fields are ignored."""
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no BERT config at {path}: expected the config.json of a "
                              "Hugging Face BertModel checkpoint")
    with open(path) as f:
      raw = json.load(f)
    # These have BERT-base defaults in transformers; guessing them would load the wrong shapes.
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings")
    missing = [name for name in required if name not in raw]
    if missing:
      raise ValueError(f"{path} lacks the BERT config fields {missing}")
    if raw.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{path}: position_embedding_type="
                       f"{raw['position_embedding_type']!r} is not supported, only 'absolute'")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in fields})


def load_bert_params(model_dir: str, config: BertConfig | None = None) -> dict:
  """Reads `model_dir/model.safetensors` into the parameter dict above (float32 jnp arrays).

  Accepts Hugging Face BertModel key names, bare or under a `bert.` / `0.auto_model.` prefix.
  `config` defaults to `model_dir/config.json`; every shape is checked against it.
  """
  from safetensors.numpy import load_file  # only needed here; keeps the forward import light

  config = config or BertConfig.from_json(os.path.join(model_dir, "config.json"))
  path = os.path.join(model_dir, "model.safetensors")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no BERT weights at {path}: expected a model.safetensors with "
                            "Hugging Face BertModel key names")
  tensors = load_file(path)
  prefix = next((p for p in KEY_PREFIXES if p + "embeddings.word_embeddings.weight" in tensors),
                "")

  def get(name: str, shape: tuple[int, ...]) -> jax.Array:
    key = prefix + name
    if key not in tensors:
      raise ValueError(f"{path} has no weight {key!r}; expected Hugging Face BertModel key "
                       f"names, bare or prefixed by one of {[p for p in KEY_PREFIXES if p]}")
    value = tensors[key]
    if value.shape != shape:
      raise ValueError(f"{path}: weight {key!r} has shape {value.shape}, but config.json "
                       f"implies {shape}")
    return jnp.asarray(value, jnp.float32)

  h, inner = config.hidden_size, config.intermediate_size

  def linear(name: str, d_in: int, d_out: int) -> dict:
    # torch Linear stores weight [out, in]; we keep [in, out] so that x @ kernel.
    return {"kernel": get(name + ".weight", (d_out, d_in)).T, "bias": get(name + ".bias", (d_out,))}

  def norm(name: str) -> dict:
    return {"scale": get(name + ".weight", (h,)), "bias": get(name + ".bias", (h,))}

  dims = {"query": (h, h), "key": (h, h), "value": (h, h), "attention_out": (h, h),
          "mlp_in": (h, inner), "mlp_out": (inner, h)}
  layers = []
  for i in range(config.num_hidden_layers):
    base = f"encoder.layer.{i}."
    layers.append({ours: (norm(base + theirs) if ours.endswith("norm")
                          else linear(base + theirs, *dims[ours]))
                   for ours, theirs in _LAYER_KEYS.items()})
  embeddings = {
      "word": get("embeddings.word_embeddings.weight", (config.vocab_size, h)),
      "position": get("embeddings.position_embeddings.weight",
                      (config.max_position_embeddings, h)),
      "token_type": get("embeddings.token_type_embeddings.weight", (config.type_vocab_size, h)),
      "norm": norm("embeddings.LayerNorm"),
  }
  return {"embeddings": embeddings, "layers": layers}


def _layer_norm(x: jax.Array, p: dict, eps: float) -> jax.Array:
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)  # biased, as torch LayerNorm
  return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x: jax.Array, p: dict) -> jax.Array:
  return jnp.einsum("...i,io->...o", x, p["kernel"], precision=_PRECISION) + p["bias"]


def _layer(x: jax.Array, key_mask: jax.Array, p: dict, config: BertConfig) -> jax.Array:
  """One post-LN layer; x [N, L, H], key_mask bool [N, 1, 1, L] -> [N, L, H]."""
  n, length, _ = x.shape
  heads, head_dim = config.num_attention_heads, config.head_dim
  q, k, v = (_dense(x, p[name]).reshape(n, length, heads, head_dim)
             for name in ("query", "key", "value"))  # each [N, L, heads, head_dim]
  scores = jnp.einsum("nqhd,nkhd->nhqk", q, k, precision=_PRECISION) / math.sqrt(head_dim)
  # A finite floor, not -inf: a row whose keys are all padding (a batch-filling row) then
  # averages harmlessly instead of producing NaN.
  scores = jnp.where(key_mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)  # [N, heads, L, L]
  context = jnp.einsum("nhqk,nkhd->nqhd", probs, v, precision=_PRECISION)
  x = _layer_norm(x + _dense(context.reshape(n, length, -1), p["attention_out"]),
                  p["attention_norm"], config.layer_norm_eps)
  hidden = jax.nn.gelu(_dense(x, p["mlp_in"]), approximate=False)  # [N, L, I]
  return _layer_norm(x + _dense(hidden, p["mlp_out"]), p["mlp_norm"], config.layer_norm_eps)


def bert_forward(params: dict, token_ids: jax.Array, attention_mask: jax.Array,
                 config: BertConfig = BertConfig()) -> jax.Array:
  """Last hidden states float32 [N, L, hidden] of token_ids int32 [N, L].

  attention_mask bool [N, L] is True on real tokens; padding keys are masked out of every
  attention, so real positions do not depend on what stands in the padding. States at padding
  positions are computed but meaningless. All token types are 0 (single sentences). `config` is
  static: under jit, bind it with functools.partial.
  """
  n, length = token_ids.shape
  if length > config.max_position_embeddings:
    raise ValueError(f"sequence length {length} exceeds max_position_embeddings="
                     f"{config.max_position_embeddings}; truncate the tokens")
  emb = params["embeddings"]
  x = (emb["word"][token_ids]                      # [N, L, H]
       + emb["position"][None, :length]            # [1, L, H]
       + emb["token_type"][0][None, None])         # [1, 1, H]
  x = _layer_norm(x.astype(jnp.float32), emb["norm"], config.layer_norm_eps)
  key_mask = attention_mask.astype(bool)[:, None, None, :]  # [N, 1, 1, L]: over keys
  for p in params["layers"]:
    x = _layer(x, key_mask, p, config)
  return x
