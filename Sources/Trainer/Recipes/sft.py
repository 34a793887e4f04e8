"""Capstan's built-in supervised fine-tuning recipe (`recipe: sft` in a job spec).

Fine-tunes a Hugging Face causal LM on JSONL data with LoRA (default) or full fine-tuning, under
torchrun (DDP: NCCL on GPUs, gloo on CPU), following Capstan's env contract:

- checkpoints go to $CAPSTAN_CHECKPOINT_DIR/step-N/, marked complete by `.done` (the agent uploads
  them); the state is snapshotted into reused (pinned, on GPU) CPU buffers and written by a
  background thread, so the loop stalls only for the device-to-host copy;
- a restored checkpoint in $CAPSTAN_RESUME_DIR resumes the weights (adapter or full), optimizer,
  LR schedule, every rank's RNG and the data position: the run continues as if never stopped;
- the final model goes to $CAPSTAN_OUTPUT_DIR in Hugging Face layout (adapter_config.json +
  adapter_model.safetensors, or config.json + model.safetensors), with the tokenizer;
- metrics are JSON lines on stdout (global rank 0): step, loss, lr, tokens/s, step time.

Data (one JSON object per line): {"messages": [{"role": "user", "content": ...}, {"role":
"assistant", "content": ...}, ...]} rendered with the tokenizer's chat template, or {"prompt":
..., "completion": ...}. Loss is computed on assistant turns / the completion only.

Run by Capstan as `python -m torch.distributed.run ... sft.py --config sft.json`;
`python sft.py --config sft.json --check-data` tokenizes the data and prints what would be trained.
Capstan ships this file inside its binary; it needs torch, transformers, peft and safetensors.
"""
import argparse
import json
import math
import os
import sys
import threading
import time
import warnings

# Quiet logs: deprecation notices and progress bars are noise in a node log.
warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

DEFAULTS = {
    "model": None,             # a local Hugging Face model folder (config.json, tokenizer, weights)
    "data": None,              # a JSONL file (or a list of them)
    "method": "lora",          # lora | full
    "init": "pretrained",      # pretrained | random (the model folder's config, seeded weights)
    "epochs": 1.0,
    "steps": None,             # overrides epochs when set
    "batch_size": 4,           # per device, per micro-step
    "grad_accum": 1,
    "seq_len": 1024,
    "lr": None,                # default 2e-4 (lora) / 2e-5 (full)
    "scheduler": "cosine",     # cosine | linear | constant
    "warmup_ratio": 0.03,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "lora_rank": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_targets": "all-linear",
    "gradient_checkpointing": False,
    "dtype": "auto",           # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    "checkpoint_every": 100,   # steps
    "log_every": 10,           # steps
    "seed": 42,
    "shuffle": True,
    "checkpoint_mode": "background",  # background | sync (the naive baseline, for benchmarks)
}


class RecipeError(Exception):
    """A problem with the job's configuration or data: reported plainly, exit code 2."""


def emit(obj):
    print(json.dumps(obj), flush=True)


