"""Where the CorrFusion-VGG16 training step spends its device time, Keras 3 / JAX against
torch.compile, and an XLA-flag sweep of the Keras step, in one run (issue 25).

    python benchmarks/gpu_profile.py --device cuda --out $OUT                  # benchmarks/gpu_profile.sh
    python benchmarks/gpu_profile.py --device cpu --size 32 --batch 2 --hidden 16 --steps 2 \\
        --reps 1 --profile_steps 2 --torch eager --out /tmp/prof                 # CPU smoke

Each part runs in its own child process (XLA flags are read once per process):

* ``keras-jax`` profile: ``model.build_model`` as train_cnn.py builds it (VGG16, ``mixed_bfloat16``,
  SGD with Nesterov momentum, uint8 batches on the device), its Keras train step
  (``CorrFusionNet.train_step``, jitted with the state donated as Keras' ``make_train_function``
  does) timed over ``--reps`` windows of ``--steps`` steps, then ``--profile_steps`` steps under
  ``jax.profiler.trace``. The trace's XLA operations (events with ``hlo_op`` in the train-step
  module; on a GPU the device's kernel events) are put in classes from the compiled HLO: cuDNN
  convolution custom calls by target (forward, backward-data, backward-filter; on the CPU by the
  name stack and the kernel-shaped output of the filter gradient), matrix products (dot, cuBLAS,
  Triton GEMM), and by the JAX name stack: the backbone's other fusions (ReLU, pooling, bias),
  the head and losses (FC, CorrFusion, decorrelation, softmax, cross-entropy), the per-step
  metrics (accuracies, canonical correlation), the optimizer update (``sgd``), copies and
  transposes; idle is the profiled wall time not covered by any operation.
* ``torch`` profile: the PyTorch reference of ``gpu_bench`` (``torch.compile`` by default), timed
  the same way, then ``torch.profiler``; CUDA kernels are classed by name (cuDNN ``fprop`` /
  ``dgrad`` / ``wgrad``, GEMM, Triton fusions, foreach optimizer, memcpy/memset), CPU operators
  (no kernels) by their ``aten`` names and self time.
* the sweep: the Keras step again per variant of ``SWEEP`` (XLA flags through ``XLA_FLAGS``, or
  ``head_bf16``: the losses' float32 casts done in bfloat16), timed only; GPU-only flags are
  skipped on the CPU with a note. Variants run while ``--budget_s`` allows.

Output in ``--out``: ``profile.md`` (both tables), ``profile.csv`` (class, ms/step and share per
framework), ``sweep.csv``, ``profile.json`` (everything, with the top operations), and the two
traces (``keras_trace.json.gz``, ``torch_trace.json.gz``) when ``--keep_traces``. With
``--sweep_only`` no profile runs: ``profile.md`` holds only the sweep table (no ``profile.csv``),
and ``--base_json`` (an earlier run's ``profile.json``) supplies the base and torch ms/step of its
"vs base" / "vs torch" columns.
"""

from __future__ import annotations

import argparse
import csv
import glob
import gzip
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("benchmarks.gpu_profile")

#: the classes of the per-op table, in its order
CLASSES = ("conv_fwd", "conv_bwd_data", "conv_bwd_filter", "gemm", "backbone_fusions",
           "head_losses", "metrics", "optimizer", "copies", "other", "idle")


@dataclass(frozen=True)
class Variant:
    """One point of the sweep: XLA flags, whether they exist only on GPUs, the losses in bf16."""

    flags: tuple = ()
    gpu_only: bool = True
    head_bf16: bool = False
    what: str = ""
    maxpool_mask: bool = False


