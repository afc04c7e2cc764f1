"""Smoke tests of the benchmark scripts at tiny sizes (no timing is asserted). The checks that import
JAX (the mask max-pool's gradient, a CPU trace classed like the GPU's, step_overhead.py) run in the
JAX subprocess: tests/jax_only.py."""

import csv
import json
import sys

import numpy as np
import pytest

from benchmarks import (
    cancorr_cost,
    common,
    gpu_bench,
    gpu_profile,
    memory,
    startup,
    step_overhead,
    throughput,
)
from tests._helpers import xla_flags_without_llvm_opt


def test_forward_flops_match_the_issue_figure():
    # issue 7: 146 GFLOP per training pair for CorrFusion-VGG16 at 200x200
    train = 3 * gpu_bench.forward_flops_per_pair(200)
    assert train == pytest.approx(146e9, rel=0.01)
    # VGG16's convolutions at 224x224: 15.35 GMAC per image, the textbook figure
    conv_224 = gpu_bench.forward_flops_per_pair(224, hidden=2, classes=1) / 2
    assert conv_224 == pytest.approx(30.7e9, rel=0.005)


def test_datasheet_peak_lookup():
    assert gpu_bench.datasheet_peak("NVIDIA H200") == pytest.approx(989.4e12)
    assert gpu_bench.datasheet_peak(None) is None


def test_random_split_seed_loader_and_row_reader_agree(tmp_path):
    split = common.write_random_split(tmp_path / "trn", [5, 3], 8, classes=3)
    seed = list(memory.seed_batches(split, 4))
    rows = list(memory.row_batches(split, 4))
    assert sum(len(y[0]) for _, y in seed) == sum(len(y[0]) for _, y in rows) == 8
    x = np.concatenate([b[0][0] for b in seed])
    assert x.dtype == np.float32 and x.min() >= -0.5 and x.max() <= 0.5

    def pairs(batches):  # order-free comparison: (label_t1, pixel sum) of every pair
        return sorted((int(y[0][i]), round(float(x[0][i].sum()), 2))
                      for x, y in batches for i in range(len(y[0])))

    assert pairs(rows) == pairs(seed)  # random uint8 images: the shard max is 255
    stats = common.median_spread([1.0, 2.0, 4.0])
    assert stats["median"] == 2.0 and stats["rel_half_range"] == pytest.approx(0.75)


def test_entry_points_answer_help_without_heavy_imports():
    for script in ("train_cnn.py", "eval.py"):
        heavy = startup.imported_heavy_modules(script)
        assert not {"tensorflow", "keras", "jax", "torch"} & set(heavy), (script, heavy)


@pytest.mark.slow  # end to end: many seconds on a CPU
def test_throughput_runs_tiny(tmp_path, capsys):
    out = tmp_path / "tp.json"
    throughput.main(["--size", "16", "--batch", "4", "--steps", "1", "--reps", "1", "--hidden", "8",
                     "--no_eval", "--tmp", str(tmp_path), "--json", str(out)])
    res = json.loads(out.read_text())
    assert set(res["ratios"]) >= {"train_ratio", "train_ratio_cpu"}
    assert res["pairs_train"] == 4


@pytest.mark.slow  # end to end: many seconds on a CPU
def test_cancorr_cost_runs_tiny_and_both_formulas_agree(tmp_path):
    out = tmp_path / "cc.json"
    cancorr_cost.main(["--shapes", "8x64,40x6", "--calls", "1", "--reps", "1", "--methods", "sdcca",
                       "--size", "16", "--batch", "8", "--hidden", "16", "--steps", "1",
                       "--json", str(out)])
    res = json.loads(out.read_text())
    for row in res["metric"].values():
        assert row["values"]["gram"] == pytest.approx(row["values"]["eigh"], rel=1e-4)
        assert row["speedup"] > 0
    assert res["train_step"]["sdcca"]["pairs_per_s"]["gram"]["median"] > 0
    from model import network
    from model.cca import canonical_correlation

    assert network.canonical_correlation is canonical_correlation  # the A/B patch is undone


