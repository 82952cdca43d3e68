"""Distances between members: output-space metrics, tensor maps, Table 1 spreads."""

import numpy as np
import pytest

from eos_jax.analysis import divergence
from eos_jax.studies import twins
from eos_jax.training import observers, optim, steps


def test_churn_and_softmax_l2():
    a = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    b = np.array([[0.0, 2.0], [0.0, 1.0], [3.0, 0.0]])
    assert divergence.churn(a, b) == pytest.approx(1 / 3)
    p = np.exp(2) / (1 + np.exp(2))  # softmax of (2, 0)
    expected = np.sqrt(2) * abs(p - (1 - p)) / 3  # only the first example differs
    assert divergence.softmax_l2(a, b) == pytest.approx(expected, rel=1e-12)
    assert divergence.churn(a, a) == 0 and divergence.softmax_l2(a, a) == 0


def test_churn_and_softmax_l2_of_a_single_logit_binary_model():
    a, b = np.array([1.0, -2.0, 3.0]), np.array([-1.0, -2.0, 3.0])  # class 1 iff logit > 0
    assert divergence.churn(a, b) == pytest.approx(1 / 3)
    s = 1 / (1 + np.exp(-1.0))  # P(class 1) at logit 1; at logit -1 it is 1 - s
    expected = np.sqrt(2) * abs(s - (1 - s)) / 3
    assert divergence.softmax_l2(a, b) == pytest.approx(expected, rel=1e-12)


def test_tensor_map_is_output_by_input_channel():
    a = np.zeros((3, 3, 4, 8), np.float32)
    b = a.copy()
    b[:, :, 1, 5] = 9.0
    m = divergence.tensor_map(a, b)
    assert m.shape == (8, 4) and m[5, 1] == 9.0 and np.count_nonzero(m) == 1
    assert divergence.tensor_map(np.zeros(3), np.ones(3)).shape == (1, 3)


def test_state_distance_covers_params_and_momentum_across_dtypes():
    params = {"w": np.array([1.0, 2.0], np.float32)}
    tx = optim.sgd(0.1, momentum=0.9)
    state = steps.TrainState(0, params, {}, tx.init(params))
    other = state.replace(params={"w": np.array([1.0, 3.0], np.float64)})
    d = divergence.state_distance(state, other)
    assert d["params"]["w"]["rel_l1"] == pytest.approx(2 * (1 / 5) / 2)
    assert d["params"]["total"]["frac_differ"] == 0.5
    assert d["momentum"]["total"]["max_abs"] == 0.0
    plain = optim.sgd(0.1)
    assert divergence.momentum(plain.init(params)) is None


def test_table1_spreads_are_population_std():
    acc = np.array([[0.9, 0.8], [0.7, 0.6], [0.5, 0.4]])
    rows, over_seeds = twins.table1.table1_rows(acc, [1, 2, 3], ["k=1", "k=3"])
    assert [r["std over perturbations"] for r in rows] == pytest.approx([0.05] * 3)
    assert over_seeds["k=1"] == pytest.approx(np.std([0.9, 0.7, 0.5]))
    assert observers.final_accuracy(list(range(20))) == 14.5