SWEEP = {
    "base": Variant((), False, False, "the default (the profiled step)"),
    "no_command_buffer": Variant(("--xla_gpu_enable_command_buffer=",), what="CUDA graphs off"),
    "no_triton_gemm": Variant(("--xla_gpu_enable_triton_gemm=false",),
                              what="GEMMs by cuBLAS instead of Triton"),
    "cudnn_gemm_fusion": Variant(("--xla_gpu_cudnn_gemm_fusion_level=2",),
                                 what="GEMM fusions by cuDNN"),
    "autotune0": Variant(("--xla_gpu_autotune_level=0",), what="no autotuning (default level 4)"),
    "latency_hiding": Variant(("--xla_gpu_enable_latency_hiding_scheduler=true",),
                              what="latency-hiding scheduler"),
    "head_bf16": Variant((), False, True, "losses' float32 casts in bfloat16 (model.losses)"),
    "maxpool_mask_vjp": Variant((), False, False, "max-pool gradient through an equality mask "
                                "(benchmarks/jax_pool.py) instead of select_and_scatter",
                                maxpool_mask=True),
}
DEFAULT_SWEEP = ("maxpool_mask_vjp", "no_command_buffer", "no_triton_gemm", "autotune0",
                 "latency_hiding", "head_bf16", "cudnn_gemm_fusion")


# ------------------------------------------------------------------------------- classification
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\([^=]*?\)|[^\s(]+)\s+([\w\-]+)\(")


def parse_hlo(text: str) -> dict:
    """``{instruction name: {"opcode", "shape", "target", "op_name", "kind"}}`` of an HLO module's
    text (``compiled.as_text()``); fused computations' instructions included (CPU events name
    them too)."""
    out = {}
    for line in text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        dims = re.search(r"\[([\d,]*)\]", shape)  # the first array of a tuple
        dims = dims.group(1) if dims else ""
        target = re.search(r'custom_call_target="([^"]+)"', line)
        op_name = re.search(r'op_name="([^"]+)"', line)
        kind = re.search(r"kind=(k\w+)", line)
        out[name] = {"opcode": opcode,
                     "shape": tuple(int(d) for d in dims.split(",") if d) if dims else (),
                     "target": target.group(1) if target else "",
                     "op_name": op_name.group(1) if op_name else "",
                     "kind": kind.group(1) if kind else "",
                     "line": line if opcode == "fusion" and "calls=" in line else ""}
    return out


def _scope(op_name: str) -> str:
    """The region of the step a JAX name stack points to."""
    low = op_name.lower()
    if re.search(r"(^|/)(sgd|adam|adamw|optimizer)(/|$)", low):
        return "optimizer"
    if "backbone" in low or re.search(r"/block\d", low):
        return "backbone"
    if "solve" in low or "cancorr" in low or "canonical" in low or "/lu" in low:
        return "metrics"
    return "head_losses" if op_name else ""


#: fusions that only move or convert data (XLA names fusions after their operations)
_COPY_NAME = re.compile(r"^(wrapped_|loop_|input_)?((transpose|copy|convert|reverse|bitcast)_?)+"
                        r"(fusion)?(\.\d+)?$")


def classify_hlo(info: dict | None, kernel_shapes: set, name: str = "") -> str:
    """The class of one XLA instruction (an entry of :func:`parse_hlo`; ``name`` its name).
    ``kernel_shapes``: the shapes of the 4-D convolution kernels (a filter gradient's output holds
    a kernel's dimensions, in any order)."""
    if not info:
        return "other"
    opcode, target, op_name = info["opcode"], info["target"].lower(), info["op_name"]
    if "cudnn$conv" in target:
        if "backwardinput" in target:
            return "conv_bwd_data"
        if "backwardfilter" in target:
            return "conv_bwd_filter"
        return "conv_fwd"
    if opcode == "convolution" or op_name.endswith("conv_general_dilated"):
        if tuple(sorted(info["shape"])) in {tuple(sorted(k)) for k in kernel_shapes}:
            return "conv_bwd_filter"
        return "conv_bwd_data" if (not op_name or "transpose(" in op_name) else "conv_fwd"
    if _COPY_NAME.match(name):
        return "copies"  # layout and dtype conversions
    if re.search(r"reduce[-_]window|select[-_]and[-_]scatter", name):
        return "backbone_fusions"  # pooling and its gradient (loop_reduce_window_fusion: no name stack)
    if opcode == "dot" or op_name.endswith("dot_general") or "gemm" in target or "matmul" in target or "cublas" in target \
            or "triton_gemm" in info["line"] or "cudnn$fusion" in info["line"]:
        return "gemm"
    if opcode in ("copy", "transpose", "copy-start", "copy-done", "bitcast", "dynamic-update-slice") \
            or (not op_name and "copy" in opcode):
        return "copies"
    if opcode in ("reduce-window", "select-and-scatter"):
        return "backbone_fusions"
    scope = _scope(op_name)
    if scope == "backbone":
        return "backbone_fusions"
    if scope:
        return scope
    return "other"


def classify_torch(name: str, cat: str = "kernel") -> str:
    """The class of a CUDA kernel (by its name) or of a CPU ``aten`` operator."""
    low = name.lower()
    if cat in ("gpu_memcpy", "gpu_memset") or "memcpy" in low or "memset" in low:
        return "copies"
    if "wgrad" in low:
        return "conv_bwd_filter"
    if "dgrad" in low or "convolution_backward" in low or "convolutionbackward" in low:
        # CPU: the data and the filter gradient are one operator
        return "conv_bwd_data"
    if "fprop" in low or "conv" in low:
        return "conv_fwd"
    if any(k in low for k in ("gemm", "nvjet", "cutlass", "cublas", "addmm", "aten::mm", "matmul",
                               "aten::linear", "aten::bmm")):
        return "gemm"
    if "foreach" in low or "multi_tensor" in low or "sgd" in low or "optimizer" in low:
        return "optimizer"
    if "pool" in low or "relu" in low or "threshold" in low or "clamp_min" in low:
        return "backbone_fusions"
    if low.startswith("triton_") or "fused" in low:
        return "backbone_fusions" if "convolution" in low else "other"
    if any(k in low for k in ("copy", "contiguous", "clone", "aten::to", "cat", "transpose")):
        return "copies"
    if any(k in low for k in ("nll", "softmax", "cross_entropy", "batch_norm", "tanh", "sqrt",
                               "aten::mean", "aten::sum", "aten::abs")):
        return "head_losses"
    return "other"


def torch_cpu_rows(events) -> list[tuple]:
    """``[(start, self_us, class, name)]`` of a CPU-only torch.profiler chrome trace: each
    operator's self time (its span less its children's), its class by its own name, or its
    caller's where its name says nothing (``aten::add_`` inside ``Optimizer.step``)."""
    rows = []
    by_thread: dict = {}
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation"):
            by_thread.setdefault((e.get("pid"), e.get("tid")), []).append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (float(e["ts"]), -float(e.get("dur", 0))))
        stack: list = []  # [end, class, child time, row index]
        for e in evs:
            ts, dur = float(e["ts"]), float(e.get("dur", 0))
            while stack and ts >= stack[-1][0]:
                stack.pop()
            cls = classify_torch(e["name"], "cpu_op")
            if cls == "other" and stack:
                cls = stack[-1][1]
            if stack:
                stack[-1][2] += dur
                i = stack[-1][3]
                rows[i] = (rows[i][0], rows[i][1] - dur, rows[i][2], rows[i][3])
            rows.append((ts, dur, cls, e["name"][:120]))
            stack.append([ts + dur, cls, 0.0, len(rows) - 1])
    return [r for r in rows if r[1] > 0]


