"""Capstan's built-in supervised fine-tuning recipe (`recipe: sft` in a job spec).

Fine-tunes a Hugging Face causal LM on JSONL data with LoRA (default) or full fine-tuning, under
torchrun (NCCL on GPUs, gloo on CPU), with DDP or FSDP2 (`parallelism`: auto picks from the
model's size and the memory, and says why in the first metrics line), following Capstan's env
contract:

- checkpoints go to $CAPSTAN_CHECKPOINT_DIR/step-N/, marked complete by `.done` (the agent uploads
  them): torch.distributed.checkpoint shards under step-N/global/ (each rank its own; under DDP
  each tensor once), staged into reused (pinned, on GPU) host buffers and written on a thread, so
  the loop stalls only for the copy;
- a restored checkpoint in $CAPSTAN_RESUME_DIR resumes the weights (adapter or full), optimizer,
  LR schedule, every rank's RNG and the data position: the run continues as if never stopped,
  also on another number of processes (resharded on load, the global batch kept);
- the final model goes to $CAPSTAN_OUTPUT_DIR in Hugging Face layout (adapter_config.json +
  adapter_model.safetensors, or config.json + safetensors shards and their index), with the
  tokenizer;
- hf:// and s3:// models and data are fetched by the agent; $CAPSTAN_RECIPE_SOURCES maps them to
  local paths;
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
import re
import signal
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
    "checkpoint_mode": "background",  # background | sync (the blocking baseline, for benchmarks)
    "parallelism": "auto",     # auto | ddp | fsdp (FSDP2: every rank holds a shard of weights and optimizer)
    "cpu_offload": False,      # fsdp on GPU: weights, gradients and optimizer state live in host memory
    "packing": False,          # pack several examples per row (each attends only to itself)
    "export_shard_size": "5GB",  # full fine-tunes: the largest safetensors file of the final model
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
    if cfg["parallelism"] not in ("auto", "ddp", "fsdp"):
        raise RecipeError(f"`parallelism` must be auto, ddp or fsdp, got {cfg['parallelism']!r}")
    for key in ("cpu_offload", "packing", "gradient_checkpointing", "shuffle"):
        if not isinstance(cfg[key], bool):
            raise RecipeError(f"`{key}` must be true or false, got {cfg[key]!r}")
    if not isinstance(cfg["export_shard_size"], str) or not re.fullmatch(r"[0-9]+(KB|MB|GB)", cfg["export_shard_size"]):
        raise RecipeError(f"`export_shard_size` must be a size like 5GB or 500MB, got {cfg['export_shard_size']!r}")
    for key in ("batch_size", "grad_accum", "seq_len", "checkpoint_every", "log_every", "lora_rank"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise RecipeError(f"`{key}` must be a whole number >= 1, got {cfg[key]!r}")
    if cfg["lr"] is None:
        cfg["lr"] = 2e-4 if cfg["method"] == "lora" else 2e-5
    if isinstance(cfg["data"], str):
        cfg["data"] = [cfg["data"]]
    # hf:// and s3:// sources: fetched by the node's agent into its cache (CAPSTAN_RECIPE_SOURCES
    # maps each URL to a local folder or file); cfg["model"] stays the URL, the run's identity.
    try:
        fetched = json.loads(os.environ.get("CAPSTAN_RECIPE_SOURCES") or "{}")
    except ValueError:
        fetched = {}

    def local(url, what):
        if "://" not in url:
            return url
        if url not in fetched:
            raise RecipeError(f"the {what} {url} was not fetched to this node: run the recipe through capstan, "
                              "whose agent fetches hf:// and s3:// sources into the node's cache")
        return fetched[url]

    cfg["model_path"] = local(cfg["model"], "model")
    cfg["data_paths"] = []
    for d in cfg["data"]:
        p = local(d, "data")
        if os.path.isdir(p):
            cfg["data_paths"] += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith((".jsonl", ".json")))
        else:
            cfg["data_paths"].append(p)
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


def pack(examples, seq_len):
    """Examples packed greedily, in order, into rows of at most seq_len tokens (a row is a list
    of examples). Each example keeps its own positions and attends only to itself."""
    rows, row, used = [], [], 0
    for ex in examples:
        if row and used + len(ex[0]) > seq_len:
            rows.append(row)
            row, used = [], 0
        row.append(ex)
        used += len(ex[0])
    if row:
        rows.append(row)
    return rows


def collate_packed(batch, seq_len, pad_id):
    """Packed rows to (input_ids, labels, real-token mask, position_ids). position_ids restart
    at 0 for every example: transformers then masks attention block-diagonally (no example sees
    another), given no attention_mask. Each example's first label is masked: in a row it would
    be the previous example's last prediction, which unpacked training never makes."""
    import torch
    width = max(sum(len(ids) for ids, _ in row) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    real = torch.zeros((len(batch), width), dtype=torch.long)
    pos = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        at = 0
        for x, y in row:
            n = len(x)
            ids[i, at: at + n] = torch.tensor(x)
            labels[i, at + 1: at + n] = torch.tensor(y[1:], dtype=torch.long)
            real[i, at: at + n] = 1
            pos[i, at: at + n] = torch.arange(n)
            at += n
        if at < width:  # padding: a segment of its own, never trained
            pos[i, at:] = torch.arange(width - at)
    return ids, labels, real, pos


def trained_targets(labels):
    """(position, token) pairs a causal LM's loss trains on: position t predicts labels[t + 1]."""
    return [(t, int(labels[t + 1])) for t in range(len(labels) - 1) if int(labels[t + 1]) != -100]


def check_packing(examples, seq_len, batch_size, pad_id):
    """Packed vs unpacked on the first batch of rows: for every example, the trained (position,
    target) pairs and the attention segment must be identical."""
    rows = pack(examples, seq_len)
    batch = rows[:batch_size]
    ids, labels, real, pos = collate_packed(batch, seq_len, pad_id)
    mismatches, checked = [], 0
    for i, row in enumerate(batch):
        at = 0
        segment = (pos[i, 1:] != pos[i, :-1] + 1).long().cumsum(0).tolist()
        segment = [0] + segment
        for k, (x, y) in enumerate(row):
            n = len(x)
            u_ids, u_labels, _ = collate([(x, y)], pad_id)
            want = trained_targets(u_labels[0].tolist())
            got = [(t - at, tok) for t, tok in trained_targets(labels[i].tolist()) if at <= t < at + n]
            same_segment = len(set(segment[at: at + n])) == 1 and (at == 0 or segment[at] != segment[at - 1])
            if want != got or not same_segment or ids[i, at: at + n].tolist() != x:
                mismatches.append({"row": i, "example": k})
            checked += 1
            at += n
    unpacked_trained = sum(len(trained_targets(y)) for row in batch for _, y in row)
    return {"rows": len(rows), "examples": len(examples), "checked": checked, "identical": not mismatches,
            "mismatches": mismatches[:5], "trained_targets": unpacked_trained,
            "fill": round(sum(len(x) for r in rows for x, _ in r) / (len(rows) * seq_len), 3)}


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
# Checkpoints: torch.distributed.checkpoint, every rank its own shard, written in the background.

class Checkpointer:
    """Writes step-N/ with torch.distributed.checkpoint (DCP):

        step-N/global/dcp/__<rank>_0.distcp   each rank's shard of model + optimizer
        step-N/global/dcp/.metadata           the index (rank 0)
        step-N/global/rng-rank<R>.pt          each rank's RNG state
        step-N/global/trainer.json            step, schedule, loss, world (rank 0)
        step-N/.done                          last, by each node's local rank 0

    Under FSDP each rank holds and writes only its shard; under DDP the state is replicated and
    DCP's planner writes each tensor once, spread over the ranks: the whole job writes 1x the
    state either way. Every file under `global/` has a name unique in the job, so the agent
    restores the union of all nodes' `global/` files on every node, whatever the node count.

    `save` costs the loop DCP's planning (a collective) and the copy of the state into CPU
    staging buffers (pinned on GPU, reused); the files are written by a background thread, on a
    separate gloo group so its collectives never meet the training loop's. A rank writes its
    RNG file once its shard is on disk; a node's local rank 0 marks the folder complete once
    its own write is done and every local rank's RNG file is there.

    mode "sync" is the blocking baseline for benchmarks: the same files, written in the loop."""

    def __init__(self, root, rank, local_rank, local_world, on_gpu, mode="background", group=None):
        self.root, self.rank, self.local_rank, self.local_world = root, rank, local_rank, local_world
        self.on_gpu, self.mode, self.group = on_gpu, mode, group
        self.future = None
        self.finisher = None
        self.stager = None
        self.error = None

    def wait(self):
        if self.future is not None:
            try:
                self.future.result()
            except Exception as e:
                self.error = self.error or e
            self.future = None
        if self.finisher is not None:
            self.finisher.join()
            self.finisher = None
        if self.error is not None:
            raise self.error

    def _stager(self):
        if self.stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
            # Pinned, reused host buffers on GPU; synchronous staging (the copy is the stall).
            self.stager = DefaultStager(StagingOptions(use_pinned_memory=self.on_gpu, use_shared_memory=False,
                                                       use_async_staging=False, use_non_blocking_copy=self.on_gpu))
        return self.stager

    def save(self, step, state, meta, rng):
        import torch
        import torch.distributed.checkpoint as dcp
        t0 = time.perf_counter()
        self.wait()  # one write at a time: staging buffers are reused
        waited = time.perf_counter() - t0
        folder = os.path.join(self.root, f"step-{step}")
        glob = os.path.join(folder, "global")
        os.makedirs(os.path.join(glob, "dcp"), exist_ok=True)
        if self.rank == 0:
            _write_atomic(os.path.join(glob, "trainer.json"), json.dumps(meta).encode())
        import io
        buf = io.BytesIO()
        torch.save(rng, buf)
        rng_bytes = buf.getvalue()
        expected = [os.path.join(glob, f"rng-rank{r}.pt") for r in range(self.rank, self.rank + self.local_world)]
        distributed = torch.distributed.is_initialized()

        def finish(ok_future):
            try:
                ok_future.result() if ok_future is not None else None
                _write_atomic(os.path.join(glob, f"rng-rank{self.rank}.pt"), rng_bytes)
                if self.local_rank != 0:
                    return
                deadline = time.time() + 600
                while not all(os.path.exists(e) for e in expected):
                    if time.time() > deadline:
                        raise RuntimeError(f"step {step}: a local rank's shard never completed")
                    time.sleep(0.01)
                size = sum(os.path.getsize(os.path.join(d, x)) for d, _, xs in os.walk(folder) for x in xs)
                open(os.path.join(folder, ".done"), "w").close()
                emit({"event": "checkpoint_written", "step": step, "rank": self.rank,
                      "write_s": round(time.perf_counter() - t1, 3), "bytes": size})
            except Exception as e:  # surfaced at the next save or at the end
                self.error = self.error or e

        t1 = time.perf_counter()
        ckpt_id = os.path.join(glob, "dcp")
        if self.mode == "sync":
            dcp.save(state, checkpoint_id=ckpt_id, process_group=self.group, no_dist=not distributed)
            finish(None)
            if self.error is not None:
                raise self.error
            return {"stall_s": time.perf_counter() - t0}
        fut = dcp.async_save(state, checkpoint_id=ckpt_id, process_group=self.group, async_stager=self._stager(),
                             no_dist=not distributed)
        fut = getattr(fut, "upload_completion", fut)
        self.future = fut
        self.finisher = threading.Thread(target=finish, args=(fut,), name=f"checkpoint-{step}", daemon=True)
        self.finisher.start()
        return {"stall_s": time.perf_counter() - t0, "waited_s": waited}

    def close(self):
        try:
            self.wait()
        finally:
            if self.stager is not None:
                self.stager.close()


def _write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        tok = AutoTokenizer.from_pretrained(cfg["model_path"])
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
            mc = AutoConfig.from_pretrained(cfg["model_path"])
        except Exception as e:
            raise RecipeError(f"cannot read the model config in {cfg['model']}: {e}")
        torch.manual_seed(cfg["seed"])  # every rank and every attempt builds the same weights
        with device:  # initialised where it trains: an 8B model takes seconds on a GPU, minutes on CPU
            model = AutoModelForCausalLM.from_config(mc, dtype=dtype)
    else:
        has_weights = any(n.endswith((".safetensors", ".bin")) for n in os.listdir(cfg["model_path"]))
        if not has_weights:
            raise RecipeError(f"{cfg['model']} has no weights (*.safetensors or *.bin); set `init: random` "
                              "to train a randomly initialised model of that config")
        try:
            model = AutoModelForCausalLM.from_pretrained(cfg["model_path"], dtype=dtype)
        except Exception as e:
            raise RecipeError(f"cannot load the model in {cfg['model']}: {e}")
    # Training never reads a KV cache; without one, packed rows are masked per example.
    model.config.use_cache = False
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg["method"] == "lora":
        from peft import LoraConfig, get_peft_model
        targets = cfg["lora_targets"]
        lc = LoraConfig(r=cfg["lora_rank"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
                        target_modules=targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lc)
        if cfg["gradient_checkpointing"]:
            model.enable_input_require_grads()
    return model.to(device)


def layer_modules(model):
    """The transformer blocks (the model's `_no_split_modules` classes): FSDP's units."""
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:  # a model that does not name its blocks: every module list's children
        import torch
        blocks = [c for m in model.modules() if isinstance(m, torch.nn.ModuleList) for c in m]
    return blocks


def choose_parallelism(cfg, model_dir, world, local_world, on_gpu, dtype):
    """ddp or fsdp, and why (the first metrics line says it)."""
    if cfg["parallelism"] != "auto":
        return cfg["parallelism"], f"train.parallelism is {cfg['parallelism']}"
    if world == 1:
        return "ddp", "one process: nothing to shard"
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
        n = sum(p.numel() for p in m.parameters())
    except Exception as e:
        return "fsdp", f"the model's size could not be read from its config ({type(e).__name__}): shard to be safe"
    width = torch.finfo(dtype).bits // 8
    # Replicated per process: the weights, plus (full fine-tune) gradients and AdamW's two moments.
    state = n * width * (1 if cfg["method"] == "lora" else 4)
    if on_gpu:
        mem = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        where = "of one GPU's"
    else:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(1, local_world)
        where = "of the host memory per process,"
    budget = 0.5 * mem
    gib = lambda b: f"{b / 2**30:.1f} GiB"
    if state > budget:
        return "fsdp", f"{n / 1e9:.2f}B params: replicated state {gib(state)} > 50% {where} {gib(mem)}"
    return "ddp", f"{n / 1e9:.2f}B params: replicated state {gib(state)} fits in 50% {where} {gib(mem)}"


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
        examples, stats = load_data(tok, cfg["data_paths"], cfg["seq_len"])
        ids, labels = examples[0]
        stats["first_example"] = {
            "context": tok.decode([t for t, l in zip(ids, labels) if l == -100]),
            "trained": tok.decode([t for t, l in zip(ids, labels) if l != -100]),
        }
        if cfg["packing"]:
            stats["packing"] = check_packing(examples, cfg["seq_len"], cfg["batch_size"], tok.pad_token_id)
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
    ckpt_group = None
    # An explicit fsdp on one process (one GPU under torchrun) still shards: FSDP2's mixed
    # precision and offload apply, and the checkpoint is the same sharded one.
    solo_fsdp = world == 1 and cfg["parallelism"] == "fsdp" and "MASTER_ADDR" in os.environ
    if world > 1 or solo_fsdp:
        dist.init_process_group("nccl" if on_gpu else "gloo", device_id=device if on_gpu else None)
        # The checkpoint writer's collectives run on a thread: a group of their own.
        ckpt_group = dist.new_group(backend="gloo")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(
        cfg["dtype"], torch.bfloat16 if on_gpu else torch.float32)
    leader = rank == 0
    attempt = int(os.environ.get("CAPSTAN_ATTEMPT", "1"))
    ckpt_root = os.environ.get("CAPSTAN_CHECKPOINT_DIR", os.path.abspath("checkpoints"))
    out_dir = os.environ.get("CAPSTAN_OUTPUT_DIR", os.path.abspath("output"))
    resume = os.environ.get("CAPSTAN_RESUME_DIR")

    parallelism, why = choose_parallelism(cfg, cfg["model_path"], world, local_world, on_gpu, dtype)
    fsdp = parallelism == "fsdp" and dist.is_initialized()
    # bf16 mixed precision under FSDP: fp32 master weights and optimizer, bf16 compute, fp32
    # gradient reduction (dtype auto on a GPU); an explicit dtype keeps the weights in it.
    mixed = fsdp and on_gpu and cfg["dtype"] == "auto"
    build_dtype = torch.float32 if mixed else dtype

    examples, stats = load_data(tok, cfg["data_paths"], cfg["seq_len"])
    if cfg["packing"]:
        import transformers
        version = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
        if version < (4, 53):
            # Older releases mask by the attention mask only: packed examples would see each other.
            raise RecipeError(f"packing: true needs transformers 4.53 or newer (per-example masking from position ids); "
                              f"this environment has {transformers.__version__}: add transformers>=4.53 to python.requirements")
    rows = pack(examples, cfg["seq_len"]) if cfg["packing"] else None
    # Under FSDP a pretrained model is loaded on the CPU and each rank keeps (and moves) only
    # its shard; a random one is initialised on the GPU (minutes faster), then sharded.
    where = device if not fsdp or (on_gpu and cfg["init"] == "random") else torch.device("cpu")
    model = build_model(cfg, build_dtype, where)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for _, p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    if fsdp:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
        kw = {}
        if mixed:
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if cfg["cpu_offload"] and on_gpu:
            kw["offload_policy"] = CPUOffloadPolicy()
        for block in layer_modules(model):
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        if not (cfg["cpu_offload"] and on_gpu):
            model.to(device)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    items = rows if rows is not None else examples
    grad_accum = cfg["grad_accum"]
    order = Order(len(items), cfg["seed"], cfg["shuffle"], world, cfg["batch_size"], grad_accum)
    meta_in = None
    if resume:
        meta_in = read_resume_meta(resume, cfg)
        grad_accum, order = keep_global_batch(meta_in, cfg, world, len(items), leader)
    unit = "rows" if rows is not None else "examples"
    total = cfg["steps"] or max(1, math.ceil(cfg["epochs"] * len(items) / order.per_step))
    warmup = int(cfg["warmup_ratio"] * total)
    opt = torch.optim.AdamW([p for _, p in trainable], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                            fused=on_gpu or None)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg["scheduler"], s, warmup, total))
    if leader:
        emit({"event": "recipe", "recipe": "sft", "method": cfg["method"], "model": cfg["model"], "init": cfg["init"],
              "parallelism": parallelism, "parallelism_why": why, "mixed_precision": "bf16" if mixed else None,
              "params": n_total, "trainable": n_trainable, "examples": len(examples), unit: len(items),
              "trained_tokens": stats["trained_tokens"], "truncated": stats["truncated"], "skipped": stats["skipped"],
              "steps": total, "world": world, "global_batch": order.per_step, "device": str(device.type),
              "dtype": str(build_dtype).replace("torch.", ""), "attempt": attempt})

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
    # Checkpointed weights: what trains (the adapter, or everything for full).
    sd_opts = StateDictOptions(ignore_frozen_params=cfg["method"] == "lora")

    start = 0
    if resume:
        import torch.distributed.checkpoint as dcp
        msd, osd = get_state_dict(model, opt, options=sd_opts)
        state = {"model": msd, "optim": osd}
        try:
            dcp.load(state, checkpoint_id=os.path.join(resume, "global", "dcp"), no_dist=not dist.is_initialized())
        except Exception as e:
            raise RecipeError(f"cannot load the restored checkpoint in {resume}: {e}")
        # LoRA: the checkpoint holds the adapter only (the base is the model folder's, or seeded).
        load_opts = StateDictOptions(ignore_frozen_params=cfg["method"] == "lora", strict=cfg["method"] != "lora")
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"], options=load_opts)
        sched.load_state_dict(meta_in["scheduler"])
        start = meta_in["step"]
        rng_file = os.path.join(resume, "global", f"rng-rank{rank}.pt")
        if os.path.exists(rng_file):
            set_rng_state(torch.load(rng_file, weights_only=False))
        if leader:
            emit({"event": "resumed", "step": start, "attempt": attempt, "loss": meta_in.get("loss"),
                  "from_world": meta_in.get("world"), "world": world, "grad_accum": grad_accum})

    ddp = model
    if world > 1 and not fsdp:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if on_gpu else None)
    model.train()
    ckpt = Checkpointer(ckpt_root, rank, local_rank, local_world, on_gpu, cfg["checkpoint_mode"], ckpt_group)
    window_t, window_tokens, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
    last_loss = None
    # CAPSTAN_TEST_STOP_AT=attempt:step:rank (tests only; see the stop below).
    stop_at = tuple(int(x) for x in os.environ["CAPSTAN_TEST_STOP_AT"].split(":")) if os.environ.get("CAPSTAN_TEST_STOP_AT") else None
    for step in range(start + 1, total + 1):
        step_tokens = 0
        for micro in range(grad_accum):
            batch = [items[i] for i in order.indices(step, micro, rank)]
            if rows is not None:
                ids, labels, real, pos = collate_packed(batch, cfg["seq_len"], tok.pad_token_id)
                step_tokens += int(real.sum())
                ids, labels, pos = (t.to(device, non_blocking=True) for t in (ids, labels, pos))
                # No mask: transformers masks by segment from the restarting position ids, which it
                # does only without a KV cache (with one, a packed example attends to the one before).
                mask, real, extra = None, None, {"position_ids": pos, "use_cache": False}
            else:
                ids, labels, mask = collate(batch, tok.pad_token_id)
                step_tokens += int(mask.sum())
                # No padding in the batch: no mask, so attention takes its plain causal path.
                mask = None if bool(mask.all()) else mask.to(device, non_blocking=True)
                ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                real, extra = None, {}
            sync = micro == grad_accum - 1 or world == 1
            if fsdp:
                model.set_requires_gradient_sync(sync)
                ctx = _null()
            else:
                ctx = ddp.no_sync() if not sync else _null()
            with ctx:
                out = ddp(input_ids=ids, attention_mask=mask, labels=labels, **extra)
                (out.loss / grad_accum).backward()
            window_loss += out.loss.detach()
            window_n += 1
        if cfg["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], cfg["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window_tokens += step_tokens

        if step % cfg["log_every"] == 0 or step == total or step == start + 1:
            stats_t = torch.tensor([float(window_loss), float(window_n), float(window_tokens)], device=device)
            if world > 1:
                dist.all_reduce(stats_t)
            if on_gpu:
                torch.cuda.synchronize()
            now = time.perf_counter()
            loss_sum, n, tokens = stats_t.tolist()
            steps_in_window = n / grad_accum / world
            last_loss = loss_sum / n
            if leader:
                emit({"step": step, "loss": round(last_loss, 5), "lr": float(f"{sched.get_last_lr()[0]:.4g}"),
                      "tokens_per_s": round(tokens / (now - window_t), 1),
                      "step_time_s": round((now - window_t) / max(1, steps_in_window), 4),
                      "epoch": round(order.epoch_at(step), 3), "attempt": attempt})
            window_t, window_tokens, window_loss, window_n = now, 0, 0.0, 0

        if step % cfg["checkpoint_every"] == 0 or step == total:
            msd, osd = get_state_dict(model, opt, options=sd_opts)
            meta = {"format": 2, "step": step, "method": cfg["method"], "model": cfg["model"], "loss": last_loss,
                    "scheduler": sched.state_dict(), "world": world, "grad_accum": grad_accum,
                    "batch_size": cfg["batch_size"], "parallelism": parallelism}
            r = ckpt.save(step, {"model": msd, "optim": osd}, meta, rng_state())
            if leader:
                emit({"event": "checkpoint", "step": step, **{k: round(v, 4) for k, v in r.items()}})
            # The stall is not training time.
            window_t += r["stall_s"]
        if stop_at == (attempt, step, rank):
            # Test hook: this worker stops (SIGSTOP) after a logged step, its checkpoint in
            # flight written, so a test can kill -9 it at a known point between checkpoints
            # instead of racing the log.
            ckpt.wait()
            emit({"event": "test_stopped", "step": step, "rank": rank, "pid": os.getpid()})
            os.kill(os.getpid(), signal.SIGSTOP)
    ckpt.close()
    export(cfg, model, tok, out_dir, leader, fsdp, total, last_loss, (build_dtype, where))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def read_resume_meta(resume, cfg):
    try:
        with open(os.path.join(resume, "global", "trainer.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        if os.path.exists(os.path.join(resume, "weights.safetensors")):
            raise RecipeError(f"the restored checkpoint in {resume} was written by an older Capstan (one file per node); "
                              "this recipe resumes only sharded checkpoints: start the job afresh or finish it with that version")
        raise RecipeError(f"the restored checkpoint in {resume} is incomplete: {e}")
    if meta.get("method") != cfg["method"] or meta.get("model") != cfg["model"]:
        raise RecipeError(f"the checkpoint was written by a {meta.get('method')} run of {meta.get('model')}, "
                          f"this run is {cfg['method']} of {cfg['model']}")
    return meta


def keep_global_batch(meta, cfg, world, n, leader):
    """The same global batch after a change of world size (fewer or more processes): grad_accum
    scales so every step trains the same examples as before, and the run continues unchanged."""
    before = meta.get("world", world) * meta.get("grad_accum", cfg["grad_accum"])
    accum = cfg["grad_accum"]
    if meta.get("world", world) != world:
        if before % world == 0 and meta.get("batch_size", cfg["batch_size"]) == cfg["batch_size"]:
            accum = before // world
        else:
            # Another global batch would move every later step's examples (some skipped, some
            # seen twice) and the LR schedule's length: refuse rather than continue inexactly.
            divisors = [w for w in range(1, before + 1) if before % w == 0]
            raise RecipeError(f"cannot resume on {world} processes: the checkpoint was written by {meta.get('world')} "
                              f"processes with grad_accum {meta.get('grad_accum')} ({before} micro-batches per step), "
                              f"which {world} processes cannot split evenly; run on a total process count that divides "
                              f"{before} ({', '.join(map(str, divisors))}), or start the job afresh")
    return accum, Order(n, cfg["seed"], cfg["shuffle"], world, cfg["batch_size"], accum)


def export(cfg, model, tok, out_dir, leader, fsdp, total, last_loss, built):
    """The final model in Hugging Face layout: the adapter (LoRA), or config.json + safetensors
    shards and their index (full; shards of at most `export_shard_size`). Under FSDP the full
    state is gathered to rank 0's CPU first (every rank takes part)."""
    import torch
    t0 = time.perf_counter()
    full_sd = None
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        full_sd = get_model_state_dict(model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=cfg["method"] == "lora"))
    if not leader:
        return
    os.makedirs(out_dir, exist_ok=True)
    shard = cfg["export_shard_size"]
    if cfg["method"] == "lora":
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=full_sd)
        if cfg["init"] == "random":
            # The adapter needs its base, and a random one exists nowhere else: save it too.
            # The base is frozen: rebuilt from the config and seed, as and where it was built
            # for training, it is the trained one.
            if fsdp:
                base = build_model(dict(cfg, method="full", gradient_checkpointing=False), *built).to("cpu")
            else:
                base = model.unload()  # after the adapter: unload() takes the adapter's layers out
            base.save_pretrained(os.path.join(out_dir, "base"), safe_serialization=True, max_shard_size=shard)
            tok.save_pretrained(os.path.join(out_dir, "base"))
            _point_adapter_at(out_dir, "base")
    else:
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=full_sd, max_shard_size=shard)
    tok.save_pretrained(out_dir)
    emit({"event": "saved", "output": out_dir, "method": cfg["method"], "save_s": round(time.perf_counter() - t0, 3),
          "files": sorted(os.listdir(out_dir)), "final_loss": last_loss, "steps": total})


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