@pytest.mark.slow  # end to end: many seconds on a CPU
def test_memory_runs_tiny_through_train_cnns_loader(tmp_path):
    out = tmp_path / "mem.json"
    memory.main(["--pairs", "12", "--size", "16", "--batch", "4", "--train_steps", "1", "--hidden", "8",
                 "--modes", "stream-1", "--tmp", str(tmp_path), "--json", str(out)])
    res = json.loads(out.read_text())["results"]["stream-1"]
    assert "error" not in res, res
    assert res["pairs_seen"] == 12 and res["peak_mib"] > 0


def test_gpu_bench_timing_the_torch_variants_share_runs_without_torch():
    """The torch-free half of the GPU benchmark (arguments, timing, rates), run in CI; the torch
    network itself needs torch (next test, skipped where it is not installed)."""
    a = gpu_bench.parse_args(["--device", "cpu", "--batch", "2", "--steps", "3", "--warmup", "1",
                              "--reps", "2"])
    calls = []
    first, res = gpu_bench.first_call_then_rate(lambda: calls.append(1), lambda: None, a.warmup, a)
    assert first >= 0 and len(calls) == 1 + a.warmup + a.steps * a.reps
    assert res["windows"] == 2 and res["pairs_per_s"] > 0
    assert gpu_bench.rate(2, 3, [1.0, 2.0])["max"] == pytest.approx(6.0)
    assert {"torch-eager", "torch-compile"} <= set(gpu_bench.VARIANTS)


def test_torch_reference_trains_a_step_on_cpu():
    pytest.importorskip("torch", reason="torch is not in requirements-dev.txt: the PyTorch "
                                        "reference of gpu_bench runs where it is installed")
    a = gpu_bench.parse_args(["--device", "cpu", "--size", "32", "--batch", "2", "--steps", "1",
                              "--warmup", "0", "--reps", "1", "--pool", "1", "--hidden", "16"])
    res = gpu_bench.child_torch(a, compiled=False)
    assert res["train"] > 0 and res["infer"] > 0


def test_scripts_are_importable_as_files():
    for mod in (throughput, memory, startup, gpu_bench, cancorr_cost, gpu_profile, step_overhead):
        assert mod.__doc__ and "python" in mod.__doc__
    assert sys.modules["benchmarks.common"] is common


def test_scene_map_benchmark_at_a_tiny_size(tmp_path):
    """The synthetic scene is a georeferenced uint8 RGB raster; the map child runs and reports."""
    import types

    import rasterio

    import model as cfn
    from benchmarks import scene_map

    for name, seed in (("t1.tif", 1), ("t2.tif", 2)):
        scene_map.write_scene(tmp_path / name, 96, 32, seed)
    with rasterio.open(tmp_path / "t1.tif") as src:
        assert (src.width, src.height, src.count, src.dtypes[0]) == (96, 96, 3, "uint8")
        assert src.crs.to_epsg() == 32650
    cfn.build_model(scene_map.CLASSES, image_size=(32, 32), backbone="small",
                    hidden=8, seed=0).save(tmp_path / "m.keras")
    args = types.SimpleNamespace(model=tmp_path / "m.keras", scene=tmp_path, tile=32, batch=4,
                                 child="map", size=96, out=tmp_path / "maps", bare_tiles=8)
    r = scene_map.child(args)
    assert r["tiles"] == 9 and r["tiles_per_s"] > 0 and r["ru_maxrss_mib"] > 0
    assert (tmp_path / "maps" / "change.tif").is_file()
    args.child = "bare"
    assert scene_map.child(args)["tiles_measured"] == 8


