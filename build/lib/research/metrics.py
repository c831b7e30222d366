"""Classification metrics as pure functions of predicted and true class ids.

They take numpy or JAX arrays and run under jit. The confusion matrix has true classes as rows
and predicted classes as columns; balanced accuracy is the mean recall over classes that occur,
macro-F1 the mean F1 over classes that occur in either the truth or the predictions.
"""

from __future__ import annotations

import jax.numpy as jnp


def accuracy(pred_B, y_B, mask_B=None):
    """Fraction of correct predictions (weighted by a 0/1 mask when given)."""
    correct_B = (pred_B == y_B).astype(jnp.float32)
    if mask_B is None:
        return jnp.mean(correct_B)
    mask_B = mask_B.astype(jnp.float32)
    return jnp.sum(correct_B * mask_B) / jnp.maximum(jnp.sum(mask_B), 1.0)


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
    w_B = jnp.ones(y_B.shape, jnp.int32) if mask_B is None else mask_B.astype(jnp.int32)
    flat_B = y_B.astype(jnp.int32) * num_classes + pred_B.astype(jnp.int32)
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[flat_B].add(w_B)
    return counts.reshape(num_classes, num_classes)


def balanced_accuracy(confusion_CxC):
    """Mean per-class recall over the classes present in the truth."""
    confusion_CxC = jnp.asarray(confusion_CxC, jnp.float32)
    support_C = confusion_CxC.sum(axis=1)
    recall_C = jnp.diag(confusion_CxC) / jnp.maximum(support_C, 1.0)
    present_C = support_C > 0
    return jnp.sum(jnp.where(present_C, recall_C, 0.0)) / jnp.maximum(present_C.sum(), 1)


def macro_f1(confusion_CxC):
    """Mean F1 over the classes present in the truth or the predictions."""
    confusion_CxC = jnp.asarray(confusion_CxC, jnp.float32)
    tp_C = jnp.diag(confusion_CxC)
    true_C = confusion_CxC.sum(axis=1)
    pred_C = confusion_CxC.sum(axis=0)
    f1_C = 2.0 * tp_C / jnp.maximum(true_C + pred_C, 1.0)
    present_C = (true_C + pred_C) > 0
    return jnp.sum(jnp.where(present_C, f1_C, 0.0)) / jnp.maximum(present_C.sum(), 1)


def per_class(confusion_CxC) -> dict[str, list[float]]:
    """Precision, recall, F1 and support of each class from a confusion matrix.

    Args:
        confusion_CxC: counts `C[true, predicted]`.

    Returns:
        dict of lists indexed by class: precision, recall, f1, support (0 where undefined).
    """
    import numpy as np

    conf = np.asarray(confusion_CxC, np.float64)
    tp = np.diag(conf)
    support, predicted = conf.sum(axis=1), conf.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": support.astype(int).tolist()}