def load_config(path):
    try:
        with open(path) as f:
            given = json.load(f)
    except (OSError, ValueError) as e:
        raise RecipeError(f"cannot read the recipe config {path}: {e}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise RecipeError(f"unknown recipe setting(s) {', '.join(unknown)}; known: {', '.join(sorted(DEFAULTS))}")
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in given.items() if v is not None})
    if not cfg["model"]:
        raise RecipeError("`model` is missing: a local Hugging Face model folder")
    if not cfg["data"]:
        raise RecipeError("`data` is missing: a JSONL file of chat `messages` or `prompt`/`completion` records")
    if cfg["method"] not in ("lora", "full"):
        raise RecipeError(f"`method` must be lora or full, got {cfg['method']!r}")
    if cfg["init"] not in ("pretrained", "random"):
        raise RecipeError(f"`init` must be pretrained or random, got {cfg['init']!r}")
    if cfg["scheduler"] not in ("cosine", "linear", "constant"):
        raise RecipeError(f"`scheduler` must be cosine, linear or constant, got {cfg['scheduler']!r}")
    if cfg["checkpoint_mode"] not in ("background", "sync"):
        raise RecipeError(f"`checkpoint_mode` must be background or sync, got {cfg['checkpoint_mode']!r}")
    if cfg["dtype"] not in ("auto", "bf16", "fp16", "fp32"):
        raise RecipeError(f"`dtype` must be auto, bf16, fp16 or fp32, got {cfg['dtype']!r}")
    for key in ("batch_size", "grad_accum", "seq_len", "checkpoint_every", "log_every", "lora_rank"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise RecipeError(f"`{key}` must be a whole number >= 1, got {cfg[key]!r}")
    if cfg["lr"] is None:
        cfg["lr"] = 2e-4 if cfg["method"] == "lora" else 2e-5
    if isinstance(cfg["data"], str):
        cfg["data"] = [cfg["data"]]
    return cfg


# ---------------------------------------------------------------------------------------------
# Data: JSONL records to (input_ids, labels) with the loss masked to the answer.

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def render(tok, messages, add_generation_prompt):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_pieces(tok, messages, where):
    """The conversation as (text, trained) pieces: everything up to each assistant turn is
    context; each assistant turn, as the template renders it (end-of-turn token included), is
    trained."""
    if not isinstance(messages, list) or not messages:
        raise RecipeError(f"{where}: `messages` must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise RecipeError(f"{where}: message {i} must be {{\"role\": system|user|assistant|tool, \"content\": text}}")
    if not any(m["role"] == "assistant" for m in messages):
        raise RecipeError(f"{where}: no assistant message, so nothing to learn")
    pieces, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render(tok, messages[:i], True) if i else ""
        full = render(tok, messages[: i + 1], False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise RecipeError(
                f"{where}: the tokenizer's chat template does not render this conversation turn by turn, "
                "so the answer cannot be told apart from the prompt; use prompt/completion records")
        pieces.append((prefix[len(done):], False))
        pieces.append((full[len(prefix):], True))
        done = full
    return pieces


def encode_record(tok, rec, seq_len, where):
    if not isinstance(rec, dict):
        raise RecipeError(f"{where}: each line must be a JSON object")
    if "messages" in rec:
        pieces = chat_pieces(tok, rec["messages"], where)
        ids, labels = [], []
        for text, trained in pieces:
            if not text:
                continue
            t = tok(text, add_special_tokens=False)["input_ids"]
            ids += t
            labels += t if trained else [-100] * len(t)
    elif "prompt" in rec and "completion" in rec:
        if not isinstance(rec["prompt"], str) or not isinstance(rec["completion"], str):
            raise RecipeError(f"{where}: `prompt` and `completion` must be text")
        p = tok(rec["prompt"], add_special_tokens=True)["input_ids"]
        c = tok(rec["completion"], add_special_tokens=False)["input_ids"]
        if tok.eos_token_id is not None:
            c = c + [tok.eos_token_id]
        ids, labels = p + c, [-100] * len(p) + c
    else:
        raise RecipeError(f"{where}: expected `messages`, or `prompt` and `completion`; got keys {sorted(rec)}")
    truncated = len(ids) > seq_len
    return ids[:seq_len], labels[:seq_len], truncated


def load_data(tok, paths, seq_len):
    examples, stats = [], {"records": 0, "skipped": 0, "truncated": 0, "tokens": 0, "trained_tokens": 0}
    for path in paths:
        try:
            f = open(path, encoding="utf-8")
        except OSError as e:
            raise RecipeError(f"cannot read the data file {path}: {e}")
        with f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    raise RecipeError(f"{where}: not valid JSON ({e})")
                stats["records"] += 1
                ids, labels, truncated = encode_record(tok, rec, seq_len, where)
                stats["truncated"] += truncated
                trained = sum(1 for x in labels if x != -100)
                if trained == 0:
                    stats["skipped"] += 1  # the answer was cut off entirely by seq_len
                    continue
                stats["tokens"] += len(ids)
                stats["trained_tokens"] += trained
                examples.append((ids, labels))
    if not examples:
        raise RecipeError(f"no trainable example in {', '.join(paths)} (records: {stats['records']}, "
                          f"cut off by seq_len {seq_len}: {stats['skipped']})")
    return examples, stats


def collate(batch, pad_id):
    import torch
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids, labels, mask


class Order:
    """Which examples a (step, micro-step, rank) trains on: a seeded permutation per epoch, so the
    data position is a pure function of the step and a resumed run sees exactly the same batches."""

    def __init__(self, n, seed, shuffle, world, batch_size, grad_accum):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.world, self.batch_size, self.grad_accum = world, batch_size, grad_accum
        self.per_step = world * batch_size * grad_accum
        self.cache = {}

    def perm(self, epoch):
        if epoch not in self.cache:
            import torch
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
                self.cache = {epoch: torch.randperm(self.n, generator=g).tolist()}
            else:
                self.cache = {epoch: list(range(self.n))}
        return self.cache[epoch]

    def indices(self, step, micro, rank):
        """Example indices for `step` (1-based)."""
        start = (step - 1) * self.per_step + (micro * self.world + rank) * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            out.append(self.perm(pos // self.n)[pos % self.n])
        return out

    def epoch_at(self, step):
        return step * self.per_step / self.n


def lr_factor(kind, step, warmup, total):
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Checkpoints: snapshot into reused CPU buffers, write in the background.

class Checkpointer:
    """Writes step-N/ in the background. `save` costs the loop the device-to-host copy into
    buffers allocated once (pinned when on GPU: 55 GB/s instead of ~1.5 from pageable memory),
    plus any wait for the previous write when checkpoints come faster than the disk takes them;
    the write itself and the `.done` marker happen on a thread while training goes on. The
    buffers are allocated by `prepare` on a thread too, early in the run (pinning 16 GB takes
    seconds), so not even the first checkpoint waits for them.

    mode "sync" is the naive baseline for benchmarks: copy to pageable memory and write, all in
    the loop."""

    def __init__(self, root, rank, local_rank, local_world, on_gpu, mode="background"):
        self.root, self.rank, self.local_rank, self.local_world = root, rank, local_rank, local_world
        self.on_gpu, self.mode = on_gpu, mode
        self.buffers = {"weights": {}, "optimizer": {}}
        self.thread = None
        self.preparing = None
        self.error = None

    def prepare(self, weights, optimizer):
        """Allocates the buffers for tensors shaped like these, on a thread."""
        if self.local_rank != 0 or self.mode != "background" or self.preparing is not None:
            return
        import torch
        shapes = {kind: {n: (t.shape, t.dtype) for n, t in ts.items()} for kind, ts in (("weights", weights), ("optimizer", optimizer))}

        def allocate():
            for kind, items in shapes.items():
                for name, (shape, dtype) in items.items():
                    if name not in self.buffers[kind]:
                        self.buffers[kind][name] = torch.empty(shape, dtype=dtype, device="cpu", pin_memory=self.on_gpu)

        self.preparing = threading.Thread(target=allocate, name="checkpoint-buffers", daemon=True)
        self.preparing.start()

    def _snapshot(self, kind, tensors):
        import torch
        if self.preparing is not None:
            self.preparing.join()
        out, buffers = {}, self.buffers[kind]
        for name, t in tensors.items():
            if self.mode == "sync":
                out[name] = t.detach().to("cpu", copy=True).contiguous()
                continue
            buf = buffers.get(name)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.on_gpu)
                buffers[name] = buf
            buf.copy_(t.detach(), non_blocking=self.on_gpu)
            out[name] = buf
        return out

    def wait(self):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            raise self.error

    def save(self, step, weights, optimizer, meta, rng):
        import torch
        t0 = time.perf_counter()
        self.wait()  # the buffers are reused: the previous write must be done
        waited = time.perf_counter() - t0
        folder = os.path.join(self.root, f"step-{step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(rng, os.path.join(folder, f"rng-rank{self.rank}.pt"))
        if self.local_rank != 0:
            return {"stall_s": time.perf_counter() - t0}
        w = self._snapshot("weights", weights)
        o = self._snapshot("optimizer", optimizer)
        if self.on_gpu:
            torch.cuda.current_stream().synchronize()
        copied = time.perf_counter() - t0
        expected = [f"rng-rank{r}.pt" for r in range(self.rank, self.rank + self.local_world)]

        def write():
            try:
                from safetensors.torch import save_file
                w0 = time.perf_counter()
                save_file(w, os.path.join(folder, "weights.safetensors"))
                save_file(o, os.path.join(folder, "optimizer.safetensors"))
                with open(os.path.join(folder, "trainer.json"), "w") as f:
                    json.dump(meta, f)
                # Every rank of this node writes its RNG state; the part is complete with all.
                deadline = time.time() + 600
                while not all(os.path.exists(os.path.join(folder, e)) for e in expected):
                    if time.time() > deadline:
                        raise RuntimeError(f"step {step}: RNG state of a local rank never arrived")
                    time.sleep(0.01)
                size = sum(os.path.getsize(os.path.join(folder, x)) for x in os.listdir(folder))
                open(os.path.join(folder, ".done"), "w").close()
                emit({"event": "checkpoint_written", "step": step, "write_s": round(time.perf_counter() - w0, 3), "bytes": size})
            except Exception as e:  # surfaced at the next save or at the end
                self.error = e

        if self.mode == "sync":
            write()
            if self.error is not None:
                raise self.error
            return {"stall_s": time.perf_counter() - t0, "copy_s": copied}
        self.thread = threading.Thread(target=write, name=f"checkpoint-{step}", daemon=True)
        self.thread.start()
        return {"stall_s": time.perf_counter() - t0, "waited_s": waited}


def flatten_optimizer(sd):
    tensors, state = {}, {}
    for idx, st in sd["state"].items():
        plain = {}
        for k, v in st.items():
            if hasattr(v, "shape"):
                tensors[f"{idx}.{k}"] = v
            else:
                plain[k] = v
        state[str(idx)] = plain
    return tensors, {"param_groups": sd["param_groups"], "state": state}


def unflatten_optimizer(tensors, meta):
    state = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state():
    import random
    import torch
    s = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state()
    return s


def set_rng_state(s):
    import random
    import torch
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


# ---------------------------------------------------------------------------------------------

def load_tokenizer(cfg):
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(cfg["model"])
    except Exception as e:
        raise RecipeError(f"cannot load a tokenizer from {cfg['model']}: {e}")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
    return tok


def build_model(cfg, dtype, device):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    if cfg["init"] == "random":
        try:
            mc = AutoConfig.from_pretrained(cfg["model"])
        except Exception as e:
            raise RecipeError(f"cannot read the model config in {cfg['model']}: {e}")
        torch.manual_seed(cfg["seed"])  # every rank and every attempt builds the same weights
        with device:  # initialised where it trains: an 8B model takes seconds on a GPU, minutes on CPU
            model = AutoModelForCausalLM.from_config(mc, dtype=dtype)
    else:
        has_weights = any(n.endswith((".safetensors", ".bin")) for n in os.listdir(cfg["model"]))
        if not has_weights:
            raise RecipeError(f"{cfg['model']} has no weights (*.safetensors or *.bin); set `init: random` "
                              "to train a randomly initialised model of that config")
        try:
            model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=dtype)
        except Exception as e:
            raise RecipeError(f"cannot load the model in {cfg['model']}: {e}")
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg["method"] == "lora":
        from peft import LoraConfig, get_peft_model
        targets = cfg["lora_targets"]
        lc = LoraConfig(r=cfg["lora_rank"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
                        target_modules=targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lc)
        if cfg["gradient_checkpointing"]:
            model.enable_input_require_grads()
    return model.to(device)


def main():
    ap = argparse.ArgumentParser(description="Capstan's SFT recipe")
    ap.add_argument("--config", required=True)
    ap.add_argument("--check-data", action="store_true", help="tokenize the data, print what would be trained, exit")
    args = ap.parse_args()
    cfg = load_config(args.config)

    import torch
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    tok = load_tokenizer(cfg)
    if args.check_data:
        examples, stats = load_data(tok, cfg["data"], cfg["seq_len"])
        ids, labels = examples[0]
        stats["first_example"] = {
            "context": tok.decode([t for t, l in zip(ids, labels) if l == -100]),
            "trained": tok.decode([t for t, l in zip(ids, labels) if l != -100]),
        }
        emit(stats)
        return

    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if on_gpu else "gloo", device_id=device if on_gpu else None)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(
        cfg["dtype"], torch.bfloat16 if on_gpu else torch.float32)
    leader = rank == 0
    attempt = int(os.environ.get("CAPSTAN_ATTEMPT", "1"))
    ckpt_root = os.environ.get("CAPSTAN_CHECKPOINT_DIR", os.path.abspath("checkpoints"))
    out_dir = os.environ.get("CAPSTAN_OUTPUT_DIR", os.path.abspath("output"))
    resume = os.environ.get("CAPSTAN_RESUME_DIR")

    examples, stats = load_data(tok, cfg["data"], cfg["seq_len"])
    model = build_model(cfg, dtype, device)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for _, p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    order = Order(len(examples), cfg["seed"], cfg["shuffle"], world, cfg["batch_size"], cfg["grad_accum"])
    total = cfg["steps"] or max(1, math.ceil(cfg["epochs"] * len(examples) / order.per_step))
    warmup = int(cfg["warmup_ratio"] * total)
    opt = torch.optim.AdamW([p for _, p in trainable], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                            fused=on_gpu or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg["scheduler"], s, warmup, total))
    if leader:
        emit({"event": "recipe", "recipe": "sft", "method": cfg["method"], "model": cfg["model"], "init": cfg["init"],
              "params": n_total, "trainable": n_trainable, "examples": len(examples), "trained_tokens": stats["trained_tokens"],
              "truncated": stats["truncated"], "skipped": stats["skipped"], "steps": total, "world": world,
              "global_batch": order.per_step, "device": str(device.type), "dtype": str(dtype).replace("torch.", ""),
              "attempt": attempt})

    # Weights saved in a checkpoint: what trains (the adapter, or everything for full).
    def weights():
        if cfg["method"] == "lora":
            return {n: p for n, p in trainable}
        return model.state_dict()

    start = 0
    if resume:
        from safetensors.torch import load_file
        try:
            with open(os.path.join(resume, "trainer.json")) as f:
                meta = json.load(f)
            w = load_file(os.path.join(resume, "weights.safetensors"))
            o = load_file(os.path.join(resume, "optimizer.safetensors"))
        except (OSError, ValueError) as e:
            raise RecipeError(f"the restored checkpoint in {resume} is incomplete: {e}")
        if meta.get("method") != cfg["method"] or meta.get("model") != cfg["model"]:
            raise RecipeError(f"the checkpoint was written by a {meta.get('method')} run of {meta.get('model')}, "
                              f"this run is {cfg['method']} of {cfg['model']}")
        if cfg["method"] == "lora":
            params = dict(trainable)
            missing = sorted(set(params) - set(w))
            if missing:
                raise RecipeError(f"the checkpoint lacks {len(missing)} adapter tensors, e.g. {missing[0]}")
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(w[n])
        else:
            model.load_state_dict(w)
        opt.load_state_dict(unflatten_optimizer(o, meta["optimizer"]))
        sched.load_state_dict(meta["scheduler"])
        start = meta["step"]
        rng_file = os.path.join(resume, f"rng-rank{rank}.pt")
        if os.path.exists(rng_file):
            set_rng_state(torch.load(rng_file, weights_only=False))
        if leader:
            emit({"event": "resumed", "step": start, "attempt": attempt, "loss": meta.get("loss")})

    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if on_gpu else None)
    model.train()
    ckpt = Checkpointer(ckpt_root, rank, local_rank, local_world, on_gpu, cfg["checkpoint_mode"])
    window_t, window_tokens, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
    last_loss = None
    for step in range(start + 1, total + 1):
        step_tokens = 0
        for micro in range(cfg["grad_accum"]):
            batch = [examples[i] for i in order.indices(step, micro, rank)]
            ids, labels, mask = (t.to(device, non_blocking=True) for t in collate(batch, tok.pad_token_id))
            step_tokens += int(mask.sum())
            sync = micro == cfg["grad_accum"] - 1 or world == 1
            ctx = ddp.no_sync() if not sync else _null()
            with ctx:
                out = ddp(input_ids=ids, attention_mask=mask, labels=labels)
                (out.loss / cfg["grad_accum"]).backward()
            window_loss += out.loss.detach()
            window_n += 1
        if cfg["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], cfg["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window_tokens += step_tokens
        if step == start + 1:  # the optimizer's state exists now: size the checkpoint buffers
            ckpt.prepare(weights(), flatten_optimizer(opt.state_dict())[0])

        if step % cfg["log_every"] == 0 or step == total or step == start + 1:
            stats_t = torch.tensor([float(window_loss), float(window_n), float(window_tokens)], device=device)
            if world > 1:
                dist.all_reduce(stats_t)
            if on_gpu:
                torch.cuda.synchronize()
            now = time.perf_counter()
            loss_sum, n, tokens = stats_t.tolist()
            steps_in_window = n / cfg["grad_accum"] / world
            last_loss = loss_sum / n
            if leader:
                emit({"step": step, "loss": round(last_loss, 5), "lr": float(f"{sched.get_last_lr()[0]:.4g}"),
                      "tokens_per_s": round(tokens / (now - window_t), 1),
                      "step_time_s": round((now - window_t) / max(1, steps_in_window), 4),
                      "epoch": round(order.epoch_at(step), 3), "attempt": attempt})
            window_t, window_tokens, window_loss, window_n = now, 0, 0.0, 0

        if step % cfg["checkpoint_every"] == 0 or step == total:
            o_tensors, o_meta = flatten_optimizer(opt.state_dict())
            meta = {"step": step, "method": cfg["method"], "model": cfg["model"], "loss": last_loss,
                    "optimizer": o_meta, "scheduler": sched.state_dict(), "world": world}
            r = ckpt.save(step, weights(), o_tensors, meta, rng_state())
            if leader:
                emit({"event": "checkpoint", "step": step, **{k: round(v, 4) for k, v in r.items()}})
            # The stall is not training time.
            window_t += r["stall_s"]
    ckpt.wait()

    if leader:
        os.makedirs(out_dir, exist_ok=True)
        t0 = time.perf_counter()
        if cfg["method"] == "lora":
            model.save_pretrained(out_dir, safe_serialization=True)
            if cfg["init"] == "random":
                # The adapter needs its base, and a random one exists nowhere else: save it
                # too (after the adapter: unload() takes the adapter's layers out).
                base = model.unload()
                base.save_pretrained(os.path.join(out_dir, "base"), safe_serialization=True)
                tok.save_pretrained(os.path.join(out_dir, "base"))
                _point_adapter_at(out_dir, "base")
        else:
            model.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
        emit({"event": "saved", "output": out_dir, "method": cfg["method"], "save_s": round(time.perf_counter() - t0, 3),
              "final_loss": last_loss, "steps": total})
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _point_adapter_at(out_dir, rel):
    path = os.path.join(out_dir, "adapter_config.json")
    with open(path) as f:
        ac = json.load(f)
    ac["base_model_name_or_path"] = rel
    with open(path, "w") as f:
        json.dump(ac, f, indent=2)


if __name__ == "__main__":
    try:
        main()
    except RecipeError as e:
        print(f"sft recipe: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
