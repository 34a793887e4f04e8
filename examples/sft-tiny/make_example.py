"""Regenerates this example's bundled files (committed; run only to change them):
data/train.jsonl (a small synthetic instruction set, chat and prompt/completion records) and
model/ (a tiny Llama-architecture config plus a byte-level BPE tokenizer trained on that data;
no weights: the job sets `init: random`, since no model hub is reachable).

    python3 make_example.py      # needs transformers and tokenizers
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(7)
WORDS = ("capstan anchor rope sail winch deck mast harbor tide keel rudder compass lantern cargo "
         "voyage island bucket node cluster gradient tensor model weight adapter token batch").split()
COLORS = "red green blue yellow black white orange purple".split()


def task():
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randrange(10, 60), rng.randrange(10, 40)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 1:
        w = rng.choice(WORDS)
        return f"Spell '{w}' backwards.", f"'{w}' backwards is '{w[::-1]}'."
    if kind == 2:
        w = rng.choice(WORDS)
        return f"How many letters are in '{w}'?", f"'{w}' has {len(w)} letters."
    if kind == 3:
        ws = rng.sample(WORDS, 3)
        return f"Sort these words: {', '.join(ws)}.", f"Sorted: {', '.join(sorted(ws))}."
    c = rng.choice(COLORS)
    return f"Repeat the color {c} three times.", f"{c} {c} {c}."


def main():
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    records = []
    for i in range(1200):
        q, a = task()
        if i % 2 == 0:
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            if i % 6 == 0:
                msgs.insert(0, {"role": "system", "content": "You are a concise deckhand."})
            if i % 10 == 0:  # a two-turn conversation: both answers are trained, never the questions
                q2, a2 = task()
                msgs += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
            records.append({"messages": msgs})
        else:
            records.append({"prompt": f"Question: {q}\nAnswer: ", "completion": a})
    with open(os.path.join(HERE, "data", "train.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, PreTrainedTokenizerFast
    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    texts = [json.dumps(r) for r in records]
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
                                  chat_template=template)
    model_dir = os.path.join(HERE, "model")
    tok.save_pretrained(model_dir)
    # Loadable by transformers 4.x as well as 5.x: name the generic fast class and keep the
    # chat template inside tokenizer_config.json too.
    tc_path = os.path.join(model_dir, "tokenizer_config.json")
    with open(tc_path) as f:
        tc = json.load(f)
    tc.update({"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template, "model_max_length": 256})
    with open(tc_path, "w") as f:
        json.dump(tc, f, indent=2)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    cfg.save_pretrained(model_dir)
    print(f"{len(records)} records, vocab {len(tok)}, model in {model_dir}")


if __name__ == "__main__":
    main()