def test_gpu_profile_classes_gpu_hlo_and_kernel_names():
    """The GPU half of the classification, from HLO lines and kernel names as XLA and cuDNN write
    them (no GPU needed)."""
    hlo = gpu_profile.parse_hlo("""
  %custom-call.3 = (bf16[64,100,100,64]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/jvp(backbone)/block1_conv2/conv_general_dilated"}
  %custom-call.9 = (bf16[64,100,100,64]{3,2,1,0}, u8[0]{0}) custom-call(%c, %d), custom_call_target="__cudnn$convBackwardInput", metadata={op_name="jit(train_step)/transpose(jvp(backbone))/block1_conv2/conv_general_dilated"}
  %custom-call.10 = (bf16[64,64,3,3]{3,2,1,0}, u8[0]{0}) custom-call(%c, %e), custom_call_target="__cudnn$convBackwardFilter", metadata={op_name="jit(train_step)/transpose(jvp(backbone))/block1_conv2/conv_general_dilated"}
  %gemm_fusion_dot.2 = bf16[128,1024]{1,0} fusion(%f, %g), kind=kCustom, calls=%gemm_fusion_dot.2_computation, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}, metadata={op_name="jit(train_step)/jvp(fc1_t1)/dot_general"}
  %loop_multiply_fusion.7 = f32[3,3,64,64]{3,2,1,0} fusion(%h, %i), kind=kLoop, calls=%fused_multiply.7, metadata={op_name="jit(train_step)/sgd/mul"}
  %input_transpose_fusion.1 = bf16[64,3,200,200]{3,2,1,0} fusion(%j), kind=kInput, calls=%fused_transpose.1
  ROOT %loop_tanh_fusion = f32[64]{0} fusion(%k), kind=kLoop, calls=%fused_tanh, metadata={op_name="jit(train_step)/jvp(corrfusion)/tanh"}
  %loop_select_fusion.4 = f32[32,32]{1,0} fusion(%l), kind=kLoop, calls=%fused_select.4, metadata={op_name="jit(train_step)/jit(solve)/lu"}
  %loop_reduce_window_fusion.1 = bf16[64,50,50,128]{3,2,1,0} fusion(%m), kind=kLoop, calls=%fused_reduce_window.1
""")
    kernels = {(3, 3, 64, 64)}
    got = {name: gpu_profile.classify_hlo(info, kernels, name) for name, info in hlo.items()}
    assert got == {"custom-call.3": "conv_fwd", "custom-call.9": "conv_bwd_data",
                   "custom-call.10": "conv_bwd_filter", "gemm_fusion_dot.2": "gemm",
                   "loop_multiply_fusion.7": "optimizer", "input_transpose_fusion.1": "copies",
                   "loop_tanh_fusion": "head_losses", "loop_select_fusion.4": "metrics",
                   "loop_reduce_window_fusion.1": "backbone_fusions"}
    names = {"sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "conv_fwd",
             "sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nchw": "conv_bwd_data",
             "sm90_xmma_wgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "conv_bwd_filter",
             "nvjet_tst_128x64_64x8_1x2_h_bz_coopA_TNT": "gemm",
             "void at::native::multi_tensor_apply_kernel<...>": "optimizer",
             "Memcpy DtoD (Device -> Device)": "copies"}
    assert {n: gpu_profile.classify_torch(n) for n in names} == names
    assert gpu_profile.union_us([(0, 2), (1, 3), (5, 6)]) == 4


