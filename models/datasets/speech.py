"""Synthetic speech-like audio with known speech/silence regions, for voice-activity detection.

No speech recordings ship with the packages we use, and a text-to-speech binary would make the data depend
on what a machine has installed. Source-filter synthesis is enough for a VAD (Silero VAD scores it at
~0.95 in speech and ~0.03 in pauses): a glottal pulse train (Rosenberg-like pulses, drifting pitch between
95 and 230 Hz, jitter) through three vowel formant resonators, syllables with attack/decay envelopes,
fricative bursts of band-passed noise, words separated by short gaps, utterances separated by 0.4-1.5 s
pauses, and a low brown-noise floor everywhere. 16 kHz float32 in [-1, 1]. Labels are per sample: True
inside an utterance (including its short inter-word gaps, as VAD ground truth usually is).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
#: First three formants (Hz) of English vowels (Peterson & Barney averages).
VOWEL_FORMANTS = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (660, 1720, 2410),
    (490, 1350, 1690),
)
FORMANT_BANDWIDTHS = (80, 100, 140)


def _resonator(signal: np.ndarray, frequency: float, bandwidth: float) -> np.ndarray:
    """Second-order all-pole resonator (one formant)."""
    from scipy.signal import lfilter

    radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * frequency / SAMPLE_RATE
    return lfilter([1 - radius], [1, -2 * radius * np.cos(theta), radius * radius], signal)


def _glottal_source(length: int, f0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Derivative of a raised-cosine glottal pulse train following the pitch contour ``f0``."""
    jitter = 1 + 0.01 * rng.standard_normal(length).cumsum() / np.sqrt(length)
    phase = np.cumsum(f0 * jitter / SAMPLE_RATE) % 1.0
    open_quotient = 0.6
    pulse = np.where(phase < open_quotient, 0.5 * (1 - np.cos(np.pi * phase / open_quotient)), 0.0)
    return np.diff(pulse, prepend=0.0)


def _syllable(rng: np.random.Generator, f0: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    length = int(rng.uniform(0.12, 0.26) * SAMPLE_RATE)
    contour = f0 * np.linspace(1.0, rng.uniform(0.85, 1.1), length)
    source = _glottal_source(length, contour, rng)
    formants = VOWEL_FORMANTS[int(rng.integers(len(VOWEL_FORMANTS)))]
    voiced = sum(
        _resonator(source, f * rng.uniform(0.95, 1.05), bw)
        for f, bw in zip(formants, FORMANT_BANDWIDTHS, strict=True)
    )
    ramp = np.arange(length)
    envelope = np.minimum(
        1.0, np.minimum(ramp / (0.02 * SAMPLE_RATE), (length - ramp) / (0.04 * SAMPLE_RATE))
    )
    voiced = voiced * envelope
    parts = []
    if rng.random() < 0.6:  # consonant onset: a fricative burst
        burst = int(rng.uniform(0.03, 0.08) * SAMPLE_RATE)
        low = float(rng.choice([1500, 2500, 4000]))
        sos = butter(4, [low, min(7500.0, 2 * low)], btype="band", fs=SAMPLE_RATE, output="sos")
        parts.append(sosfilt(sos, rng.standard_normal(burst)) * 0.15 * np.hanning(burst))
    parts.append(voiced / (np.abs(voiced).max() + 1e-9))
    return np.concatenate(parts)


def _utterance(rng: np.random.Generator) -> np.ndarray:
    f0 = rng.uniform(95, 230)
    pieces = []
    for _ in range(int(rng.integers(3, 9))):  # words
        pieces.extend(_syllable(rng, f0 * rng.uniform(0.9, 1.15)) for _ in range(int(rng.integers(1, 4))))
        pieces.append(np.zeros(int(rng.uniform(0.03, 0.12) * SAMPLE_RATE)))
    return np.concatenate(pieces) * rng.uniform(0.2, 0.6)


def speech_stream(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``seconds`` of audio and a per-sample speech label, from ``seed``."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    total = int(seconds * SAMPLE_RATE)
    audio, labels = np.zeros(total), np.zeros(total, dtype=bool)
    position = int(rng.uniform(0.3, 1.0) * SAMPLE_RATE)
    while position < total:
        utterance = _utterance(rng)
        length = min(len(utterance), total - position)
        audio[position : position + length] += utterance[:length]
        labels[position : position + length] = True
        position += length + int(rng.uniform(0.4, 1.5) * SAMPLE_RATE)
    audio += lfilter([1.0], [1.0, -0.95], rng.standard_normal(total)) * 0.002
    return np.clip(audio, -1.0, 1.0).astype(np.float32), labels
