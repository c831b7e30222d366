"""Classification metrics as pure functions of predicted and true class ids.

They take numpy or JAX arrays: on JAX arrays (or under jit) they compute with `jax.numpy`, on
host arrays with numpy, so a host-side caller (the training loop, after fetching a split's
predictions) compiles nothing: eagerly, every `jax.numpy` operation is a program of its own
for each new shape (25 in one training run). The confusion matrix has true classes as rows
and predicted classes as columns; balanced accuracy is the mean recall over classes that occur,
macro-F1 the mean F1 over classes that occur in either the truth or the predictions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _xp(*arrays):
    """`jax.numpy` when any argument is a JAX array (a tracer under jit too), else numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def accuracy(pred_B, y_B, mask_B=None):
    """Fraction of correct predictions (weighted by a 0/1 mask when given)."""
    xp = _xp(pred_B, y_B, mask_B)
    correct_B = (xp.asarray(pred_B) == xp.asarray(y_B)).astype(xp.float32)
    if mask_B is None:
        return xp.mean(correct_B)
    mask_B = xp.asarray(mask_B).astype(xp.float32)
    return xp.sum(correct_B * mask_B) / xp.maximum(xp.sum(mask_B), 1.0)


def confusion_matrix(pred_B, y_B, num_classes: int, mask_B=None):
    """Counts `C[true, predicted]`.

    Args:
        pred_B: predicted class ids.
        y_B: true class ids.
        num_classes: number of classes C.
        mask_B: optional 0/1 weights (padding rows get 0).

    Returns:
        confusion_CxC, int32.
    """
    xp = _xp(pred_B, y_B, mask_B)
    y_B, pred_B = xp.asarray(y_B), xp.asarray(pred_B)
    w_B = xp.ones(y_B.shape, xp.int32) if mask_B is None else xp.asarray(mask_B).astype(xp.int32)
    flat_B = y_B.astype(xp.int32) * num_classes + pred_B.astype(xp.int32)
    if xp is np:
        counts = np.bincount(flat_B.ravel(), w_B.ravel(), minlength=num_classes * num_classes)
        return counts.astype(np.int32).reshape(num_classes, num_classes)
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[flat_B].add(w_B)
    return counts.reshape(num_classes, num_classes)


def balanced_accuracy(confusion_CxC):
    """Mean per-class recall over the classes present in the truth."""
    xp = _xp(confusion_CxC)
    confusion_CxC = xp.asarray(confusion_CxC, xp.float32)
    support_C = confusion_CxC.sum(axis=1)
    recall_C = xp.diag(confusion_CxC) / xp.maximum(support_C, 1.0)
    present_C = support_C > 0
    return xp.sum(xp.where(present_C, recall_C, 0.0)) / xp.maximum(present_C.sum(), 1)


def macro_f1(confusion_CxC):
    """Mean F1 over the classes present in the truth or the predictions."""
    xp = _xp(confusion_CxC)
    confusion_CxC = xp.asarray(confusion_CxC, xp.float32)
    tp_C = xp.diag(confusion_CxC)
    true_C = confusion_CxC.sum(axis=1)
    pred_C = confusion_CxC.sum(axis=0)
    f1_C = 2.0 * tp_C / xp.maximum(true_C + pred_C, 1.0)
    present_C = (true_C + pred_C) > 0
    return xp.sum(xp.where(present_C, f1_C, 0.0)) / xp.maximum(present_C.sum(), 1)


def per_class(confusion_CxC) -> dict[str, list[float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix.

    Args:
        confusion_CxC: counts `C[true, predicted]`.

    Returns:
        dict of lists indexed by class: precision, recall, f1, support (0 where undefined).
    """
    conf = np.asarray(confusion_CxC, np.float64)
    tp = np.diag(conf)
    support, predicted = conf.sum(axis=1), conf.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": support.astype(int).tolist()}