def test_gpu_profile_skips_gpu_only_flags_on_the_cpu_and_refuses_bad_variants(tmp_path, capsys):
    """The second device call's form (--sweep_only) on the CPU: the GPU-only XLA flags are skipped
    with a note, the tables are still written; an unknown variant is a one-line error."""
    out = tmp_path / "out"
    assert gpu_profile.main(["--device", "cpu", "--sweep_only", "--sweep", "no_triton_gemm,latency_hiding",
                             "--out", str(out)]) == 0
    res = json.loads((out / "profile.json").read_text())
    assert res["sweep"]["latency_hiding"]["skipped"] == "skipped: GPU-only XLA flag on the CPU"
    sweep = (out / "sweep.csv").read_text()
    assert "no_triton_gemm" in sweep and "--xla_gpu_enable_triton_gemm=false" in sweep
    # no profile ran: the sweep table only, no empty per-class table
    assert not (out / "profile.csv").exists() and "| class |" not in (out / "profile.md").read_text()
    # --base_json: an earlier run's figures fill the "vs" columns; a bad file is a one-line error
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps({"date": "d", "keras-jax": {"ms_per_step": 20.0},
                                "torch": {"ms_per_step": 16.0}}))
    res["sweep"]["no_triton_gemm"] = {"ms_per_step": 25.0}
    res["base_from"] = {"path": str(prev), "keras_ms_per_step": 20.0, "torch_ms_per_step": 16.0}
    gpu_profile.write_tables(out, res)
    row = next(r for r in csv.DictReader((out / "sweep.csv").open()) if r["variant"] == "no_triton_gemm")
    assert (float(row["vs_base"]), float(row["vs_torch"])) == (0.8, 0.64)
    assert gpu_profile.main(["--device", "cpu", "--sweep_only", "--sweep", "no_triton_gemm",
                             "--base_json", str(prev), "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "profile.json").read_text())["base_from"]["torch_ms_per_step"] == 16.0
    capsys.readouterr()
    assert gpu_profile.main(["--device", "cpu", "--sweep_only", "--base_json", str(tmp_path / "nope.json"),
                             "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.startswith("error: --base_json ")
    assert not (tmp_path / "c").exists()
    assert gpu_profile.main(["--device", "cpu", "--sweep", "fastest", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: --sweep: unknown variant(s) fastest")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # end to end: a child process per part, tens of seconds on a CPU
def test_gpu_profile_runs_tiny_on_the_cpu(tmp_path, monkeypatch):
    """The one device call's script, end to end at a tiny size: the Keras step profiled and timed,
    GPU-only flags skipped with a note, tables written; the torch half where torch is installed."""
    import importlib.util

    monkeypatch.setenv("XLA_FLAGS", xla_flags_without_llvm_opt())  # children inherit it

    torch_mode = "eager" if importlib.util.find_spec("torch") else "none"
    out = tmp_path / "out"
    rc = gpu_profile.main(["--device", "cpu", "--backbone", "small", "--size", "32", "--batch", "2",
                           "--hidden", "8", "--steps", "1", "--reps", "1", "--warmup", "1",
                           "--profile_steps", "1", "--torch", torch_mode, "--sweep", "no_triton_gemm",
                           "--out", str(out)])
    res = json.loads((out / "profile.json").read_text())
    assert rc == 0, res
    ms = res["keras-jax"]["profile"]["ms_per_step"]
    assert ms["conv_fwd"] > 0 and ms["conv_bwd_data"] + ms["conv_bwd_filter"] > 0 and ms["optimizer"] > 0
    assert res["sweep"]["no_triton_gemm"]["skipped"].startswith("skipped: GPU-only")
    assert res["sweep"]["base"]["ms_per_step"] > 0
    if torch_mode != "none":
        assert res["torch"]["profile"]["ms_per_step"]["conv_fwd"] > 0
    assert {p.name for p in out.iterdir()} == {"profile.json", "profile.md", "profile.csv", "sweep.csv"}
    assert gpu_profile.main(["--device", "cpu", "--out", str(out)]) == 2  # never over a profile


def test_the_mask_max_pool_patch_is_refused_on_tensorflow_and_is_in_the_sweep():
    """benchmarks/jax_pool.py patches Keras' JAX max_pool only: on TensorFlow (this suite) it is
    refused before JAX is imported. Its gradient against JAX's: tests/jax_only.py."""
    from benchmarks.jax_pool import patch_keras_max_pool

    with pytest.raises(RuntimeError, match="KERAS_BACKEND=jax"):
        patch_keras_max_pool()  # the suite runs on TensorFlow
    assert gpu_profile.SWEEP["maxpool_mask_vjp"].maxpool_mask
    assert "maxpool_mask_vjp" in gpu_profile.DEFAULT_SWEEP


@pytest.mark.slow
def test_gpu_profile_runs_the_mask_max_pool_variant_on_the_cpu(tmp_path, monkeypatch):
    """The variant's child (KERAS_BACKEND=jax, Keras' max_pool patched) trains the small backbone's
    step on the CPU and reports a time, as it will on the device."""
    monkeypatch.setenv("XLA_FLAGS", xla_flags_without_llvm_opt())  # children inherit it
    out = tmp_path / "prof"
    assert gpu_profile.main(["--device", "cpu", "--sweep_only", "--sweep", "maxpool_mask_vjp",
                             "--backbone", "small", "--size", "32", "--batch", "4", "--hidden", "32",
                             "--steps", "2", "--reps", "1", "--warmup", "1", "--torch", "none",
                             "--out", str(out)]) == 0
    res = json.loads((out / "profile.json").read_text())
    row = res["sweep"]["maxpool_mask_vjp"]
    assert row.get("ms_per_step", 0) > 0, row
    assert row["select_and_scatter_ops"] == 0  # the patched pools' gradient is the mask
