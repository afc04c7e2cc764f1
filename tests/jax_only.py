"""Checks that need JAX. Not collected on its own (no ``test_`` prefix): the JAX
subprocess of tests/model/test_jax_backend.py names them, so they run in the process that already
started Python, TensorFlow and JAX for the model tests (the backend is fixed per process; each new
Python process with TensorFlow costs 3-9 s of CPU): train_cnn.py end to end, the loader's
PyDataset, multi-worker refused on JAX; and the benchmarks' checks that run JAX code (jit
compilation, a profiler trace, step_overhead.py: full tier, beside the other JAX work)."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np

import train_cnn
from benchmarks import gpu_profile
from tests._runs import FAST
from utils.cli import run_main


def messages(caplog):
    return [r.getMessage() for r in caplog.records]


def test_trains_and_evaluates_on_the_jax_backend(demo_data, tmp_path, caplog):
    assert keras.backend.backend() == "jax"
    # the loss guard runs in Keras' callback thread on JAX: still stops, names the step, exits 1
    # with its one line. First in this process, so that the training below shows that the process
    # trains again afterwards: the guard once set the stop flag through Keras' Callback.model,
    # which syncs the JAX state from that thread while the loop had donated it ("Array has been
    # deleted" in fit, a traceback, and every later training in the process broken; found
    # 2026-12-05). Two trainings instead of three: the healthy run is the one after the guard's.
    nan_dir = tmp_path / "jax_nan"
    rc = run_main(train_cnn.main, ["--data_dir", str(demo_data), "--workdir", str(nan_dir), *FAST,
                                   "-e", "2", "--lr", "1e30", "-sm", "true"])
    assert rc == 1, messages(caplog)[-20:]
    assert not any(r.exc_info for r in caplog.records)
    failures = [m for m in messages(caplog) if "non-finite loss" in m]
    assert failures and "epoch 1, step" in failures[-1], messages(caplog)[-5:]
    assert not (nan_dir / "checkpoints" / "last.keras").exists()
    # and the process trains again afterwards, end to end
    caplog.clear()
    workdir = tmp_path / "jax"
    rc = run_main(train_cnn.main, ["--data_dir", str(demo_data), "--workdir", str(workdir),
                                   "-e", "1", *FAST])
    assert rc == 0, messages(caplog)[-20:]
    assert not any(r.exc_info for r in caplog.records)
    assert any("TensorBoard logging needs the TensorFlow backend" in m for m in messages(caplog))
    assert json.loads((workdir / "args.json").read_text())["devices"]["backend"] == "jax"
    assert not list(workdir.rglob("*tfevents*"))
    assert (workdir / "checkpoints" / "best.keras").is_file()
    # without --jit the JAX steps are jit-compiled: jit_compile=False runs every operation on its
    # own, 70-130x slower per step (issue 25, benchmarks/RESULTS.md section 4)
    with zipfile.ZipFile(workdir / "checkpoints" / "best.keras") as z:
        assert json.loads(z.read("config.json"))["compile_config"]["jit_compile"] is True
    results = json.loads((workdir / "results" / "tst" / "results.json").read_text())
    assert 0.0 <= results["metrics"]["OA_t1"] <= 1.0


def test_other_backend_gets_pydataset(tmp_path):
    """On JAX, make_dataset returns the PyDataset (no tf.data) with the same evaluation order as
    the shards (tests/data/test_loader.py checks the TensorFlow side)."""
    from data import loader, split_summary
    from tests.data._helpers import make_split

    assert keras.backend.backend() == "jax"
    split = make_split(tmp_path / "trn", sizes=(7, 5, 6), undefined=(2, 9, 16))
    ds, _ = loader.make_dataset(split, 4, training=False, image_size=(2, 2))
    assert type(ds).__name__ == "ShardPyDataset"
    assert len(ds) == loader.steps_per_epoch(split_summary.inspect_split(split), 4)
    labels = np.concatenate([ds[i][1][0] for i in range(len(ds))])
    assert labels.tolist() == split_summary.read_labels(split)["label_t1"].tolist()


def test_tf_config_on_jax_exits_2_with_one_line_before_anything_is_written(tmp_path, capsys,
                                                                          monkeypatch):
    """TF_CONFIG set on the JAX backend: train_cnn.py refuses with one line, exit status 2,
    before anything is written (train_cnn.main, as the script calls it)."""
    assert keras.backend.backend() == "jax"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    rc = run_main(train_cnn.main, ["--data_dir", str(tmp_path / "data"),
                                   "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.strip().splitlines()[-1].startswith(
        "error: TF_CONFIG: multi-worker training needs the TensorFlow backend, this is jax")
    assert not (tmp_path / "w").exists()


# ------------------------------------------------ benchmarks/ helpers that need JAX (not the backend)
def test_gpu_profile_classes_a_cpu_trace_of_a_convolution_and_its_gradients(tmp_path):
    """A jitted convolution's gradient profiled on the CPU: the trace's XLA operations land in the
    forward, backward-data and backward-filter classes (the same parser reads the GPU's trace)."""
    import glob

    import jax
    import jax.numpy as jnp

    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(y) ** 2)

    w, x = jnp.ones((3, 3, 4, 8)), jnp.ones((2, 16, 16, 4))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    compiled = grad.lower(w, x).compile()
    jax.block_until_ready(compiled(w, x))
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(2):
            out = compiled(w, x)
        jax.block_until_ready(out)
    trace = glob.glob(str(tmp_path / "**" / "*.trace.json.gz"), recursive=True)
    assert trace
    table = gpu_profile.jax_trace_table(trace[0], gpu_profile.parse_hlo(compiled.as_text()),
                                        {(3, 3, 4, 8)}, steps=2, module_prefix="jit_loss")
    ms = table["ms_per_step"]
    assert ms["conv_fwd"] > 0 and ms["conv_bwd_data"] > 0 and ms["conv_bwd_filter"] > 0, table["top"]
    assert set(ms) == set(gpu_profile.CLASSES) and table["events"] > 0


