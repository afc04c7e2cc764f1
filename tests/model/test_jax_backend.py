"""The backend-agnostic model tests again under KERAS_BACKEND=jax, in a subprocess (the backend is
fixed per process): DCCA gradient (custom_gradient signature), running covariance inside fit
(stateless scope), the small model training step (corrfusion, dcca), evaluate vs NumPy, save/load,
integer images scaled in the graph, one backbone pass over both dates, the cross-entropy from
logits, the original's SoftDCCANet; and, in the same process, the checks that need JAX
(tests/jax_only.py: train_cnn.py end to end with the loss guard, the loader's PyDataset, TF_CONFIG
refused)."""

import os
import re
import subprocess
import sys

import pytest

from tests._helpers import xla_flags_without_llvm_opt

pytest.importorskip("jax")
pytestmark = pytest.mark.slow  # the model tests again in a JAX subprocess (minutes)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SELECTED = [
    "tests/model/test_network.py::test_active_backend_is_the_requested_one",
    "tests/model/test_cca.py::test_dcca_gradient_matches_finite_differences",
    "tests/model/test_cca.py::test_dcca_loss_matches_numpy",
    "tests/model/test_cca.py::test_dcca_loss_and_gradient_match_float64_reference",
    "tests/model/test_cca.py::test_dcca_in_the_training_regime_under_mixed_precision",
    "tests/model/test_cca.py::test_canonical_correlation_matches_numpy",
    "tests/model/test_corrfusion.py::test_covariance_updates_inside_fit",
    # corrfusion (running covariance state) and dcca (custom_gradient inside a model)
    "tests/model/test_network.py::test_small_backbone_every_method_forward_and_train_step[corrfusion]",
    "tests/model/test_network.py::test_small_backbone_every_method_forward_and_train_step[dcca]",
    "tests/model/test_network.py::test_save_load_identical_predictions_and_state[corrfusion]",
    "tests/model/test_network.py::test_evaluate_matches_numpy_and_metrics_reset[corrfusion]",
    # uint8 batches scaled in the graph; one backbone pass for both dates (what the GPU runs)
    "tests/model/test_network.py::test_integer_images_scaled_in_the_graph[True-uint8]",
    "tests/model/test_network.py::test_one_backbone_pass_only_without_batch_statistics",
    # issue 22: the cross-entropy from logits (a logit gap of 100: finite, exact loss and gradient),
    # the original SoftDCCANet (zero covariance start, loss on all pairs) training a step
    "tests/model/test_losses.py::test_cross_entropy_from_logits_with_a_gap_of_100",
    "tests/model/test_network.py::test_compute_loss_reads_the_logits",
    "tests/model/test_network.py::test_original_comparators_structure_and_what_the_heads_read[sdcca]",
    "tests/model/test_network.py::test_original_soft_dcca_loss_on_all_pairs",
    # train_cnn.py on JAX: one epoch, the test evaluation, the non-finite loss guard; the loader's
    # PyDataset; TF_CONFIG refused on JAX
    "tests/jax_only.py::test_trains_and_evaluates_on_the_jax_backend",
    "tests/jax_only.py::test_other_backend_gets_pydataset",
    "tests/jax_only.py::test_tf_config_on_jax_exits_2_with_one_line_before_anything_is_written",
    # benchmarks/: a CPU trace classed like the GPU's, the mask max-pool's float64 gradient (last:
    # it switches jax_enable_x64 on and off)
    "tests/jax_only.py::test_step_overhead_runs_tiny",
    "tests/jax_only.py::test_gpu_profile_classes_a_cpu_trace_of_a_convolution_and_its_gradients",
    "tests/jax_only.py::test_mask_gradient_max_pool_matches_jax_after_a_relu",
]


def test_model_tests_pass_under_jax():
    # XLA's LLVM optimisation off (tests._helpers.xla_flags_without_llvm_opt); the same 40 tests
    # pass with and without it, the numbers checked are the same to the tests' tolerances
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=xla_flags_without_llvm_opt())
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *SELECTED],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # every id above was found (pytest exits 4 otherwise) and ran: parametrized ids run several
    # tests, so at least one passed test per id, none skipped or failed
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= len(SELECTED), summary
    assert not re.search(r"failed|skipped|error", summary), summary