def union_us(intervals) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def load_trace(path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        d = json.load(f)
    return d["traceEvents"] if isinstance(d, dict) else d


def table_from_events(events, steps: int, wall_us: float | None = None, busy: str = "union") -> dict:
    """Per-class milliseconds per step from ``[(start_us, dur_us, class, label)]``; idle is the
    wall time (first start to last end, or ``wall_us``) not covered by any event (``busy="sum"``:
    less the events' summed time, for self times that do not lie on a time line)."""
    per = {c: 0.0 for c in CLASSES}
    top: dict = {}
    for _s, dur, cls, label in events:
        per[cls] += dur
        key = (label, cls)
        top[key] = top.get(key, 0.0) + dur
    if events:
        span = max(s + d for s, d, *_ in events) - min(s for s, *_ in events)
    else:
        span = 0.0
    wall = wall_us if wall_us else span
    busy = (union_us([(s, s + d) for s, d, *_ in events]) if busy == "union"
            else sum(d for _s, d, *_ in events))
    per["idle"] = max(0.0, wall - busy)
    ms = {c: v / 1e3 / steps for c, v in per.items()}
    total = sum(ms[c] for c in CLASSES if c != "idle")
    return {"ms_per_step": ms, "busy_ms_per_step": busy / 1e3 / steps,
            "wall_ms_per_step": wall / 1e3 / steps, "sum_ms_per_step": total, "events": len(events),
            "top": [{"op": k[0], "class": k[1], "ms_per_step": v / 1e3 / steps}
                    for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:25]]}


