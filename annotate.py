"""What one face's result is and how it is drawn: the per-face fields (age, range, gender), box
clipping, and the numbered boxes and labels of annotated pictures.

predict.py (photos), video.py (tracked faces) and serve.py (the web page) all use these; keeping them
here, below all three, lets imports run one way (predict.py -> video.py -> annotate.py).
"""
from __future__ import annotations

import cv2
import numpy as np

from confidence import age_range, expected_age

FONT = cv2.FONT_HERSHEY_SIMPLEX
COLOURS = {"female": (60, 60, 230), "male": (230, 140, 40), "unknown": (130, 130, 130)}  # BGR
GENDER_MARKS = {"female": "F", "male": "M", "unknown": "?"}


def age_gender_fields(age_probs: np.ndarray, p_male: float, gender: str | None = None) -> dict:
    """A face's JSON fields from the model's age distribution (101 probabilities) and P(male). The gender is
    the likelier one unless given (a video track holds its gender until the evidence is clear); its
    confidence is the probability of the gender reported."""
    low, high = (float(bound) for bound in age_range(age_probs))
    gender = gender or ("male" if p_male >= 0.5 else "female")
    confidence = p_male if gender == "male" else 1 - p_male
    return {"age": round(float(expected_age(age_probs)), 1), "age_range": [low, high],
            "gender": gender, "gender_confidence": round(float(confidence), 3), "p_male": round(float(p_male), 4)}


def clipped_box(box: tuple[float, float, float, float], width: int, height: int) -> list[int]:
    """[x, y, w, h] in whole pixels, inside the image."""
    x0, y0 = (min(max(round(v), 0), limit) for v, limit in ((box[0], width), (box[1], height)))
    x1, y1 = (min(max(round(v), 0), limit) for v, limit in ((box[0] + box[2], width), (box[1] + box[3], height)))
    return [x0, y0, x1 - x0, y1 - y0]


def withhold_gender(face: dict, min_gender_confidence: float) -> dict:
    """face with gender "unknown" when its gender_confidence is below min_gender_confidence (0: never);
    gender_confidence and p_male stay, so a reader sees how unsure the model was."""
    return {**face, "gender": "unknown"} if face["gender_confidence"] < min_gender_confidence else face


def rectangles_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def label_layout(image_shape: tuple, faces: list[dict]) -> list[dict]:
    """Where each face's label goes: {"text", "rect": [x, y, w, h], "font_scale", "thickness"} per face.

    Labels are numbered like the table and JSON, sized to their face, kept inside the image and off the
    other faces' boxes and earlier labels: above the box, else below it, else inside its top or bottom
    edge. The age range is added where there is room for it, and only the number where little fits.
    """
    height, width = image_shape[:2]
    boxes = [tuple(face["box"]) for face in faces]
    placed = []
    for number, face in enumerate(faces):
        x, y, w, h = boxes[number]
        others = boxes[:number] + boxes[number + 1:]
        short = f"{face['index']} {GENDER_MARKS[face['gender']]} {face['age']:.0f}"
        long = f"{short} ({face['age_range'][0]:.0f}-{face['age_range'][1]:.0f})"
        font_scale = min(2.5, max(0.45, min(w, h) / 180))
        label = None
        for text in (long, short, str(face["index"])):
            scale = font_scale
            thickness = max(1, round(scale * 1.6))
            (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
            while text_w + 2 * thickness + 4 > width and scale > 0.3:  # shrink to fit a narrow image
                scale *= 0.8
                thickness = max(1, round(scale * 1.6))
                (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
            label_w, label_h = text_w + 2 * thickness + 4, text_h + baseline + 2 * thickness
            left = min(max(x, 0), max(width - label_w, 0))
            for top in (y - label_h, y + h, y, y + h - label_h):
                rect = (left, top, label_w, label_h)
                inside = top >= 0 and top + label_h <= height and label_w <= width
                clear = not any(rectangles_overlap(rect, other) for other in others) and \
                    not any(rectangles_overlap(rect, other["rect"]) for other in placed)
                if inside and clear:
                    label = {"text": text, "rect": list(rect), "font_scale": scale, "thickness": thickness}
                    break
            if label:
                break
        if label is None:  # crowded: the number alone, inside the top of its box and cut to the image
            top = min(max(y, 0), max(height - label_h, 0))
            rect = [left, top, min(label_w, width - left), min(label_h, height - top)]
            label = {"text": text, "rect": rect, "font_scale": scale, "thickness": thickness}
        placed.append(label)
    return placed


def annotate(image: np.ndarray, faces: list[dict]) -> np.ndarray:
    """A copy of image with a numbered box and an "0 F 31 (27-36)" label per face (see label_layout)."""
    annotated = image.copy()
    for face, label in zip(faces, label_layout(image.shape, faces)):
        x, y, w, h = face["box"]
        colour = COLOURS[face["gender"]]
        stroke = max(2, round(min(w, h) / 60))  # visible on small photos, proportionate on large faces
        cv2.rectangle(annotated, (x, y), (x + w - 1, y + h - 1), colour, stroke)
        left, top, label_w, label_h = label["rect"]
        cv2.rectangle(annotated, (left, top), (left + label_w - 1, top + label_h - 1), colour, cv2.FILLED)
        baseline = cv2.getTextSize(label["text"], FONT, label["font_scale"], label["thickness"])[1]
        origin = (left + label["thickness"] + 2, top + label_h - baseline - label["thickness"])
        cv2.putText(annotated, label["text"], origin, FONT, label["font_scale"], (255, 255, 255), label["thickness"],
                    cv2.LINE_AA)
    return annotated
