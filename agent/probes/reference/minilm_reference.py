"""An independent reference for the runner's embeddings: all-MiniLM-L6-v2 computed with
numpy from model.safetensors (BERT encoder, mean pooling over real tokens, L2
normalisation, as sentence-transformers does), tokenised by the Python `tokenizers`.

Run once to produce the figures pinned in tests/minilm.rs (REFERENCE_*):

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install numpy tokenizers safetensors
    /tmp/ref/bin/python agent/probes/reference/minilm_reference.py "$LOTABOTS_STORES/minilm"

It needs no torch and shares no code with candle, so agreement means the Rust path
(tokenizer settings, weight names, attention mask, pooling, normalisation) is right.
"""

import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "A man is eating food.",
    "A man is eating pasta.",
    "A monkey is playing drums.",
]


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf)


def gelu(x):
    # BERT's exact GELU (erf), as transformers' "gelu".
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def encode(w, cfg, ids, types):
    n = len(ids)
    eps = cfg["layer_norm_eps"]
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][types]
    )
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    heads = cfg["num_attention_heads"]
    dh = cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda name, t: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q = lin("attention.self.query", x).reshape(n, heads, dh).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, heads, dh).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, heads, dh).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * dh)
        x = layer_norm(
            x + lin("attention.output.dense", ctx),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        h = gelu(lin("intermediate.dense", x))
        x = layer_norm(
            x + lin("output.dense", h),
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
            eps,
        )
    return x


def main(model_dir):
    cfg = json.load(open(f"{model_dir}/config.json"))
    w = {k: v.astype(np.float64) for k, v in load_file(f"{model_dir}/model.safetensors").items()}
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_padding()
    out = {"sentences": SENTENCES, "ids": [], "first8": [], "cosines": {}}
    vecs = []
    for s in SENTENCES:
        e = tok.encode(s)
        h = encode(w, cfg, np.array(e.ids), np.array(e.type_ids))
        v = h.mean(0)  # no padding: every token is real
        v = v / np.linalg.norm(v)
        vecs.append(v)
        out["ids"].append(e.ids)
        out["first8"].append([round(float(x), 6) for x in v[:8]])
    for i in range(len(vecs)):
        for j in range(i + 1, len(vecs)):
            out["cosines"][f"{i}-{j}"] = round(float(vecs[i] @ vecs[j]), 6)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
