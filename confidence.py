"""How sure the model is, and how far to trust that: calibration temperatures, age ranges, reliability.

    age_probs, p_male = calibrated(age_probs, p_male, card.get("calibration"))   # N x 101, N
    low, high = age_range(age_probs)                                            # central 68%, whole years
    gender_ece(p_male, is_male), range_coverage(*age_range(age_probs, 0.95), true_age)

The card's calibration ({"age_temperature": T_age, "gender_temperature": T_gender}, fitted by
calibrate.py) divides the gender logit and the log age probabilities by a temperature: above 1 the
model becomes less sure of itself, below 1 surer. It is applied to the outputs averaged over a face
and its mirror image (or over a video track's frames), so it never changes which gender is reported
nor the most likely age. predict.py, serve.py, video and evaluate.py all take their figures from here;
numpy is all it needs.
"""
from __future__ import annotations

import numpy as np

AGE_RANGE_MASS = 0.68  # predict's age_range: the central 68% of the age distribution, like +-1 standard deviation
COVERAGE_MASSES = (AGE_RANGE_MASS, 0.95)  # the age ranges whose coverage evaluate.py and calibrate.py report
GENDER_CONFIDENCE_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)  # edges for the ECE of the reported gender


def scale_age(age_probs: np.ndarray, temperature: float) -> np.ndarray:
    """Age distributions (N x bins) with their log probabilities divided by temperature, renormalised."""
    with np.errstate(divide="ignore"):  # a bin of probability 0 stays 0
        scaled = np.log(np.asarray(age_probs, np.float64)) / temperature
    scaled = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return scaled / scaled.sum(axis=-1, keepdims=True)


def scale_gender(p_male: np.ndarray, temperature: float) -> np.ndarray:
    """P(male) with its logit divided by temperature (0 and 1 stay where they are, NaN stays NaN)."""
    p_male = np.asarray(p_male, np.float64)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        logit = np.log(p_male) - np.log1p(-p_male)
        return 1 / (1 + np.exp(-logit / temperature))


def calibrated(age_probs: np.ndarray, p_male: np.ndarray, calibration: dict | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(age distributions N x bins, P(male) N) with the card's calibration applied; unchanged for None
    (a model without calibration runs as it was trained)."""
    if calibration is None:
        return age_probs, p_male
    return (scale_age(age_probs, calibration["age_temperature"]),
            scale_gender(p_male, calibration["gender_temperature"]))


def expected_age(age_probs: np.ndarray) -> np.ndarray:
    """The mean of each age distribution (N x bins, bin i = i years), in years."""
    return np.asarray(age_probs) @ np.arange(np.shape(age_probs)[-1])


def age_range(age_probs: np.ndarray, mass: float = AGE_RANGE_MASS) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) in whole years, both included: the central `mass` of each age distribution (...x bins),
    from the first bin where the cumulative probability reaches (1 - mass) / 2 to the first where it
    reaches (1 + mass) / 2."""
    cumulative = np.cumsum(age_probs, axis=-1)
    low_quantile, high_quantile = round((1 - mass) / 2, 9), round((1 + mass) / 2, 9)  # 0.16, not 0.16000000000000003
    return np.argmax(cumulative >= low_quantile, axis=-1), np.argmax(cumulative >= high_quantile, axis=-1)


def range_coverage(low: np.ndarray, high: np.ndarray, true_age: np.ndarray) -> float:
    """The share of faces whose true age lies in their range low..high (age_range's); NaN for no faces."""
    if not len(true_age):
        return float("nan")
    return float(np.mean((low <= true_age) & (true_age <= high)))


def reliability_bins(p_male: np.ndarray, is_male: np.ndarray) -> list[dict]:
    """Per bin of the reported gender's confidence (GENDER_CONFIDENCE_BINS; the last bin includes 1.0):
    {"low", "high", "n", "confidence" (mean), "accuracy"}; confidence and accuracy are NaN in an empty bin."""
    p_male, is_male = np.asarray(p_male, np.float64), np.asarray(is_male, bool)
    confidence = np.maximum(p_male, 1 - p_male)
    right = (p_male >= 0.5) == is_male
    edges = GENDER_CONFIDENCE_BINS
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, len(edges) - 2)
    bins = []
    for number, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        members = which == number
        count = int(members.sum())
        bins.append({"low": low, "high": high, "n": count,
                     "confidence": float(confidence[members].mean()) if count else float("nan"),
                     "accuracy": float(right[members].mean()) if count else float("nan")})
    return bins


def gender_ece(p_male: np.ndarray, is_male: np.ndarray) -> float:
    """Expected calibration error of the reported gender: the mean over faces of |accuracy - confidence|
    within each confidence bin (reliability_bins); NaN for no faces."""
    bins = [entry for entry in reliability_bins(p_male, is_male) if entry["n"]]
    total = sum(entry["n"] for entry in bins)
    if not total:
        return float("nan")
    return float(sum(entry["n"] * abs(entry["accuracy"] - entry["confidence"]) for entry in bins) / total)
