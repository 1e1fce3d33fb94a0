"""The PyTorch peer of smallhammer's training benchmarks: one Llama, float32, on the CPU, written
plainly so that it needs nothing but torch.

    python3 bench/llama_torch.py '<request as JSON>'
    python3 bench/llama_torch.py --probe

--probe prints one line "PROBE <json>": python (sys.executable), torchVersion, and blas, the
library torch multiplies matrices with, with referenceBlas true when that is the slow reference
BLAS (Debian's python3-torch uses whatever libblas.so.3 the system provides: without OpenBLAS
installed that is libblas3's reference code, several times slower than OpenBLAS).

The model is the one smallhammer trains: token embedding, per layer RMS norm (with weight), q/k/v
projections, RoPE on adjacent pairs (the llama/GGUF order, frequencies base^(-2i/head_dim)),
causal grouped-query attention, output projection, RMS norm, SwiGLU feed-forward (gate, up,
down), a final RMS norm and an output head of its own (not tied to the embedding), cross-entropy
over next tokens.

Modes (request "mode"):
  pretrain  every parameter trains: AdamW with decoupled weight decay on the matrices (not on the
            norm weights), global gradient-norm clipping, one forward + backward + optimizer step
            per step.
  lora      the random base is frozen; each target projection gets A (rank x in, uniform in
            +-1/sqrt(in)) and B (out x rank, zero), y = x W^T + (alpha/rank) dropout(x) A^T B^T;
            AdamW on the adapters only, with the same clipping.

Attention: torch 1.13 (Debian's python3-torch) has no fused attention, so scores, causal mask,
softmax and the weighted sum are written out as a user of that version would. Where a newer torch
offers F.scaled_dot_product_attention, it is used instead: that is what a user of that version
would write, so the comparison stays fair to PyTorch.

Request (JSON, one argument): mode, dim, layers, heads, kvHeads, ffn, vocab, batch, seq, threads,
warmup, steps, timing ("best": tokens/s of the fastest step; "mean": all timed steps together),
lr, weightDecay, gradClip, normEps, ropeBase, and for lora: rank, alpha, dropout, targets
(a list of q, k, v, o, gate, up, down).

With "evaluate": {"weightsFile", "tokens", "targets"} in the request, the script trains nothing:
it loads the weights (a JSON object of flat lists by GGUF tensor name, LoRA tensors as
<name>.lora_a / .lora_b; every tensor of the model and no other), computes the mean next-token
loss of tokens (batch x seq ids, flat) against targets (-1: no loss) in float64 without dropout,
and prints "RESULT <json>" with loss and parameters. That is how the tests check that this model
is smallhammer's.

Prints one line "RESULT <json>": tokensPerSecond, stepSeconds, losses, parameters (every tensor,
frozen or not), trainable, peakRssBytes, torchVersion, blas, threads. A bad request exits with
status 2 and one line on stderr.

The thread count bounds torch's own pool and, through the environment set before torch loads,
the pool of the BLAS library beneath it (OpenBLAS does not follow torch.set_num_threads).
"""

import json
import math
import os
import resource
import sys
import time

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def fail(message):
    sys.stderr.write(f"llama_torch.py: {message}\n")
    sys.exit(2)


def read_request():
    if len(sys.argv) != 2:
        fail("expected one argument, the request as JSON")
    try:
        req = json.loads(sys.argv[1])
    except json.JSONDecodeError as e:
        fail(f"the request is not JSON: {e}")
    defaults = {
        "kvHeads": req.get("heads"),
        "warmup": 1,
        "timing": "best",
        "lr": 1e-4,
        "weightDecay": 0.1,
        "gradClip": 1.0,
        "normEps": 1e-5,
        "ropeBase": 10000.0,
        "rank": 8,
        "dropout": 0.05,
        "targets": ["q", "v"],
    }
    req = {**defaults, **req}
    if req.get("mode") not in ("pretrain", "lora"):
        fail(f'mode must be "pretrain" or "lora", got {req.get("mode")!r}')
    sizes = ("dim", "layers", "heads", "kvHeads", "ffn", "vocab", "batch", "seq", "threads")
    for k in sizes if "evaluate" in req else (*sizes, "steps"):
        if not isinstance(req.get(k), int) or req[k] < 1:
            fail(f"{k} must be a positive integer, got {req.get(k)!r}")
    if req["dim"] % req["heads"] or req["heads"] % req["kvHeads"]:
        fail("dim must divide into heads, and heads into kvHeads")
    if req["timing"] not in ("best", "mean"):
        fail(f'timing must be "best" or "mean", got {req["timing"]!r}')
    if req["mode"] == "lora":
        unknown = [t for t in req["targets"] if t not in TARGETS]
        if unknown or not req["targets"]:
            fail(f"targets must be a list of {', '.join(TARGETS)}, got {req['targets']!r}")
        req.setdefault("alpha", 2 * req["rank"])
    return req