def jax_trace_table(trace_path, hlo: dict, kernel_shapes: set, steps: int,
                    module_prefix="jit_train_step") -> dict:
    events = load_trace(trace_path)
    procs = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    gpu_pids = {p for p, n in procs.items() if n.startswith("/device:GPU")}
    # the GPU's stream lines only: its derived lines (XLA Modules, XLA Ops, ...) repeat them
    streams = {(e["pid"], e["tid"]) for e in events if e.get("ph") == "M"
               and e.get("name") == "thread_name" and e.get("pid") in gpu_pids
               and str(e["args"].get("name", "")).startswith("Stream")}
    rows, how = [], {"hlo_op": 0, "kernel_name": 0, "unmatched": 0}
    for e in events:
        if e.get("ph") != "X":
            continue
        args = e.get("args") or {}
        if gpu_pids and (e.get("pid") not in gpu_pids
                         or (streams and (e.get("pid"), e.get("tid")) not in streams)):
            continue
        op = args.get("hlo_op")
        ts, dur = float(e["ts"]), float(e.get("dur", 0))
        if op and str(args.get("hlo_module", "")).startswith(module_prefix):
            how["hlo_op"] += 1
            rows.append((ts, dur, classify_hlo(hlo.get(op), kernel_shapes, op), op))
        elif gpu_pids:  # a kernel without annotation (inside a CUDA graph, say): by its name
            name = e["name"]
            inst = name if name in hlo else re.sub(r"_(\d+)$", r".\1", name)
            if inst in hlo:
                how["kernel_name"] += 1
                rows.append((ts, dur, classify_hlo(hlo[inst], kernel_shapes, inst), inst))
            else:
                how["unmatched"] += 1
                rows.append((ts, dur, classify_torch(name, e.get("cat", "")), name[:120]))
    res = table_from_events(rows, steps)
    res["device_events"] = bool(gpu_pids)
    res["matched_by"] = how
    for t in res["top"]:
        t["op_name"] = (hlo.get(t["op"]) or {}).get("op_name", "")[:160]
    return res


# ------------------------------------------------------------------------------------ children
def _windows(step, sync, warmup, steps, reps) -> list[float]:
    """Seconds per step in each of ``reps`` windows (``gpu_bench.timed_windows``, per step)."""
    from benchmarks.gpu_bench import timed_windows

    return [w / steps for w in timed_windows(step, sync, warmup, steps, reps)]


def patch_losses_bf16():
    """``model.losses``' float32 casts (cross-entropy, pair distance, batch covariance, the
    decorrelation penalty) done in bfloat16: the ``head_bf16`` variant, a measurement only."""
    import keras

    from model import losses

    class _Ops:
        def __getattr__(self, name):
            return getattr(keras.ops, name)

        @staticmethod
        def cast(x, dtype):
            return keras.ops.cast(x, "bfloat16" if str(dtype) == "float32" else dtype)

    losses.ops = _Ops()


