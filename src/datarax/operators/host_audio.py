"""``DecodeAudio``: encoded audio bytes to fixed-length float32 samples, one record at a time, on the host.

Audio files vary in length, rate and channel count, so they cannot enter a
fixed-shape device batch as they are. ``DecodeAudio`` runs in the pipeline's
host stage (worker threads or processes) and turns a record's encoded bytes
(what ``HFSource`` reads from an ``Audio`` column, or any ``BytesSpec``
column) into a float32 array of one fixed shape:

1. **decode** with soundfile (libsndfile): WAV, FLAC, OGG (Vorbis, Opus),
   MP3 and the other formats libsndfile tells by their header, to float32
   in ``[-1, 1]`` (integer PCM is divided by its full scale, e.g. 32768 for
   16-bit, so a PCM16 file decodes exactly);
2. **mono** (default): the mean of the channels, an ``(T,)`` array; with
   ``mono=False`` the channels are kept, an ``(T, C)`` array (every record
   must then have the same channel count for the batch to collate);
3. **resample** to ``sampling_rate`` when it is set and a file's rate
   differs, with soxr (libsoxr's "HQ" quality); None keeps each file's rate;
4. **crop or pad** to ``length`` samples when it is set: a longer record is
   cropped (its start, its centre, or at an offset drawn uniformly from the
   record's host generator with ``crop="random"``, so the crop depends only
   on (pipeline seed, key name, epoch, record), never on the worker); a
   shorter one is padded with zeros at its end. Without ``length`` the
   output keeps the record's length, which collates only if every record
   has the same one.

``length_field`` (optional) adds an int32 scalar: the record's length in
samples after resampling and before cropping or padding, so a model can mask
the padding (``min(value, length)`` leading samples are audio).

This is the audio counterpart of ``DecodeImage``: ``HFSource`` never decodes
(Hugging Face's own audio decoding needs torchcodec and FFmpeg); it hands over
the stored bytes, and decoding is per-record host work here.

soundfile (and soxr, imported only when ``sampling_rate`` is set) come with
``pip install 'datarax[audio]'``; neither is imported by ``import datarax``.

Example:
    >>> import io
    >>> import numpy as np
    >>> import soundfile
    >>> buffer = io.BytesIO()
    >>> pcm = np.array([[100, -100], [200, -200], [300, -300]], np.int16)  # 3 stereo frames
    >>> soundfile.write(buffer, pcm, 8000, format="WAV", subtype="PCM_16")
    >>> decode = DecodeAudio(DecodeAudioConfig(length=5, length_field="num_samples"))
    >>> out = decode.apply({"audio": buffer.getvalue()}, None)
    >>> out["audio"].dtype, out["audio"].shape, int(out["num_samples"])
    (dtype('float32'), (5,), 3)
    >>> (out["audio"] * 32768).tolist()  # the channels' mean (0 here), then zeros
    [0.0, 0.0, 0.0, 0.0, 0.0]
    >>> stereo = DecodeAudio(DecodeAudioConfig(mono=False)).apply({"audio": buffer.getvalue()}, None)["audio"]
    >>> (stereo[:, 0] * 32768).tolist()
    [100.0, 200.0, 300.0]
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np

from datarax.core.config import OperatorConfig
from datarax.core.extras import import_extra
from datarax.core.host_operator import HostOperator
from datarax.core.validation import boolean, is_int
from datarax.operators._checks import label, require_config

CROPS = ("start", "center", "random")
_DEFAULT_STREAM = "decode_audio"
_MAGIC = ((b"RIFF", "WAV"), (b"RF64", "WAV"), (b"fLaC", "FLAC"), (b"OggS", "OGG"), (b"ID3", "MP3"))


def _optional_positive_int(name: str, argument: str, value: Any, what: str) -> int | None:
    if value is None:
        return None
    if not is_int(value) or value < 1:
        raise ValueError(f"{name}: {argument} must be None or a positive int ({what}), got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class DecodeAudioConfig(OperatorConfig):
    """Configuration of ``DecodeAudio`` (see the module docstring for the steps).

    Attributes:
        field: The element key holding the encoded bytes (replaced by the samples).
        sampling_rate: None to keep each file's rate, or the rate in Hz every
            record is resampled to (with soxr).
        mono: True (default) for the mean of the channels, an ``(T,)`` array;
            False for every channel, an ``(T, C)`` array.
        length: None to keep each record's length, or the number of samples
            (at the output rate) every record is cropped or zero-padded to.
        crop: Where a record longer than ``length`` is cropped: ``"start"``,
            ``"center"`` (the extra sample of an odd margin is dropped at the
            end) or ``"random"`` (an offset drawn from the record's host
            generator). Anything but ``"start"`` needs ``length``.
        length_field: None, or an element key that receives the record's
            length in samples after resampling, before crop / pad (int32).
        stochastic: True exactly when ``crop="random"``; left at its default,
            it follows ``crop``.
        stream_name: The name a random crop's generators derive from (unless
            the operator has a ``name``); ``"decode_audio"`` when left None
            with ``crop="random"``.

    Raises:
        ValueError: If ``field`` or ``length_field`` is not a non-empty string
            (or ``length_field`` equals ``field``), ``sampling_rate`` or
            ``length`` is not None or a positive int, ``mono`` is not a bool,
            ``crop`` is not one of ``"start"``, ``"center"``, ``"random"`` or
            is not ``"start"`` without ``length``, or ``stochastic`` is True
            without ``crop="random"``.

    Example:
        >>> config = DecodeAudioConfig(sampling_rate=16000, length=16000, crop="random")
        >>> config.stochastic, config.stream_name
        (True, 'decode_audio')
    """

    field: str = "audio"
    sampling_rate: int | None = None
    mono: bool = True
    length: int | None = None
    crop: str = "start"
    length_field: str | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.field, str) or not self.field:
            raise ValueError(f"{name}: field must be a non-empty string (an element key), got {self.field!r}")
        rate = _optional_positive_int(name, "sampling_rate", self.sampling_rate, "a rate in Hz")
        object.__setattr__(self, "sampling_rate", rate)
        object.__setattr__(self, "mono", boolean(name, "mono", self.mono))
        length = _optional_positive_int(name, "length", self.length, "a number of samples")
        object.__setattr__(self, "length", length)
        if not isinstance(self.crop, str) or self.crop not in CROPS:
            raise ValueError(f"{name}: crop must be one of {list(CROPS)}, got {self.crop!r}")
        if self.crop != "start" and length is None:
            raise ValueError(f"{name}: crop={self.crop!r} needs length (the number of samples to crop to), got None")
        if self.length_field is not None and (not isinstance(self.length_field, str) or not self.length_field):
            raise ValueError(f"{name}: length_field must be None or a non-empty string, got {self.length_field!r}")
        if self.length_field == self.field:
            raise ValueError(f"{name}: length_field must differ from field, got {self.length_field!r} for both")
        if self.crop == "random" and self.stochastic is False and self.stream_name is None:
            object.__setattr__(self, "stochastic", True)
            object.__setattr__(self, "stream_name", _DEFAULT_STREAM)
        super().__post_init__()
        if self.stochastic and self.crop != "random":
            raise ValueError(
                f"{name}: only crop='random' draws, so stochastic must be False with crop={self.crop!r}; "
                f"got stochastic=True, stream_name={self.stream_name!r}"
            )
        if self.crop == "random" and not self.stochastic:
            raise ValueError(f"{name}: crop='random' draws an offset per record, so stochastic must be True")


def _format_of(head: bytes) -> str:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "MP3"
    return "audio"


class DecodeAudio(HostOperator):
    """Decodes the encoded audio in ``config.field`` into float32 samples (see the module docstring).

    Args:
        config: A ``DecodeAudioConfig``.
        name: Optional operator name (a random crop's key name when given).

    Raises:
        TypeError: If ``config`` is not a ``DecodeAudioConfig``.
        ImportError: If soundfile (or, with ``sampling_rate``, soxr) is
            missing (``pip install 'datarax[audio]'``).

    Example:
        >>> import io
        >>> import numpy as np
        >>> import soundfile
        >>> buffer = io.BytesIO()
        >>> soundfile.write(buffer, np.arange(10, dtype=np.int16), 16000, format="FLAC")
        >>> crop = DecodeAudio(DecodeAudioConfig(length=4, crop="random"))
        >>> samples = crop.apply({"audio": buffer.getvalue()}, np.random.default_rng(0))["audio"] * 32768
        >>> len(samples), bool(np.all(np.diff(samples) == 1))  # 4 consecutive samples at a drawn offset
        (4, True)
    """

    def __init__(self, config: DecodeAudioConfig, *, name: str | None = None):
        require_config(self, config, DecodeAudioConfig)
        import_extra("soundfile", extra="audio", owner="DecodeAudio")
        if config.sampling_rate is not None:
            import_extra("soxr", extra="audio", owner="DecodeAudio")
        super().__init__(config, name=name)

    def _bytes_of(self, element: dict[str, Any]) -> bytes | bytearray | memoryview:
        field = self.config.field
        if field not in element:
            raise ValueError(f"{label(self)}: field {field!r} is not in the element (keys: {sorted(element)})")
        value = element[field]
        if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 0:
            value = value.item()
        if isinstance(value, bytes | bytearray | memoryview):
            return value
        if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
            return value.tobytes()
        raise TypeError(
            f"{label(self)}: field {field!r} must hold encoded audio bytes (bytes or a 1-D uint8 array), "
            f"got {type(value).__name__}"
            + (f" of dtype {value.dtype} and shape {value.shape}" if isinstance(value, np.ndarray) else "")
        )

    def decode(self, data: bytes | bytearray | memoryview) -> tuple[np.ndarray, int]:
        """Decodes encoded audio bytes, before any mixing, resampling or cropping.

        Args:
            data: The file's bytes.

        Returns:
            ``(samples, rate)``: a ``(frames, channels)`` float32 array and the file's rate in Hz.

        Raises:
            ValueError: If libsndfile cannot decode the bytes (the message
                names the field, the format told by the header and quotes libsndfile).
        """
        import soundfile

        try:
            samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as error:  # libsndfile's errors (and soundfile's own) become one ValueError
            kind = _format_of(bytes(data[:4]))
            raise ValueError(
                f"{label(self)}: field {self.config.field!r} holds {len(data)} bytes that could not be decoded "
                f"as {kind}: {type(error).__name__}: {error}"
            ) from error
        return samples, int(rate)

    def apply(self, element: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """Decodes one record's audio.

        Args:
            element: One record; ``element[config.field]`` holds the encoded
                bytes (``bytes``, ``bytearray``, ``memoryview`` or a 1-D uint8 array).
            rng: The record's generator with ``crop="random"``, else None.

        Returns:
            A new dict: the record with ``config.field`` replaced by the
            float32 samples, ``(length,)`` (mono) or ``(length, channels)``,
            and ``config.length_field`` (if set) holding the int32 length.

        Raises:
            ValueError: If the field is missing, the bytes cannot be decoded,
                or ``crop="random"`` and ``rng`` is not a generator.
            TypeError: If the field does not hold bytes.
        """
        config = self.config
        if config.crop == "random" and not isinstance(rng, np.random.Generator):
            raise ValueError(
                f"{label(self)} is stochastic (crop='random'): apply needs the record's numpy.random.Generator, "
                f"got {rng!r}"
            )
        samples, rate = self.decode(self._bytes_of(element))
        if config.mono:
            samples = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
        if config.sampling_rate is not None and rate != config.sampling_rate:
            import soxr

            samples = soxr.resample(samples, rate, config.sampling_rate, quality="HQ").astype(np.float32, copy=False)
        count = samples.shape[0]
        length = config.length
        if length is not None and count > length:
            if config.crop == "start":
                offset = 0
            elif config.crop == "center":
                offset = (count - length) // 2
            else:
                offset = int(rng.integers(0, count - length + 1))
            samples = samples[offset : offset + length]
        elif length is not None and count < length:
            padded = np.zeros((length, *samples.shape[1:]), np.float32)
            padded[:count] = samples
            samples = padded
        out = {**element, config.field: np.ascontiguousarray(samples, dtype=np.float32)}
        if config.length_field is not None:
            out[config.length_field] = np.int32(count)
        return out


__all__ = ["CROPS", "DecodeAudio", "DecodeAudioConfig"]