# The request is read before torch loads, so that its thread count reaches the BLAS pool.
PROBE = sys.argv[1:] == ["--probe"]
REQUEST = None if PROBE else read_request()
if REQUEST:
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(REQUEST["threads"])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


GGUF_NAMES = {
    "q": "attn_q",
    "k": "attn_k",
    "v": "attn_v",
    "o": "attn_output",
    "gate": "ffn_gate",
    "up": "ffn_up",
    "down": "ffn_down",
}


def gguf_name(name):
    """The GGUF tensor name of a parameter of Llama (blocks.3.q.weight: blk.3.attn_q.weight)."""
    fixed = {"embedding": "token_embd.weight", "norm.weight": "output_norm.weight", "head.weight": "output.weight"}
    if name in fixed:
        return fixed[name]
    _, layer, module, field = name.split(".")
    base = f"blk.{layer}.{GGUF_NAMES.get(module, module)}.weight"
    return base if field == "weight" else f"{base}.lora_{field}"


class RMSNorm(torch.nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Linear(torch.nn.Module):
    """x W^T, with a LoRA adapter when `lora` is given (rank, alpha, dropout)."""

    def __init__(self, rows, cols, std, lora=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(rows, cols) * std)
        self.lora = lora
        if lora:
            bound = 1 / math.sqrt(cols)
            self.a = torch.nn.Parameter(torch.empty(lora["rank"], cols).uniform_(-bound, bound))
            self.b = torch.nn.Parameter(torch.zeros(rows, lora["rank"]))
            self.scale = lora["alpha"] / lora["rank"]

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.lora:
            x = F.dropout(x, self.lora["dropout"], self.training)
            y = y + F.linear(F.linear(x, self.a), self.b) * self.scale
        return y


def blas():
    """The BLAS library torch multiplies with: (description, whether it is the reference BLAS)."""
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "/" in line})
    libraries = [p for p in paths if any(n in os.path.basename(p).lower() for n in ("blas", "mkl", "blis"))]
    for name, mark in (("OpenBLAS", "openblas"), ("MKL", "mkl"), ("BLIS", "blis")):
        found = [p for p in libraries if mark in p.lower()]
        if found:
            return f"{name} ({found[0]})", False
    reference = [p for p in libraries if "/blas/libblas.so" in p]
    if reference:
        return f"reference BLAS ({reference[0]})", True
    if libraries:
        return libraries[0], False
    info = [part for part in torch.__config__.show().split(", ") if part.startswith("BLAS_INFO=")]
    return (f"built in ({info[0]})" if info else "unknown"), False