def child_keras(a) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    if a.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(ROOT))
    import jax
    import keras
    import numpy as np

    import model as cfn
    from utils.devices import setup_backend

    variant = SWEEP[a.variant]
    info = setup_backend(mixed_precision=True)
    if variant.head_bf16:
        patch_losses_bf16()
    if variant.maxpool_mask:
        from benchmarks.jax_pool import patch_keras_max_pool  # deferred: JAX and its Keras backend

        patch_keras_max_pool()
    keras.utils.set_random_seed(0)
    net = cfn.build_model(num_classes=a.classes, image_size=(a.size, a.size), backbone=a.backbone,
                          hidden=a.hidden)
    net.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9, nesterov=True))
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):
        x = tuple(jax.device_put(rng.integers(0, 256, (a.batch, a.size, a.size, 3), dtype=np.uint8))
                  for _ in range(2))
        y1 = rng.integers(0, a.classes, a.batch).astype(np.int32)
        batches.append((x, (jax.device_put(y1), jax.device_put(y1.copy()))))
    net._symbolic_build(data_batch=batches[0])  # model, optimizer and metric variables
    state = {"s": net._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                     optimizer_variables=True, metrics_variables=True,
                                     purge_model_variables=True)}
    t = time.perf_counter()
    # as Keras' make_train_function: jit of train_step with the state donated
    lowered = jax.jit(net.train_step, donate_argnums=0).lower(state["s"], batches[0])
    compiled = lowered.compile()
    res = {"variant": a.variant, "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "compile_s": time.perf_counter() - t, "jax": jax.__version__, "keras": keras.__version__,
           "devices": [str(d) for d in jax.devices()], "precision": info.get("precision"),
           # the max-pool gradient JAX emits by default (0 with maxpool_mask_vjp)
           "select_and_scatter_ops": lowered.as_text().count("stablehlo.select_and_scatter")}
    it = {"i": 0}

    def step():
        it["i"] += 1
        _logs, state["s"] = compiled(state["s"], batches[it["i"] % 2])

    def sync():
        jax.block_until_ready(state["s"])

    secs = _windows(step, sync, a.warmup, a.steps, a.reps)
    res["ms_per_step"] = statistics.median(secs) * 1e3
    res["ms_min"], res["ms_max"] = min(secs) * 1e3, max(secs) * 1e3
    res["pairs_per_s"] = a.batch / statistics.median(secs)
    if a.profile:
        kernel_shapes = {tuple(v.shape) for v in net.trainable_variables if len(v.shape) == 4}
        hlo = parse_hlo(compiled.as_text())
        tmp = Path(tempfile.mkdtemp(prefix="keras_trace_"))
        try:
            t = time.perf_counter()
            with jax.profiler.trace(str(tmp)):
                for _ in range(a.profile_steps):
                    step()
                sync()
            res["profiled_wall_ms_per_step"] = (time.perf_counter() - t) * 1e3 / a.profile_steps
            trace = sorted(glob.glob(str(tmp / "**" / "*.trace.json.gz"), recursive=True))
            if not trace:
                raise RuntimeError(f"jax.profiler wrote no *.trace.json.gz under {tmp}")
            res["profile"] = jax_trace_table(trace[0], hlo, kernel_shapes, a.profile_steps)
            res["hlo_instructions"] = len(hlo)
            if a.keep_traces and a.out:
                shutil.copy(trace[0], Path(a.out) / "keras_trace.json.gz")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        res.update(per_call_costs(net, compiled, state, batches, a))
    return res


def per_call_costs(net, compiled, state, batches, a) -> dict:
    """What ``train_on_batch`` adds to the compiled step, on this machine: the step waiting for
    its loss every call, and the host parts each call repeats (``step_overhead.host_parts``)."""
    import jax

    from benchmarks.step_overhead import host_parts

    def step_and_wait():
        logs, state["s"] = compiled(state["s"], batches[0])
        float(logs["loss"])

    secs = _windows(step_and_wait, lambda: jax.block_until_ready(state["s"]), 1, a.steps, a.reps)
    tv, ntv, ov, mv = state.pop("s")  # the state back into the model's variables
    net._jax_state = {"trainable_variables": tv, "non_trainable_variables": ntv,
                      "optimizer_variables": ov, "metrics_variables": mv}
    net._jax_state_synced = False
    net.jax_state_sync()
    parts = host_parts(net, batches[0], 20, settle=False)
    return {"ms_per_step_waiting_each": statistics.median(secs) * 1e3,
            "train_on_batch_host_parts_ms": {k: v * 1e3 for k, v in parts.items()}}


