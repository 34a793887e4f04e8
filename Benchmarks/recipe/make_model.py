"""Writes a benchmark model folder (a Llama-architecture config of a named shape, plus
examples/sft-tiny's tokenizer) and synthetic data whose every record fills seq_len tokens, so
tokens/s compare with a plain loop on full-length random batches.

    python3 make_model.py SHAPE OUT_DIR SEQ_LEN [RECORDS]     # SHAPE: tiny | llama-1b | llama-8b
"""
import json
import os
import random
import shutil
import sys

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (256, 688, 4, 8, 4, 32000),
    "llama-1b": (2048, 8192, 16, 32, 8, 128256),
    "llama-8b": (4096, 14336, 32, 32, 8, 128256),
}

shape, out, seq = sys.argv[1], sys.argv[2], int(sys.argv[3])
records = int(sys.argv[4]) if len(sys.argv) > 4 else 64
h, inter, layers, heads, kv, vocab = SHAPES[shape]
here = os.path.dirname(os.path.abspath(__file__))
tok_src = os.path.join(here, "..", "..", "examples", "sft-tiny", "model")
os.makedirs(os.path.join(out, "model"), exist_ok=True)
for f in os.listdir(tok_src):
    if f != "config.json":
        shutil.copy(os.path.join(tok_src, f), os.path.join(out, "model", f))
with open(os.path.join(tok_src, "config.json")) as f:
    cfg = json.load(f)
cfg.update({"hidden_size": h, "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": max(seq, 8192),
            "tie_word_embeddings": shape == "tiny", "rope_theta": 500000.0})
with open(os.path.join(out, "model", "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
rng = random.Random(0)
words = "capstan anchor rope sail winch deck mast harbor tide keel rudder compass lantern cargo voyage".split()
with open(os.path.join(out, "data.jsonl"), "w") as f:
    for _ in range(records):
        # ~2 tokens per word with this tokenizer: 1.5 × seq_len words always fill seq_len.
        text = " ".join(rng.choice(words) for _ in range(int(seq * 1.5)))
        f.write(json.dumps({"prompt": "Write: ", "completion": text}) + "\n")
print(json.dumps({"shape": shape, "model": os.path.join(out, "model"), "data": os.path.join(out, "data.jsonl")}))