def rope_tables(seq, head_dim, base, dtype=torch.float32):
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rope(x, cos, sin):
    """Rotates each adjacent pair (2i, 2i+1) of every head by the angle of its position."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def attention(q, k, v):
    """Causal attention of q (batch, heads, seq, head_dim) over k and v with the same heads."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    seq = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]))
    future = torch.ones(seq, seq, dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


class Block(torch.nn.Module):
    def __init__(self, r, residual_std, lora_of):
        super().__init__()
        dim, ffn = r["dim"], r["ffn"]
        self.heads, self.kv_heads = r["heads"], r["kvHeads"]
        self.head_dim = dim // self.heads
        kv = self.kv_heads * self.head_dim
        self.attn_norm = RMSNorm(dim, r["normEps"])
        self.q = Linear(dim, dim, 0.02, lora_of("q"))
        self.k = Linear(kv, dim, 0.02, lora_of("k"))
        self.v = Linear(kv, dim, 0.02, lora_of("v"))
        self.o = Linear(dim, dim, residual_std, lora_of("o"))
        self.ffn_norm = RMSNorm(dim, r["normEps"])
        self.gate = Linear(ffn, dim, 0.02, lora_of("gate"))
        self.up = Linear(ffn, dim, 0.02, lora_of("up"))
        self.down = Linear(dim, ffn, residual_std, lora_of("down"))

    def forward(self, x, cos, sin):
        batch, seq, dim = x.shape
        h = self.attn_norm(x)
        q = self.q(h).view(batch, seq, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(h).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(h).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if self.kv_heads != self.heads:
            # Query head h reads key/value head h // (heads / kvHeads), as llama.cpp does.
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        a = attention(q, k, v).transpose(1, 2).reshape(batch, seq, dim)
        x = x + self.o(a)
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(torch.nn.Module):
    def __init__(self, r):
        super().__init__()
        lora = None
        if r["mode"] == "lora":
            lora = {"rank": r["rank"], "alpha": r["alpha"], "dropout": r["dropout"]}
        targets = set(r["targets"]) if lora else set()

        def lora_of(name):
            return lora if name in targets else None

        residual_std = 0.02 / math.sqrt(2 * r["layers"])
        self.embedding = torch.nn.Parameter(torch.randn(r["vocab"], r["dim"]) * 0.02)
        self.blocks = torch.nn.ModuleList(Block(r, residual_std, lora_of) for _ in range(r["layers"]))
        self.norm = RMSNorm(r["dim"], r["normEps"])
        self.head = Linear(r["vocab"], r["dim"], 0.02)
        cos, sin = rope_tables(r["seq"], r["dim"] // r["heads"], r["ropeBase"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids):
        x = F.embedding(ids, self.embedding)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        return self.head(self.norm(x))


def probe():
    description, reference = blas()
    result = {
        "python": sys.executable,
        "torchVersion": torch.__version__,
        "blas": description,
        "referenceBlas": reference,
    }
    print("PROBE " + json.dumps(result), flush=True)


def evaluate(r):
    """The mean loss of the request's tokens under the weights of its weightsFile, in float64."""
    e = r["evaluate"]
    model = Llama(r).double()
    model.eval()
    model.cos, model.sin = rope_tables(r["seq"], r["dim"] // r["heads"], r["ropeBase"], torch.float64)
    with open(e["weightsFile"]) as f:
        weights = json.load(f)
    names = {gguf_name(name): p for name, p in model.named_parameters()}
    if set(names) != set(weights):
        fail(f"the weights name {sorted(set(weights) ^ set(names))} differently from the model")
    with torch.no_grad():
        for name, p in names.items():
            p.copy_(torch.tensor(weights[name], dtype=torch.float64).view_as(p))
        tokens = torch.tensor(e["tokens"]).view(r["batch"], r["seq"])
        targets = torch.tensor(e["targets"]).view(-1)
        logits = model(tokens).reshape(-1, r["vocab"])
        loss = F.cross_entropy(logits, targets, ignore_index=-1)
    result = {"loss": loss.item(), "parameters": sum(p.numel() for p in model.parameters())}
    print("RESULT " + json.dumps(result), flush=True)


def main(r):
    torch.set_num_threads(r["threads"])
    torch.set_num_interop_threads(1)
    if "evaluate" in r:
        evaluate(r)
        return
    torch.manual_seed(0)
    model = Llama(r)
    model.train()
    if r["mode"] == "lora":
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(".a") or name.endswith(".b"))
    trained = [p for p in model.parameters() if p.requires_grad]
    # As smallhammer does: matrices decay, norm weights do not.
    groups = [
        {"params": [p for p in trained if p.dim() >= 2], "weight_decay": r["weightDecay"]},
        {"params": [p for p in trained if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=r["lr"], betas=(0.9, 0.95), eps=1e-8)
    batch, seq, vocab = r["batch"], r["seq"], r["vocab"]
    generator = torch.Generator().manual_seed(1)

    def step():
        window = torch.randint(3, vocab, (batch, seq + 1), generator=generator)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), window[:, 1:].reshape(-1))
        loss.backward()
        if r["gradClip"] > 0:
            torch.nn.utils.clip_grad_norm_(trained, r["gradClip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    losses = [step() for _ in range(r["warmup"])]
    step_seconds = []
    for _ in range(r["steps"]):
        started = time.perf_counter()
        losses.append(step())
        step_seconds.append(time.perf_counter() - started)
    tokens = batch * seq
    if r["timing"] == "best":
        tokens_per_second = tokens / min(step_seconds)
    else:
        tokens_per_second = tokens * len(step_seconds) / sum(step_seconds)
    result = {
        "tokensPerSecond": tokens_per_second,
        "stepSeconds": step_seconds,
        "losses": losses,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trained),
        "peakRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torchVersion": torch.__version__,
        "blas": blas()[0],
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    if PROBE:
        probe()
    else:
        main(REQUEST)