def child_torch(a) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks import gpu_bench

    compiled = a.torch == "compile"
    ga = gpu_bench.parse_args(["--device", a.device, "--size", str(a.size), "--batch", str(a.batch),
                               "--hidden", str(a.hidden), "--classes", str(a.classes),
                               "--pool", "2", "--warmup", str(a.warmup)])
    net, train_step, _infer, sync, warmup = gpu_bench.torch_steps(ga, compiled)
    net.train()
    t = time.perf_counter()
    train_step()
    sync()
    res = {"torch": torch.__version__, "mode": a.torch, "first_step_s": time.perf_counter() - t}
    secs = _windows(train_step, sync, warmup, a.steps, a.reps)
    res["ms_per_step"] = statistics.median(secs) * 1e3
    res["pairs_per_s"] = a.batch / statistics.median(secs)
    if not a.profile:
        return res
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device == "cuda" else [])
    t = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(a.profile_steps):
            train_step()
        sync()
    wall_us = (time.perf_counter() - t) * 1e6
    res["profiled_wall_ms_per_step"] = wall_us / 1e3 / a.profile_steps
    tmp = Path(tempfile.mkdtemp(prefix="torch_trace_"))
    try:
        path = tmp / "trace.json"
        prof.export_chrome_trace(str(path))
        events = load_trace(path)
        if a.device == "cuda":
            rows = [(float(e["ts"]), float(e.get("dur", 0)), classify_torch(e["name"], e.get("cat", "")),
                     e["name"][:120]) for e in events if e.get("ph") == "X"
                    and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
            res["profile"] = table_from_events(rows, a.profile_steps)
        else:  # no kernels: the operators' self time, each classed or inheriting its caller's
            rows = torch_cpu_rows(events)
            res["profile"] = table_from_events(rows, a.profile_steps, wall_us=wall_us, busy="sum")
        res["profile"]["device_events"] = a.device == "cuda"
        if a.keep_traces and a.out:
            with open(path, "rb") as src, gzip.open(Path(a.out) / "torch_trace.json.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


# -------------------------------------------------------------------------------------- driver
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--classes", type=int, default=14)
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile_steps", type=int, default=5)
    p.add_argument("--torch", choices=("compile", "eager", "none"), default="compile",
                   help="the PyTorch reference profiled (none: skip it)")
    p.add_argument("--sweep", default=",".join(DEFAULT_SWEEP),
                   help="comma-separated variants of " + ", ".join(SWEEP) + " ('' for none)")
    p.add_argument("--budget_s", type=float, default=540,
                   help="start no child that would not end within this many seconds of the start")
    p.add_argument("--child_timeout", type=float, default=240)
    p.add_argument("--keep_traces", action="store_true", help="copy both traces into --out")
    p.add_argument("--sweep_only", action="store_true",
                   help="no profiles: only the sweep's variants (a second, shorter device call)")
    p.add_argument("--base_json", default=None,
                   help="with --sweep_only: an earlier run's profile.json whose keras-jax and torch "
                        "ms/step fill the sweep's 'vs base' / 'vs torch' columns")
    p.add_argument("--out", default=None, help="directory of the tables (created)")
    p.add_argument("--child", choices=("keras-jax", "torch"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="base", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_child(kind, a, variant="base", profile=False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--variant", variant]
    for k in ("device", "backbone", "size", "batch", "hidden", "classes", "steps", "reps", "warmup",
              "profile_steps", "torch"):
        cmd += [f"--{k}", str(getattr(a, k))]
    if a.out:
        cmd += ["--out", str(a.out)]
    if profile:
        cmd.append("--profile")
    if a.keep_traces:
        cmd.append("--keep_traces")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    flags = SWEEP[variant].flags if kind == "keras-jax" else ()
    if flags:
        env["XLA_FLAGS"] = " ".join([*filter(None, [os.environ.get("XLA_FLAGS")]), *flags])
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=a.child_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {a.child_timeout:.0f} s", "wall_s": a.child_timeout}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: " + proc.stderr.strip()[-1500:],
                "wall_s": time.perf_counter() - t}
    res = json.loads(lines[-1])
    res["wall_s"] = time.perf_counter() - t
    return res


def write_tables(out: Path, res: dict) -> None:
    """``profile.md``, ``sweep.csv`` and, when a profile ran (not ``--sweep_only``),
    ``profile.csv`` and the per-class table."""
    keras_p = (res.get("keras-jax") or {}).get("profile")
    torch_p = (res.get("torch") or {}).get("profile")
    with_classes = not res["config"].get("sweep_only")
    rows = []
    for c in CLASSES:
        k = keras_p["ms_per_step"][c] if keras_p else None
        t = torch_p["ms_per_step"][c] if torch_p else None
        rows.append({"class": c, "keras_ms": k, "keras_share": k / keras_p["wall_ms_per_step"]
                     if keras_p and keras_p["wall_ms_per_step"] else None,
                     "torch_ms": t, "torch_share": t / torch_p["wall_ms_per_step"]
                     if torch_p and torch_p["wall_ms_per_step"] else None,
                     "keras_minus_torch_ms": k - t if k is not None and t is not None else None})
    if with_classes:
        with open(out / "profile.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    def fmt(v, spec=".2f"):
        return "" if v is None else format(v, spec)

    sweep = res.get("sweep", {})
    base = res.get("base_from") or {}
    base_ms = (res.get("keras-jax") or {}).get("ms_per_step") or base.get("keras_ms_per_step")
    torch_ms = (res.get("torch") or {}).get("ms_per_step") or base.get("torch_ms_per_step")
    srows = []
    for name, r in sweep.items():
        ms = r.get("ms_per_step")
        srows.append({"variant": name, "what": SWEEP[name].what, "flags": " ".join(SWEEP[name].flags),
                      "status": r.get("skipped") or ("error: " + r["error"][:200] if "error" in r else "ok"),
                      "compile_s": r.get("compile_s"), "ms_per_step": ms,
                      "pairs_per_s": r.get("pairs_per_s"),
                      "vs_base": base_ms / ms if ms and base_ms else None,
                      "vs_torch": torch_ms / ms if ms and torch_ms else None})
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["variant", "what", "flags", "status", "compile_s",
                                          "ms_per_step", "pairs_per_s", "vs_base", "vs_torch"])
        w.writeheader()
        w.writerows(srows)

    md = [f"# Training-step {'profile' if with_classes else 'XLA-flag sweep'} "
          f"({res['config']['device']}, {res['config']['backbone']} "
          f"{res['config']['size']} px, batch {res['config']['batch']}, {res['date']})", ""]
    if with_classes:
        md += ["| class | keras-jax ms/step | share | torch-" + res["config"]["torch"]
               + " ms/step | share | keras − torch ms |", "|---|---:|---:|---:|---:|---:|"]
    elif base:
        md.append(f"vs base / vs torch: against {base['path']} ({base.get('date', '')}): keras-jax "
                  f"{fmt(base.get('keras_ms_per_step'))} ms/step, torch "
                  f"{fmt(base.get('torch_ms_per_step'))} ms/step")
    for r in rows if with_classes else ():
        md.append(f"| {r['class']} | {fmt(r['keras_ms'])} | {fmt(r['keras_share'], '.1%')} | "
                  f"{fmt(r['torch_ms'])} | {fmt(r['torch_share'], '.1%')} | "
                  f"{fmt(r['keras_minus_torch_ms'])} |")
    for name, p in (("keras-jax", keras_p), ("torch", torch_p)):
        r = res.get(name) or {}
        if p:
            md.append(f"\n{name}: timed {fmt(r.get('ms_per_step'))} ms/step "
                      f"({fmt(r.get('pairs_per_s'), '.1f')} pairs/s); profiled wall "
                      f"{fmt(p['wall_ms_per_step'])} ms/step, busy {fmt(p['busy_ms_per_step'])}, "
                      f"{p['events']} events ({'device kernels' if p.get('device_events') else 'host'})")
        elif "error" in r:
            md.append(f"\n{name}: ERROR {r['error'][-300:]}")
    k = res.get("keras-jax") or {}
    if "ms_per_step_waiting_each" in k:
        parts = ", ".join(f"{n} {v:.3f}" for n, v in k["train_on_batch_host_parts_ms"].items())
        md.append(f"\nkeras-jax per-call costs: the step waiting for its loss every call "
                  f"{fmt(k['ms_per_step_waiting_each'])} ms/step (vs {fmt(k.get('ms_per_step'))}); "
                  f"train_on_batch's host parts per call (ms): {parts}")
    md += [""] if md[-1] else []
    md += ["| variant | flags | status | compile s | ms/step | pairs/s | vs base | vs torch |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in srows:
        md.append(f"| {r['variant']} | `{r['flags']}` | {r['status']} | {fmt(r['compile_s'], '.1f')} "
                  f"| {fmt(r['ms_per_step'])} | {fmt(r['pairs_per_s'], '.1f')} | "
                  f"{fmt(r['vs_base'], '.3f')} | {fmt(r['vs_torch'], '.3f')} |")
    if keras_p:
        md += ["", "Top keras-jax operations:", "", "| op | class | ms/step | name stack |",
               "|---|---|---:|---|"]
        md += [f"| {t['op']} | {t['class']} | {t['ms_per_step']:.3f} | {t.get('op_name', '')} |"
               for t in keras_p["top"][:15]]
    if torch_p:
        md += ["", "Top torch kernels/operators:", "", "| op | class | ms/step |", "|---|---|---:|"]
        md += [f"| {t['op'][:90]} | {t['class']} | {t['ms_per_step']:.3f} |" for t in torch_p["top"][:15]]
    (out / "profile.md").write_text("\n".join(md) + "\n")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    a = parse_args(argv)
    if a.child:
        fn = child_keras if a.child == "keras-jax" else child_torch
        sys.stdout.write(json.dumps(fn(a)) + "\n")
        return 0
    sweep = [v.strip() for v in a.sweep.split(",") if v.strip()]
    bad = [v for v in sweep if v not in SWEEP]
    if bad:
        sys.stderr.write(f"error: --sweep: unknown variant(s) {', '.join(bad)}; choose from "
                         f"{', '.join(SWEEP)}\n")
        return 2
    if not a.out:
        sys.stderr.write("error: --out: give the directory for the tables\n")
        return 2
    base = None
    if a.base_json:
        try:
            prev = json.loads(Path(a.base_json).read_text())
            base = {"path": a.base_json, "date": prev.get("date", ""),
                    "keras_ms_per_step": prev["keras-jax"]["ms_per_step"],
                    "torch_ms_per_step": (prev.get("torch") or {}).get("ms_per_step")}
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.stderr.write(f"error: --base_json {a.base_json}: not a profile.json with a keras-jax "
                             f"ms_per_step ({type(e).__name__}: {e})\n")
            return 2
    out = Path(a.out)
    if out.exists() and any(out.glob("profile*")):
        sys.stderr.write(f"error: --out {out}: holds profile files already; choose a new directory\n")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    res = {"benchmark": "gpu_profile", "config": {k: getattr(a, k) for k in (
        "device", "backbone", "size", "batch", "hidden", "classes", "steps", "reps", "warmup",
        "profile_steps", "torch", "sweep_only")}, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "sweep": {}}
    if base:
        res["base_from"] = base

    def save():
        (out / "profile.json").write_text(json.dumps(res, indent=2) + "\n")
        write_tables(out, res)

    est = 70.0 if a.device == "cuda" else 30.0  # seconds a sweep child takes, until measured
    if not a.sweep_only:
        log.info("keras-jax: timing and profiling the train step")
        res["keras-jax"] = run_child("keras-jax", a, "base", profile=True)
        res["sweep"]["base"] = {k: v for k, v in res["keras-jax"].items() if k != "profile"}
        est = max(30.0, res["keras-jax"].get("wall_s", 60.0))
        save()
    if a.torch != "none" and not a.sweep_only:
        log.info("torch-%s: timing and profiling the train step", a.torch)
        res["torch"] = run_child("torch", a, profile=True)
        save()
    for v in sweep:
        if v == "base":
            continue
        if SWEEP[v].gpu_only and a.device != "cuda":
            res["sweep"][v] = {"skipped": "skipped: GPU-only XLA flag on the CPU"}
        elif time.perf_counter() - start + est > a.budget_s:
            res["sweep"][v] = {"skipped": f"skipped: --budget_s {a.budget_s:.0f} s would be exceeded"}
        else:
            log.info("sweep: %s %s", v, " ".join(SWEEP[v].flags))
            res["sweep"][v] = run_child("keras-jax", a, v)
            est = max(est, res["sweep"][v].get("wall_s", 0.0))
        log.info("%s: %s", v, {k: res["sweep"][v][k] for k in ("ms_per_step", "compile_s", "skipped",
                                                               "error") if k in res["sweep"][v]})
        save()
    res["total_s"] = time.perf_counter() - start
    save()
    sys.stdout.write((out / "profile.md").read_text())
    errors = [n for n, r in [("keras-jax", res.get("keras-jax", {})), ("torch", res.get("torch", {})),
                             *res["sweep"].items()] if "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
