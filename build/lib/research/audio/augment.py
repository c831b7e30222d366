"""Data augmentation as pure JAX functions of a key: SpecAugment masks, mixup, time shift, gain.

Every function draws independent parameters for each example of the batch from the key it is
given, is deterministic for a given key, and can be jitted (widths and counts are static). Use a
fresh key per step, e.g. `jax.random.fold_in(key, step)`, so a resumed run augments the same way.

Spectrograms are `x_BxFxTxC` (frequency as height, time as width); waveforms are `x_BxT`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _band_mask(key: jax.Array, batch: int, size: int, max_width: int,
               num_masks: int) -> jax.Array:
    """mask_BxS: True inside `num_masks` random bands of width 0..max_width per example."""
    if max_width < 0 or num_masks < 0:
        raise ValueError(f"max_width and num_masks must be >= 0, got {max_width}, {num_masks}")
    max_width = min(max_width, size)
    k_width, k_start = jax.random.split(key)
    width_BxM = jax.random.randint(k_width, (batch, num_masks), 0, max_width + 1)
    # Start uniformly among the positions where the whole band fits.
    u_BxM = jax.random.uniform(k_start, (batch, num_masks))
    start_BxM = jnp.floor(u_BxM * (size - width_BxM + 1)).astype(jnp.int32)
    pos_S = jnp.arange(size)
    inside_BxMxS = ((pos_S[None, None, :] >= start_BxM[:, :, None])
                    & (pos_S[None, None, :] < (start_BxM + width_BxM)[:, :, None]))
    return jnp.any(inside_BxMxS, axis=1)


def freq_mask(key: jax.Array, x_BxFxTxC: jax.Array, max_width: int, num_masks: int = 1,
              fill: float = 0.0) -> jax.Array:
    """SpecAugment frequency masking: set random bands of rows (frequencies) to `fill`.

    Args:
        key: PRNG key.
        x_BxFxTxC: spectrograms.
        max_width: largest band width (rows); each band's width is uniform in 0..max_width.
        num_masks: bands per example (they may overlap).
        fill: value written into the bands (0 is the mean of standardised features).

    Returns:
        The masked spectrograms, same shape and dtype.
    """
    b, f = x_BxFxTxC.shape[:2]
    mask_BxF = _band_mask(key, b, f, max_width, num_masks)
    return jnp.where(mask_BxF[:, :, None, None], jnp.asarray(fill, x_BxFxTxC.dtype), x_BxFxTxC)


def time_mask(key: jax.Array, x_BxFxTxC: jax.Array, max_width: int, num_masks: int = 1,
              fill: float = 0.0) -> jax.Array:
    """SpecAugment time masking: set random bands of columns (frames) to `fill`.

    Args:
        key: PRNG key.
        x_BxFxTxC: spectrograms.
        max_width: largest band width (frames).
        num_masks: bands per example.
        fill: value written into the bands.

    Returns:
        The masked spectrograms.
    """
    b, _, t = x_BxFxTxC.shape[:3]
    mask_BxT = _band_mask(key, b, t, max_width, num_masks)
    return jnp.where(mask_BxT[:, None, :, None], jnp.asarray(fill, x_BxFxTxC.dtype), x_BxFxTxC)


def spec_augment(key: jax.Array, x_BxFxTxC: jax.Array, freq_width: int = 8,
                 time_width: int = 10, num_freq_masks: int = 2, num_time_masks: int = 2,
                 fill: float = 0.0) -> jax.Array:
    """SpecAugment (Park et al. 2019) without time warping: frequency then time masks.

    Args:
        key: PRNG key.
        x_BxFxTxC: spectrograms.
        freq_width: largest frequency band.
        time_width: largest time band.
        num_freq_masks: frequency bands per example.
        num_time_masks: time bands per example.
        fill: value written into the bands.

    Returns:
        The augmented spectrograms.
    """
    k_f, k_t = jax.random.split(key)
    x = freq_mask(k_f, x_BxFxTxC, freq_width, num_freq_masks, fill)
    return time_mask(k_t, x, time_width, num_time_masks, fill)


def mixup(key: jax.Array, x: jax.Array, y_BxK: jax.Array,
          alpha: float = 0.2) -> tuple[jax.Array, jax.Array]:
    """Mixup (Zhang et al. 2018): convex combinations of example pairs and of their targets.

    Each example b is mixed with example perm[b] of a random permutation, with its own weight
    lam_b ~ Beta(alpha, alpha): `x_b <- lam_b x_b + (1 - lam_b) x_perm[b]`, same for targets.

    Args:
        key: PRNG key.
        x: inputs, batch first (any shape).
        y_BxK: one-hot (or soft) targets.
        alpha: Beta distribution parameter (> 0).

    Returns:
        (mixed inputs, mixed targets).
    """
    if alpha <= 0:
        raise ValueError(f"mixup: alpha must be > 0, got {alpha}")
    if y_BxK.ndim != 2:
        raise ValueError(f"mixup: targets must be one-hot y_BxK, got shape {y_BxK.shape}")
    k_lam, k_perm = jax.random.split(key)
    b = x.shape[0]
    lam_B = jax.random.beta(k_lam, alpha, alpha, (b,)).astype(x.dtype)
    perm_B = jax.random.permutation(k_perm, b)
    lam_x = lam_B.reshape((b,) + (1,) * (x.ndim - 1))
    x_mix = lam_x * x + (1 - lam_x) * x[perm_B]
    lam_y = lam_B.astype(y_BxK.dtype)[:, None]
    y_mix = lam_y * y_BxK + (1 - lam_y) * y_BxK[perm_B]
    return x_mix, y_mix


def time_shift(key: jax.Array, x: jax.Array, max_shift: int, axis: int = 2,
               circular: bool = True) -> jax.Array:
    """Shift each example along time by a random whole number of steps in [-max_shift, max_shift].

    Args:
        key: PRNG key.
        x: batch, time along `axis` (2 for `x_BxFxTxC`, 1 or -1 for waveforms `x_BxT`).
        max_shift: largest shift in steps (frames or samples).
        axis: time axis.
        circular: roll (what leaves one end enters the other) or shift in zeros.

    Returns:
        The shifted batch.
    """
    if max_shift < 0:
        raise ValueError(f"time_shift: max_shift must be >= 0, got {max_shift}")
    axis = axis % x.ndim
    if axis == 0:
        raise ValueError("time_shift: axis 0 is the batch axis")
    b, t = x.shape[0], x.shape[axis]
    shift_B = jax.random.randint(key, (b,), -max_shift, max_shift + 1)
    # Output position p reads input position p - shift.
    src_BxT = jnp.arange(t)[None, :] - shift_B[:, None]
    valid_BxT = (src_BxT >= 0) & (src_BxT < t)
    src_BxT = jnp.mod(src_BxT, t)
    shape = [1] * x.ndim
    shape[0], shape[axis] = b, t
    out = jnp.take_along_axis(x, src_BxT.reshape(shape), axis=axis)
    if not circular:
        out = jnp.where(valid_BxT.reshape(shape), out, jnp.zeros((), x.dtype))
    return out


def random_gain(key: jax.Array, x: jax.Array, max_db: float, domain: str = "wave") -> jax.Array:
    """Scale each example by a random gain, uniform in [-max_db, max_db] dB.

    Args:
        key: PRNG key.
        x: batch of waveforms (`domain="wave"`: multiply by 10^(g/20)) or of dB spectrograms
            (`domain="db"`: add g; a gain is an offset in dB).
        max_db: largest gain magnitude in dB.
        domain: "wave" or "db".

    Returns:
        The scaled batch.
    """
    if max_db < 0:
        raise ValueError(f"random_gain: max_db must be >= 0, got {max_db}")
    if domain not in ("wave", "db"):
        raise ValueError(f"random_gain: domain must be 'wave' or 'db', got {domain!r}")
    b = x.shape[0]
    gain_B = jax.random.uniform(key, (b,), minval=-max_db, maxval=max_db).astype(x.dtype)
    gain = gain_B.reshape((b,) + (1,) * (x.ndim - 1))
    if domain == "db":
        return x + gain
    return x * jnp.power(jnp.asarray(10.0, x.dtype), gain / 20.0)
