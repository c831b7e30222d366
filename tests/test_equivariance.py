import dataclasses

import jax
import numpy as np

from experiments import equivariance
from research.equivariance import shift_errors
from research.models import CNN
from research.train.loop import init_variables


def test_conv_equivariance_and_pooling_invariance_by_definition():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 16, 1))
    model = CNN(channels=(3, 4), num_outputs=2, pool=(2, 2), batch_norm=False,
                padding="CIRCULAR")
    v = init_variables(model, jax.random.PRNGKey(1), x)
    err = shift_errors(model, v, x, [0, 1, 2, 3, 4], pool=2)
    assert np.all(err["conv"] < 1e-6)
    assert np.all(err["pooled"][[0, 2, 4]] < 1e-6) and np.all(err["pooled"][[1, 3]] > 1e-2)
    # two poolings of stride 2: shifting by 4 frames leaves the global mean exactly unchanged
    assert err["embedding"][4] < 1e-6 and err["embedding"][1] > 1e-4
    # zero padding breaks exact equivariance at the borders
    zero = CNN(channels=(3, 4), num_outputs=2, batch_norm=False, padding="SAME")
    assert shift_errors(zero, v, x, [1], pool=2)["conv"][0] > 1e-3


def test_equivariance_experiment_end_to_end(tmp_path):
    cfg = dataclasses.replace(equivariance.PRESETS["tiny"], workdir=str(tmp_path))
    res = equivariance.main(cfg)
    mean, flat = res["global_pool_mean"], res["global_pool_none"]
    assert max(mean["conv"]) < 1e-6
    assert max(mean["embedding"][1:]) < min(flat["embedding"][1:])
    for name in ("equivariance.png", "shift_errors.pdf", "results.json"):
        assert (tmp_path / "equivariance" / name).stat().st_size > 0
