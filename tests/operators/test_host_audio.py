"""Tests for datarax.operators.host_audio.DecodeAudio, on WAV / FLAC / OGG bytes written here with soundfile."""

import io

import numpy as np
import pytest

soundfile = pytest.importorskip("soundfile")

from datarax.operators import DecodeAudio, DecodeAudioConfig  # noqa: E402
from datarax.operators.host_audio import CROPS  # noqa: E402


def _pcm(frequency, count, rate=8000, channels=1):
    """A PCM16 sine of ``frequency`` Hz; channel ``c`` has amplitude ``0.5 / (c + 1)``."""
    t = np.arange(count) / rate
    wave = np.stack([0.5 / (c + 1) * np.sin(2 * np.pi * frequency * t) for c in range(channels)], axis=1)
    return np.round(wave * 32767).astype(np.int16)


def _encode(samples, rate=8000, file_format="WAV", subtype=None):
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=file_format, subtype=subtype)
    return buffer.getvalue()


def _decode(config, data, rng=None, **element):
    return DecodeAudio(config).apply({"audio": data, **element}, rng)


def _peak_frequency(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))]


def test_pcm16_wav_and_flac_decode_exactly_to_float32():
    pcm = _pcm(440, 1000, channels=2)
    for file_format in ("WAV", "FLAC"):  # FLAC is lossless: exact too
        data = _encode(pcm, file_format=file_format, subtype="PCM_16")
        stereo = _decode(DecodeAudioConfig(mono=False), data)["audio"]
        assert stereo.dtype == np.float32 and stereo.shape == (1000, 2)
        assert np.array_equal(stereo, pcm.astype(np.float32) / 32768)
        mono = _decode(DecodeAudioConfig(), data)["audio"]
        assert mono.shape == (1000,)
        assert np.array_equal(mono, (pcm[:, 0].astype(np.float32) + pcm[:, 1]) / 65536)
    one_channel = _decode(DecodeAudioConfig(mono=False), _encode(pcm[:, :1]))["audio"]
    assert one_channel.shape == (1000, 1)  # mono=False keeps a channel axis for any file


def test_float_wav_round_trips_and_other_keys_pass_through():
    wave = np.random.default_rng(0).uniform(-1, 1, 300).astype(np.float32)
    out = _decode(DecodeAudioConfig(), _encode(wave, subtype="FLOAT"), label=np.int32(7))
    assert np.array_equal(out["audio"], wave) and out["label"] == 7 and set(out) == {"audio", "label"}
    as_array = np.frombuffer(_encode(wave, subtype="FLOAT"), np.uint8)  # a 1-D uint8 array is bytes too
    assert np.array_equal(_decode(DecodeAudioConfig(), as_array)["audio"], wave)


def test_lossy_ogg_vorbis_keeps_length_and_frequency():
    wave = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
    samples = _decode(DecodeAudioConfig(), _encode(wave.astype(np.float32), file_format="OGG", subtype="VORBIS"))
    samples = samples["audio"]
    assert samples.dtype == np.float32 and samples.shape == (8000,)
    assert abs(_peak_frequency(samples, 8000) - 440) <= 1  # 1 Hz bins over one second
    # Vorbis is lossy: the decoded wave stays within 0.05 of the written one (measured ~0.01 here).
    assert np.max(np.abs(samples - wave)) < 0.05


def test_mp3_decodes_with_the_bundled_libsndfile():
    data = _encode((0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32), file_format="MP3")
    samples = _decode(DecodeAudioConfig(length=8000), data)["audio"]
    assert samples.shape == (8000,) and abs(_peak_frequency(samples, 8000) - 440) <= 1


def test_resampling_to_the_configured_rate():
    pcm = _pcm(300, 4000, rate=8000)
    data = _encode(pcm, rate=8000)
    up = _decode(DecodeAudioConfig(sampling_rate=16000), data)["audio"]
    assert up.dtype == np.float32 and up.shape == (8000,)
    assert abs(_peak_frequency(up, 16000) - 300) <= 2
    t = np.arange(8000) / 16000
    # Away from the edges the resampled wave is the same sine (soxr HQ, a linear-phase filter).
    assert np.max(np.abs(up[200:-200] - 0.5 * np.sin(2 * np.pi * 300 * t[200:-200]))) < 2e-3
    down = _decode(DecodeAudioConfig(sampling_rate=4000, length_field="n"), data)
    assert down["audio"].shape == (2000,) and int(down["n"]) == 2000
    same = _decode(DecodeAudioConfig(sampling_rate=8000), data)["audio"]
    assert np.array_equal(same, pcm[:, 0] / np.float32(32768))  # the file's own rate: untouched


