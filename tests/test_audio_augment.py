"""Augmentation: each output checked against a brute-force reconstruction in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.audio import augment as A

# Compiled whole, as training runs them: one compilation per setting where an eager call
# compiles each of its operations.
_freq_mask = jax.jit(A.freq_mask, static_argnums=(2, 3), static_argnames="fill")
_spec_augment = jax.jit(A.spec_augment, static_argnums=(2, 3, 4, 5))
_mixup = jax.jit(A.mixup, static_argnames="alpha")
_time_shift = jax.jit(A.time_shift, static_argnums=2, static_argnames=("axis", "circular"))
_random_gain = jax.jit(A.random_gain, static_argnums=2, static_argnames="domain")


def _spec(b=6, f=12, t=20, c=1):
    return np.random.default_rng(0).normal(size=(b, f, t, c)).astype(np.float32) + 5.0


def _bands(masked_rows: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive True values as (start, length)."""
    runs, start = [], None
    for i, m in enumerate(list(masked_rows) + [False]):
        if m and start is None:
            start = i
        if not m and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


@pytest.mark.parametrize("axis_name", ["freq", "time"])
def test_masks_are_bands_of_fill_and_leave_the_rest_untouched(axis_name):
    x = _spec()
    fn = A.freq_mask if axis_name == "freq" else A.time_mask
    out = np.asarray(jax.jit(fn, static_argnums=(2, 3))(jax.random.key(3), jnp.asarray(x), 4, 1))
    changed = out != x
    for b in range(x.shape[0]):
        if axis_name == "freq":
            rows = changed[b].all(axis=(1, 2))
            assert np.array_equal(changed[b].any(axis=(1, 2)), rows)  # whole rows or nothing
        else:
            rows = changed[b].all(axis=(0, 2))
            assert np.array_equal(changed[b].any(axis=(0, 2)), rows)
        runs = _bands(rows)
        assert len(runs) <= 1 and all(length <= 4 for _, length in runs)
        assert np.all(out[b][changed[b]] == 0.0)
    # Examples draw their own masks: not all identical.
    assert len({tuple(np.flatnonzero(changed[b].any(axis=(1, 2) if axis_name == "freq"
                                                    else (0, 2)))) for b in range(6)}) > 1


def test_mask_widths_cover_zero_to_max_and_positions_cover_the_axis():
    x = np.ones((400, 10, 3, 1), np.float32)
    out = np.asarray(_freq_mask(jax.random.key(0), x, 3, 1, fill=-1.0))
    widths = (out[:, :, 0, 0] == -1.0).sum(axis=1)
    assert set(widths.tolist()) == {0, 1, 2, 3}
    starts = [np.flatnonzero(out[i, :, 0, 0] == -1.0)[0] for i in range(400) if widths[i] == 3]
    assert set(starts) == set(range(0, 8))  # a width-3 band fits at positions 0..7


def test_spec_augment_deterministic_per_key():
    x = jnp.asarray(_spec())
    a = _spec_augment(jax.random.key(1), x, 3, 4, 2, 2)
    b = _spec_augment(jax.random.key(1), x, 3, 4, 2, 2)
    c = _spec_augment(jax.random.key(2), x, 3, 4, 2, 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    masked = np.asarray(a) == 0.0
    # At most 2 frequency bands of 3 rows and 2 time bands of 4 columns.
    full_rows = masked[..., 0].all(axis=2).sum(axis=1)
    full_cols = masked[..., 0].all(axis=1).sum(axis=1)
    assert np.all(full_rows <= 6) and np.all(full_cols <= 8)


def test_mixup_matches_the_formula_for_recovered_pairs():
    b, k = 8, 8
    x = jnp.asarray(np.random.default_rng(1).normal(size=(b, 5, 7, 1)).astype(np.float32))
    y = np.eye(k, dtype=np.float32)[:b]  # one-hot, distinct labels: the partner is identifiable
    xm, ym = _mixup(jax.random.key(0), x, y, alpha=0.4)
    xm, ym, x = np.asarray(xm), np.asarray(ym), np.asarray(x)
    np.testing.assert_allclose(ym.sum(axis=1), 1.0, rtol=1e-6)
    partners = []
    for i in range(b):
        lam = ym[i, i]
        others = [j for j in range(k) if j != i and ym[i, j] > 0]
        j = others[0] if others else i  # lam == 1 or partner == itself
        partners.append(j)
        np.testing.assert_allclose(xm[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)
    assert sorted(partners) == list(range(b))  # the partners form a permutation


@pytest.mark.parametrize("circular", [True, False])
def test_time_shift_is_a_per_example_roll_or_zero_shift(circular):
    x = np.random.default_rng(2).normal(size=(16, 3, 11, 1)).astype(np.float32)
    out = np.asarray(_time_shift(jax.random.key(5), jnp.asarray(x), 3, axis=2,
                                 circular=circular))
    shifts = []
    for b in range(16):
        found = []
        for s in range(-3, 4):
            ref = np.roll(x[b], s, axis=1)
            if not circular:
                if s > 0:
                    ref[:, :s] = 0
                elif s < 0:
                    ref[:, s:] = 0
            if np.array_equal(out[b], ref):
                found.append(s)
        assert len(found) == 1, f"example {b}: no unique shift in [-3, 3]"
        shifts.append(found[0])
    assert len(set(shifts)) > 1


def test_time_shift_on_waveforms():
    x = np.arange(2 * 9, dtype=np.float32).reshape(2, 9)
    out = np.asarray(_time_shift(jax.random.key(0), x, 2, axis=-1))
    for b in range(2):
        assert any(np.array_equal(out[b], np.roll(np.asarray(x[b]), s)) for s in range(-2, 3))


def test_random_gain_wave_and_db():
    x = np.random.default_rng(3).normal(size=(32, 100)).astype(np.float32)
    out = np.asarray(_random_gain(jax.random.key(0), jnp.asarray(x), 6.0))
    ratio_db = 20 * np.log10(np.abs(out) / np.abs(x))
    # One gain per example, within +-6 dB, and not the same for all.
    np.testing.assert_allclose(ratio_db, ratio_db[:, :1] * np.ones((1, 100)), atol=1e-3)
    assert np.all(np.abs(ratio_db) <= 6.0 + 1e-3) and ratio_db[:, 0].std() > 1.0
    out_db = np.asarray(_random_gain(jax.random.key(0), jnp.asarray(x), 6.0, domain="db"))
    np.testing.assert_allclose(out_db - x, ratio_db[:, :1] * np.ones((1, 100)), atol=1e-3)


def test_bad_arguments():
    x = jnp.ones((2, 4, 4, 1))
    with pytest.raises(ValueError, match="alpha"):
        A.mixup(jax.random.key(0), x, jnp.ones((2, 3)), alpha=0.0)
    with pytest.raises(ValueError, match="domain"):
        A.random_gain(jax.random.key(0), x, 3.0, domain="linear")
    with pytest.raises(ValueError, match="batch axis"):
        A.time_shift(jax.random.key(0), x, 1, axis=0)
    with pytest.raises(ValueError, match="max_width"):
        A.freq_mask(jax.random.key(0), x, -1)