def test_mask_gradient_max_pool_matches_jax_after_a_relu():
    """benchmarks/jax_pool.py: forward equal to lax.reduce_window; gradient through a ReLU equal
    to JAX's select_and_scatter gradient (ties only at the ReLU's zeros), in float64, at VGG's odd
    sizes (25 -> 12 drops a row and a column) and a training-like 64-channel block (its refusal on
    TensorFlow: tests/benchmarks/test_smoke.py)."""
    import jax
    import jax.numpy as jnp

    from benchmarks.jax_pool import max_pool_2x2

    jax.config.update("jax_enable_x64", True)
    try:
        def ref_pool(x):
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

        rng = np.random.default_rng(0)
        for shape in ((2, 25, 25, 8), (4, 50, 50, 64), (1, 7, 10, 3)):
            x = jnp.asarray(rng.normal(size=shape))
            c = jnp.asarray(rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])))
            np.testing.assert_array_equal(max_pool_2x2(x), ref_pool(x))
            mine = jax.grad(lambda v, c=c: jnp.sum(c * max_pool_2x2(jax.nn.relu(v))))(x)
            ref = jax.grad(lambda v, c=c: jnp.sum(c * ref_pool(jax.nn.relu(v))))(x)
            np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-12)
            assert np.abs(np.asarray(ref)).sum() > 0
            # the dropped last row/column of an odd size gets no gradient
            if shape[1] % 2:
                assert not np.asarray(mine)[:, -1].any()
        # a positive tie: every tied position gets the gradient (select_and_scatter picks one)
        x = jnp.ones((1, 2, 2, 1))
        assert float(jax.grad(lambda v: jnp.sum(max_pool_2x2(v)))(x).sum()) == 4.0
    finally:
        jax.config.update("jax_enable_x64", False)


def test_step_overhead_runs_tiny(tmp_path):
    """benchmarks/step_overhead.py (a JAX measurement) at a tiny size, in this JAX process: its
    main refuses only a Keras already imported with another backend."""
    from benchmarks import step_overhead

    out = tmp_path / "so.json"
    assert step_overhead.main(["--steps", "2", "--reps", "1", "--warmup", "1", "--parts_calls", "2",
                               "--modes", "jit_step,train_on_batch", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["train_on_batch"]["s_per_step"] > 0 and res["jit_step"]["s_per_step"] > 0
    assert res["host_parts_s"]["state_sync"] > 0 and res["variables"]["metrics"] > 0
