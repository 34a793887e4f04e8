"""Loads a fine-tuned adapter with peft and generates: the check that the recipe's output is a
real, loadable Hugging Face model.

    python3 generate.py OUTPUT_DIR [question ...]

OUTPUT_DIR is the job's outputs folder (`capstan storage cp` it from the bucket, or the demo's
local bucket): adapter_config.json + adapter_model.safetensors, the tokenizer, and `base/` (the
random base this example starts from; with a real model, the base is `model` in job.yaml).
Prints one JSON line per question.
"""
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

out = sys.argv[1]
questions = sys.argv[2:] or ["What is 12 plus 30?", "Spell 'anchor' backwards.", "Repeat the color blue three times."]
with open(os.path.join(out, "adapter_config.json")) as f:
    base_path = json.load(f)["base_model_name_or_path"]
if not os.path.isabs(base_path) and os.path.isdir(os.path.join(out, base_path)):
    base_path = os.path.join(out, base_path)
tok = AutoTokenizer.from_pretrained(out)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), out)
model.eval()
torch.manual_seed(0)
for q in questions:
    prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    answer = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print(json.dumps({"question": q, "answer": answer, "new_tokens": int(gen.shape[1] - ids["input_ids"].shape[1])}), flush=True)
