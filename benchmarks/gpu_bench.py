"""CorrFusion-VGG16 on one accelerator: the project's Keras-3 model under JAX against a plain PyTorch
siamese VGG16 with the same FC / CorrFusion head (issue 7, item 4).

    python benchmarks/gpu_bench.py --device cuda --json $OUT/gpu_bench.json          # 200 px, batch 64
    python benchmarks/gpu_bench.py --device cpu --size 32 --batch 2 --steps 2 --fit_steps 2  # smoke

Each variant runs in its own child process (frameworks do not share the device; JAX's memory
preallocation stays out of PyTorch's way), one after the other, and reports pairs/s for training
and for inference, as the median over ``--reps`` timed windows of ``--steps`` steps after
``--warmup`` steps (compilation excluded):

* ``keras-jax``: ``model.build_model(backbone="vgg16")`` as train_cnn.py builds it, under
  ``KERAS_BACKEND=jax`` with ``utils.devices.setup_backend(mixed_precision=True)``
  (``mixed_bfloat16``), SGD with Nesterov momentum, XLA-compiled by Keras. It is fed uint8
  images, as train_cnn.py's loader hands them over, and scales them on the device; VGG has no
  batch statistics, so both dates run through the backbone as one batch (``model.one_pass``).
  Training is timed three ways: ``train_on_batch`` on uint8 batches already on the device (the
  compiled step alone), ``fit`` on uint8 NumPy arrays (the user path: host batches copied to the
  device every step) and ``fit`` on float32 NumPy arrays scaled on the host (the A/B of the
  uint8 feed: four times the bytes per step). Inference likewise: ``predict_on_batch`` on device
  arrays, ``predict`` on uint8 NumPy.
* ``keras-jax-twopass`` (not run by default): the same with one backbone call per date (the A/B
  of ``one_pass``).
* ``torch-eager`` / ``torch-compile``: the PyTorch network written below (VGG16 configuration D
  convolutions shared by both dates, GAP, two FC(1024)+ReLU per date, CorrFusion: squeeze,
  BatchNorm, excite, distance, fusion weight 1 - tanh(d), cross fusion; heads without bias; loss
  CE_t1 + CE_t2 + correlation loss + soft decorrelation with running covariances; L2 1e-4 on the
  FC kernels), bfloat16 autocast, channels_last, SGD with Nesterov momentum; batches already on
  the device; with and without ``torch.compile``.
* ``peak`` (CUDA only): an 8192^3 bfloat16 matrix product, the achievable matmul rate used as
  "peak" beside the data-sheet figure.

Model FLOP/s use the analytic FLOP count of the network (multiply-add = 2 FLOP; training = 3x
forward); at 200x200 it is about 146 GFLOP per training pair, the issue's figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("benchmarks.gpu_bench")

VARIANTS = ("peak", "keras-jax", "torch-eager", "torch-compile", "keras-jax-twopass")
DEFAULT_VARIANTS = VARIANTS[:4]
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
#: dense bfloat16 tensor-core peak from the data sheets (TFLOP/s, without sparsity)
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "GH200": 989.4}


# ------------------------------------------------------------------------------------------ FLOPs
def forward_flops_per_pair(size, hidden=1024, reduction=2, classes=14, channels=3) -> float:
    """Analytic forward FLOPs of CorrFusion-VGG16 for one pair (two images)."""
    h = w = size
    cin = channels
    conv = 0.0
    for v in VGG16_CFG:
        if v == "M":
            h, w = h // 2, w // 2
        else:
            conv += 2.0 * h * w * cin * v * 9
            cin = v
    fc = 2.0 * (cin * hidden + hidden * hidden)
    m = hidden // reduction
    fusion = 2.0 * (hidden * m + m * hidden)
    head = 2.0 * hidden * classes
    return 2 * (conv + fc + fusion + head)


def datasheet_peak(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for key, tflops in sorted(DATASHEET_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if key in device_name:
            return tflops * 1e12
    return None


# ---------------------------------------------------------------------------------------- timing
def timed_windows(step, sync, warmup, steps, reps) -> list[float]:
    """Seconds per window of ``steps`` calls of ``step`` (after ``warmup`` calls), ``reps`` windows."""
    for _ in range(warmup):
        step()
    sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out.append(time.perf_counter() - t)
    return out


def first_call_then_rate(step, sync, warmup, a) -> tuple[float, dict]:
    """Seconds of the first call (compilation included), then the rate of the timed windows."""
    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    return first, rate(a.batch, a.steps, timed_windows(step, sync, warmup, a.steps, a.reps))


def rate(batch, steps, seconds) -> dict:
    vals = [batch * steps / s for s in seconds]
    return {"pairs_per_s": statistics.median(vals), "min": min(vals), "max": max(vals),
            "windows": len(vals)}


# ------------------------------------------------------------------------------------- keras-jax
def child_keras_jax(a, one_pass=True) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    if a.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(ROOT))
    import jax
    import keras
    import numpy as np

    import model as cfn
    from data.shards import scale_images
    from utils.devices import setup_backend

    info = setup_backend(mixed_precision=True)
    keras.utils.set_random_seed(0)
    net = cfn.build_model(num_classes=a.classes, image_size=(a.size, a.size), backbone="vgg16",
                          hidden=a.hidden)
    net.one_pass = net.one_pass and one_pass  # keras-jax-twopass: one backbone call per date
    net.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9, nesterov=True))
    rng = np.random.default_rng(0)
    pool = a.pool
    # uint8 images, as train_cnn.py's loader hands them over (the model scales them on the device)
    x1 = rng.integers(0, 256, (pool * a.batch, a.size, a.size, 3), dtype=np.uint8)
    x2 = rng.integers(0, 256, (pool * a.batch, a.size, a.size, 3), dtype=np.uint8)
    y1 = rng.integers(0, a.classes, pool * a.batch).astype(np.int32)
    y2 = np.where(rng.random(pool * a.batch) < 0.05, rng.integers(0, a.classes, pool * a.batch),
                  y1).astype(np.int32)

    def sync():
        jax.block_until_ready([v.value for v in net.trainable_variables[:1]])

    res = {"backend": "jax", "jax": jax.__version__, "keras": keras.__version__,
           "devices": [str(d) for d in jax.devices()], "precision": info.get("precision"),
           "one_pass": bool(net.one_pass)}
    # compiled step on device-resident uint8 batches
    dev = [((jax.device_put(x1[i * a.batch:(i + 1) * a.batch]),
             jax.device_put(x2[i * a.batch:(i + 1) * a.batch])),
            (jax.device_put(y1[i * a.batch:(i + 1) * a.batch]),
             jax.device_put(y2[i * a.batch:(i + 1) * a.batch]))) for i in range(pool)]
    it = {"i": 0}

    def train_step():
        x, y = dev[it["i"] % pool]
        it["i"] += 1
        net.train_on_batch(x, y)

    res["train_compile_s"], res["train_on_batch_device"] = first_call_then_rate(
        train_step, sync, a.warmup, a)

    # fit on NumPy arrays (host -> device copy per step): uint8 (the loader's batches now) and
    # float32 scaled on the host (the loader before; four times the bytes per step)
    n_fit = max(a.steps, a.fit_steps) * a.batch
    reps_y = (np.resize(y1, n_fit), np.resize(y2, n_fit))
    feeds = {"uint8": (np.resize(x1, (n_fit, *x1.shape[1:])), np.resize(x2, (n_fit, *x2.shape[1:])))}
    if not a.no_float_feed:
        feeds["float32"] = tuple(scale_images(x) for x in feeds["uint8"])
    for dtype, reps_x in feeds.items():
        net.fit(reps_x, reps_y, batch_size=a.batch, epochs=1, verbose=0, shuffle=False)  # warm-up
        sync()
        secs = []
        for _ in range(a.reps):
            t = time.perf_counter()
            net.fit(reps_x, reps_y, batch_size=a.batch, epochs=1, verbose=0, shuffle=False)
            sync()
            secs.append(time.perf_counter() - t)
        res["fit_numpy" if dtype == "uint8" else "fit_numpy_float32"] = rate(a.batch, n_fit // a.batch, secs)
    reps_x = feeds["uint8"]

    # inference
    def infer_step():
        x, _ = dev[it["i"] % pool]
        it["i"] += 1
        out = net.predict_on_batch(x)
        infer_step.last = out

    res["infer_compile_s"], res["predict_on_batch_device"] = first_call_then_rate(
        infer_step, lambda: None, a.warmup, a)  # predict_on_batch returns NumPy: no sync needed
    net.predict(reps_x, batch_size=a.batch, verbose=0)
    secs = []
    for _ in range(a.reps):
        t = time.perf_counter()
        net.predict(reps_x, batch_size=a.batch, verbose=0)
        secs.append(time.perf_counter() - t)
    res["predict_numpy"] = rate(a.batch, n_fit // a.batch, secs)
    res["train"] = max(res["train_on_batch_device"]["pairs_per_s"], res["fit_numpy"]["pairs_per_s"])
    res["infer"] = max(res["predict_on_batch_device"]["pairs_per_s"],
                       res["predict_numpy"]["pairs_per_s"])
    return res


# ----------------------------------------------------------------------------------------- torch
def build_torch_net(a):
    import torch
    from torch import nn

    class CorrFusionHead(nn.Module):
        def __init__(self, d, m, rho=0.9, eps=1e-12):
            super().__init__()
            self.sq1, self.sq2 = nn.Linear(d, m), nn.Linear(d, m)
            self.bn1, self.bn2 = nn.BatchNorm1d(m), nn.BatchNorm1d(m)
            self.ex1, self.ex2 = nn.Linear(m, d), nn.Linear(m, d)
            self.rho, self.eps = rho, eps
            self.register_buffer("cov1", torch.eye(m))
            self.register_buffer("cov2", torch.eye(m))

        def forward(self, x, y):
            xb = self.bn1(torch.relu(self.sq1(x)))
            yb = self.bn2(torch.relu(self.sq2(y)))
            xr, yr = torch.relu(self.ex1(xb)), torch.relu(self.ex2(yb))
            dist = torch.sqrt(((xb.float() - yb.float()) ** 2).sum(1) + self.eps)
            w = (1 - torch.tanh(dist)).to(xr.dtype)[:, None]
            return x + w * yr, y + w * xr, dist, xb, yb

        def decov(self, xb, yb):
            total = 0.0
            for buf, v in ((self.cov1, xb), (self.cov2, yb)):
                v = v.float() - v.float().mean(0)
                c = self.rho * buf + (1 - self.rho) * v.T @ v / (v.shape[0] - 1)
                if self.training:
                    buf.copy_(c.detach())
                total = total + (c.abs().sum() - c.diagonal().abs().sum())
            return total

    class SiameseVGG16CorrFusion(nn.Module):
        def __init__(self, classes, hidden, reduction):
            super().__init__()
            layers, cin = [], 3
            for v in VGG16_CFG:
                if v == "M":
                    layers.append(nn.MaxPool2d(2))
                else:
                    layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                    cin = v
            self.features = nn.Sequential(*layers)
            self.fc_t1 = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            self.fc_t2 = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            self.fusion = CorrFusionHead(hidden, hidden // reduction)
            self.head_t1 = nn.Linear(hidden, classes, bias=False)
            self.head_t2 = nn.Linear(hidden, classes, bias=False)

        def forward(self, x1, x2):
            n = x1.shape[0]
            f = self.features(torch.cat([x1, x2]))  # one pass of the shared backbone
            f = f.mean((2, 3))
            fx, fy = self.fc_t1(f[:n]), self.fc_t2(f[n:])
            xp, yp, dist, xb, yb = self.fusion(fx, fy)
            return self.head_t1(xp), self.head_t2(yp), dist, xb, yb

    return SiameseVGG16CorrFusion(a.classes, a.hidden, 2)


def torch_steps(a, compiled: bool):
    """The PyTorch reference's ``(net, train_step, infer_step, sync, warmup)`` on ``a.device``:
    ``train_step()`` runs one training step on the next of ``a.pool`` device-resident batches."""
    import torch
    import torch.nn.functional as F

    device = torch.device(a.device)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    net = build_torch_net(a).to(device).to(memory_format=torch.channels_last)
    decay = [p for n, p in net.named_parameters() if n.startswith(("fc_", "fusion.sq", "fusion.ex",
                                                                   "head_")) and p.ndim == 2]
    ids = {id(p) for p in decay}
    rest = [p for p in net.parameters() if id(p) not in ids]
    # Keras' L2(1e-4) adds 1e-4 * sum(w^2): gradient 2e-4 * w
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 2e-4}, {"params": rest}], lr=1e-3,
                          momentum=0.9, nesterov=True)
    # dynamic=False: every batch has the same shape; no dynamic-shape recompilation
    fwd = torch.compile(net, dynamic=False) if compiled else net
    warmup = max(a.warmup, 3) if compiled else a.warmup  # train->eval switch recompiles once
    gen = torch.Generator(device="cpu").manual_seed(0)
    batches = []
    for _ in range(a.pool):
        x1 = (torch.rand(a.batch, 3, a.size, a.size, generator=gen) - 0.5)
        x2 = (torch.rand(a.batch, 3, a.size, a.size, generator=gen) - 0.5)
        y1 = torch.randint(0, a.classes, (a.batch,), generator=gen)
        y2 = torch.where(torch.rand(a.batch, generator=gen) < 0.05,
                         torch.randint(0, a.classes, (a.batch,), generator=gen), y1)
        batches.append(tuple(t.to(device) if t.ndim == 1 else
                             t.to(device).contiguous(memory_format=torch.channels_last)
                             for t in (x1, x2, y1, y2)))
    it = {"i": 0}
    amp = dict(device_type=device.type, dtype=torch.bfloat16)

    def train_step():
        x1, x2, y1, y2 = batches[it["i"] % a.pool]
        it["i"] += 1
        with torch.autocast(**amp):
            l1, l2, dist, xb, yb = fwd(x1, x2)
            unchanged = (y1 == y2).float()
            loss = (F.cross_entropy(l1.float(), y1) + F.cross_entropy(l2.float(), y2)
                    + 0.1 * (dist * unchanged).sum() / x1.shape[0]
                    + 1e-4 * net.fusion.decov(xb, yb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def infer_step():
        x1, x2, _, _ = batches[it["i"] % a.pool]
        it["i"] += 1
        with torch.inference_mode(), torch.autocast(**amp):
            l1, l2, *_ = fwd(x1, x2)
            infer_step.last = (l1.softmax(-1), l2.softmax(-1))

    return net, train_step, infer_step, sync, warmup


def child_torch(a, compiled: bool) -> dict:
    import torch

    net, train_step, infer_step, sync, warmup = torch_steps(a, compiled)
    res = {"torch": torch.__version__, "compiled": compiled,
           "device_name": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"}
    net.train()
    res["train_compile_s"], res["train_device"] = first_call_then_rate(train_step, sync, warmup, a)
    net.eval()
    res["infer_compile_s"], res["infer_device"] = first_call_then_rate(infer_step, sync, warmup, a)
    if compiled:
        from torch._dynamo.utils import counters

        res["dynamo_unique_graphs"] = int(counters["stats"]["unique_graphs"])
    res["train"] = res["train_device"]["pairs_per_s"]
    res["infer"] = res["infer_device"]["pairs_per_s"]
    return res


def child_peak(a) -> dict:
    import torch

    if a.device != "cuda":
        return {"skipped": "matmul peak is measured on CUDA only"}
    n = 8192
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    secs = timed_windows(lambda: x @ y, torch.cuda.synchronize, 3, 10, 3)
    flops = [2 * n ** 3 * 10 / s for s in secs]
    return {"matmul_bf16_flops": statistics.median(flops), "device_name": torch.cuda.get_device_name(0)}


# ---------------------------------------------------------------------------------------- driver
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--size", type=int, default=200, help="image height = width")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--warmup", type=int, default=5, help="steps before timing (after compilation)")
    p.add_argument("--reps", type=int, default=3, help="timed windows (median reported)")
    p.add_argument("--pool", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--fit_steps", type=int, default=60,
                   help="steps per timed fit/predict call on NumPy arrays (amortises fit's set-up)")
    p.add_argument("--classes", type=int, default=14)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("--no_float_feed", action="store_true",
                   help="keras-jax: skip the fit on float32 NumPy arrays (the A/B of the uint8 feed)")
    p.add_argument("--child_timeout", type=float, default=400, help="seconds per variant")
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    p.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_child(variant, a) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant]
    for k in ("device", "size", "batch", "steps", "warmup", "reps", "pool", "classes", "hidden",
              "fit_steps"):
        cmd += [f"--{k}", str(getattr(a, k))]
    if a.no_float_feed:
        cmd.append("--no_float_feed")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), TF_CPP_MIN_LOG_LEVEL="2")
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=a.child_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {a.child_timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: " + proc.stderr.strip()[-2000:]}
    res = json.loads(lines[-1])
    res["wall_s"] = time.perf_counter() - t
    return res


def summarize(results: dict, a) -> dict:
    fwd = forward_flops_per_pair(a.size, a.hidden, 2, a.classes)
    train_flops, infer_flops = 3 * fwd, fwd
    names = [r.get("device_name") for r in results.values() if isinstance(r, dict)]
    device_name = next((n for n in names if n and n != "cpu"), None)
    peaks = {"datasheet_bf16": datasheet_peak(device_name),
             "matmul_bf16": results.get("peak", {}).get("matmul_bf16_flops")}
    table = {}
    for name, r in results.items():
        if name == "peak" or "error" in r or "train" not in r:
            continue
        row = {"train_pairs_per_s": r["train"], "infer_pairs_per_s": r["infer"],
               "train_flops": r["train"] * train_flops, "infer_flops": r["infer"] * infer_flops}
        for pk, pv in peaks.items():
            if pv:
                row[f"train_fraction_of_{pk}"] = row["train_flops"] / pv
                row[f"infer_fraction_of_{pk}"] = row["infer_flops"] / pv
        table[name] = row
    out = {"flops_per_pair": {"forward": fwd, "train": train_flops},
           "device_name": device_name, "peak_flops": peaks, "table": table}
    if "keras-jax" in table and "torch-compile" in table:
        for what in ("train", "infer"):
            r = table["keras-jax"][f"{what}_pairs_per_s"] / table["torch-compile"][f"{what}_pairs_per_s"]
            out[f"{what}_ratio_keras_vs_torch_compile"] = {"value": r, "target": 1.0, "pass": r >= 1.0}
    return out


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    a = parse_args(argv)
    if a.child:
        fn = {"keras-jax": child_keras_jax,
              "keras-jax-twopass": lambda a: child_keras_jax(a, one_pass=False), "torch-eager": lambda a: child_torch(a, False),
              "torch-compile": lambda a: child_torch(a, True), "peak": child_peak}[a.child]
        sys.stdout.write(json.dumps(fn(a)) + "\n")
        return 0
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    results = {}
    out = {}
    for v in variants:
        log.info("running %s", v)
        results[v] = run_child(v, a)
        log.info("%s: %s", v, {k: results[v][k] for k in ("train", "infer", "error") if k in results[v]})
        out = {"benchmark": "gpu_bench", "config": {k: getattr(a, k) for k in (
            "device", "size", "batch", "steps", "warmup", "reps", "pool", "classes", "hidden",
            "fit_steps")},
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": sys.version.split()[0],
            "results": results, "summary": summarize(results, a)}
        if a.json:  # after every variant, so a run cut short still leaves what it measured
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    s = out["summary"]
    sys.stdout.write(f"forward {s['flops_per_pair']['forward'] / 1e9:.1f} GFLOP/pair, "
                     f"training {s['flops_per_pair']['train'] / 1e9:.1f} GFLOP/pair\n")
    for name, row in s["table"].items():
        frac = "".join(f", {row[k]:.1%} of {k.split('_of_')[1]}" for k in row
                       if k.startswith("train_fraction"))
        sys.stdout.write(f"{name:14s} train {row['train_pairs_per_s']:9.1f} pairs/s "
                         f"({row['train_flops'] / 1e12:.2f} TFLOP/s{frac}), "
                         f"infer {row['infer_pairs_per_s']:9.1f} pairs/s\n")
    for name, r in results.items():
        if "error" in r:
            sys.stdout.write(f"{name:14s} ERROR {r['error'][-300:]}\n")
    for what in ("train", "infer"):
        k = f"{what}_ratio_keras_vs_torch_compile"
        if k in s:
            sys.stdout.write(f"{what}: keras-jax / torch-compile = {s[k]['value']:.3f} "
                             f"({'PASS' if s[k]['pass'] else 'FAIL'}, target >= 1.0)\n")
    return 0 if not any("error" in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