def test_crop_start_and_center_and_zero_padding():
    pcm = _pcm(500, 11)
    wave = pcm[:, 0].astype(np.float32) / 32768
    data = _encode(pcm)
    start = _decode(DecodeAudioConfig(length=4, length_field="num_samples"), data)
    assert np.array_equal(start["audio"], wave[:4]) and start["num_samples"] == np.int32(11)
    assert start["num_samples"].dtype == np.int32
    center = _decode(DecodeAudioConfig(length=4, crop="center"), data)["audio"]
    assert np.array_equal(center, wave[3:7])  # margin 7: 3 before, 4 after
    padded = _decode(DecodeAudioConfig(length=15, crop="center", length_field="n"), data)
    assert padded["audio"].shape == (15,) and padded["n"] == 11
    assert np.array_equal(padded["audio"][:11], wave) and not padded["audio"][11:].any()
    stereo = _decode(DecodeAudioConfig(length=20, mono=False), _encode(_pcm(500, 11, channels=2)))["audio"]
    assert stereo.shape == (20, 2) and not stereo[11:].any()
    exact = _decode(DecodeAudioConfig(length=11, crop="random"), data, np.random.default_rng(0))["audio"]
    assert np.array_equal(exact, wave)


def test_random_crop_is_a_window_drawn_from_the_record_generator():
    pcm = np.arange(-500, 500, dtype=np.int16)  # every window is told by its first sample
    data = _encode(pcm)
    op = DecodeAudio(DecodeAudioConfig(length=100, crop="random"))
    assert op.stochastic and op.key_name == "decode_audio"
    offsets = []
    for seed in range(20):
        out = op.apply({"audio": data}, np.random.default_rng(seed))["audio"]
        offset = int(round(out[0] * 32768)) + 500
        assert np.array_equal(out, pcm[offset : offset + 100] / np.float32(32768))
        again = op.apply({"audio": data}, np.random.default_rng(seed))["audio"]
        assert np.array_equal(out, again)  # the same generator state, the same crop
        offsets.append(offset)
    assert len(set(offsets)) > 10 and min(offsets) >= 0 and max(offsets) <= 900
    # A record no longer than length draws nothing (it is padded, not cropped).
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    short = op.apply({"audio": _encode(pcm[:60])}, rng)["audio"]
    assert rng.bit_generator.state == before and short.shape == (100,) and not short[60:].any()
    named = DecodeAudio(DecodeAudioConfig(length=100, crop="random"), name="clip")
    assert named.key_name == "clip"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"field": ""}, r"field must be a non-empty string .*got ''"),
        ({"sampling_rate": 0}, r"sampling_rate must be None or a positive int \(a rate in Hz\), got 0"),
        ({"sampling_rate": 16000.0}, r"sampling_rate must be None or a positive int .*got 16000.0"),
        ({"length": -3}, r"length must be None or a positive int \(a number of samples\), got -3"),
        ({"length": True}, r"length must be None or a positive int .*got True"),
        ({"mono": 1}, r"mono must be a bool, got 1"),
        ({"length": 8, "crop": "end"}, r"crop must be one of \['start', 'center', 'random'\], got 'end'"),
        ({"crop": "random"}, r"crop='random' needs length .*got None"),
        ({"length_field": ""}, r"length_field must be None or a non-empty string, got ''"),
        ({"length_field": "audio"}, r"length_field must differ from field, got 'audio'"),
        ({"stochastic": True, "stream_name": "s"}, r"only crop='random' draws.*crop='start'"),
        ({"length": 8, "crop": "random", "stream_name": "s"}, r"stochastic=False\) must not set stream_name"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodeAudioConfig(**kwargs)


def test_config_normalises_and_a_random_crop_keeps_a_given_stream():
    config = DecodeAudioConfig(sampling_rate=np.int64(16000), length=np.int32(5), mono=np.True_)
    assert (type(config.sampling_rate), type(config.length), type(config.mono)) == (int, int, bool)
    config = DecodeAudioConfig(length=8, crop="random", stochastic=True, stream_name="clips")
    assert config.stream_name == "clips"
    assert set(CROPS) == {"start", "center", "random"}


def test_bad_inputs_are_named():
    decode = DecodeAudio(DecodeAudioConfig())
    with pytest.raises(ValueError, match=r"holds 9 bytes that could not be decoded as audio: LibsndfileError"):
        decode.apply({"audio": b"not audio"}, None)
    truncated = _encode(_pcm(440, 100))[:30]
    with pytest.raises(ValueError, match=r"field 'audio' holds 30 bytes that could not be decoded as WAV"):
        decode.apply({"audio": truncated}, None)
    with pytest.raises(ValueError, match=r"could not be decoded as FLAC"):
        decode.apply({"audio": b"fLaC" + bytes(20)}, None)
    with pytest.raises(ValueError, match=r"field 'audio' is not in the element \(keys: \['x'\]\)"):
        decode.apply({"x": b""}, None)
    with pytest.raises(TypeError, match=r"must hold encoded audio bytes .*got ndarray of dtype float32"):
        decode.apply({"audio": np.zeros(4, np.float32)}, None)
    with pytest.raises(TypeError, match=r"got str"):
        decode.apply({"audio": "a.wav"}, None)
    crop = DecodeAudio(DecodeAudioConfig(length=4, crop="random"), name="clip")
    with pytest.raises(ValueError, match=r"DecodeAudio\('clip'\) is stochastic .*Generator, got None"):
        crop.apply({"audio": _encode(_pcm(440, 100))}, None)
    with pytest.raises(TypeError, match="config must be a DecodeAudioConfig"):
        DecodeAudio(object())
