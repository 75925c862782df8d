"""launch/ingest_audio.py's library: formats, resampling, channels, manifests, LibriSpeech trees,
bad files (raise / skip and count), exact resume and job-array workers, ASR pseudo-labels on real
LibriVox speech."""
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from megaspeech.data.shards import open_dataset
from megaspeech.speech import ingest as ing
from megaspeech.speech.asr import wer
from megaspeech.speech.audio import decode_audio
from megaspeech.speech.ingest import IngestConfig, IngestError, ingest
from tests.helpers.speech_data import librivox_items

ROOT = Path(__file__).resolve().parents[2]


def _tone(sr, secs=1.0, hz=1000.0, amp=0.5):
    t = np.arange(int(sr * secs)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _read(out):
    return {k: s for k, s in open_dataset(out, kind="audio")}


def _good_folder(d: Path) -> None:
    """One file per format, rate and channel layout; two with transcripts beside them."""
    d.mkdir(parents=True)
    left = _tone(44100)
    sf.write(d / "stereo44k.wav", np.stack([left, -0.5 * left], 1), 44100)  # mean = 0.25 * tone
    (d / "stereo44k.txt").write_text("a stereo tone\n")
    sf.write(d / "mono8k.flac", _tone(8000, 1.5), 8000)
    sf.write(d / "vorbis22k.ogg", _tone(22050), 22050, format="OGG", subtype="VORBIS")
    sf.write(d / "mp3_48k.mp3", np.stack([_tone(48000)] * 2, 1), 48000, format="MP3")
    (d / "mp3_48k.txt").write_text("an mp3 tone")
    (d / "sub").mkdir()
    sf.write(d / "sub" / "pcm24.wav", _tone(16000, 0.5), 16000, subtype="PCM_24")


def test_formats_rates_and_channels(tmp_path):
    _good_folder(tmp_path / "in")
    r = ingest(IngestConfig(inputs=[str(tmp_path / "in")], out_dir=str(tmp_path / "out")))
    assert r["done"] and r["samples"] == 5 and r["transcripts"] == 2 and sum(r["bad"].values()) == 0
    got = _read(tmp_path / "out")
    assert sorted(got) == ["mono8k", "mp3_48k", "pcm24", "stereo44k", "vorbis22k"]
    orig = {k: (s["orig_sample_rate"], s["orig_channels"]) for k, s in got.items()}
    assert orig == {"stereo44k": (44100, 2), "mono8k": (8000, 1), "vorbis22k": (22050, 1), "mp3_48k": (48000, 2),
                    "pcm24": (16000, 1)}
    assert got["stereo44k"]["transcript"] == "a stereo tone" and got["stereo44k"]["transcript_source"] == "reference"
    assert "transcript" not in got["mono8k"]
    assert all(s["doc"] == f"files/{k}" for k, s in got.items())  # provenance: the recording's id
    for k, s in got.items():
        info = sf.info(io.BytesIO(s["audio.flac"]))
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC"), k
        a = decode_audio(s["audio.flac"])
        assert s["duration"] == pytest.approx(len(a) / 16000)
        # the 1 kHz tone stays at 1 kHz after resampling (FFT peak), at the channel mean's level
        spec = np.abs(np.fft.rfft(a[800:-800]))
        assert abs(np.argmax(spec) * 16000 / (len(a) - 1600) - 1000) < 5, k
    a = decode_audio(got["stereo44k"]["audio.flac"])
    assert len(a) == 16000 and np.abs(a[1000:-1000]).max() == pytest.approx(0.125, abs=0.003)
    assert len(decode_audio(got["mono8k"]["audio.flac"])) == 24000
    want = _tone(16000, 1.5)  # the polyphase-resampled 8 kHz tone matches one made at 16 kHz
    assert np.abs(decode_audio(got["mono8k"]["audio.flac"])[1000:23000] - want[1000:23000]).max() < 2e-3
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())["meta"]
    assert m["hours"] == pytest.approx((1 + 1.5 + 1 + 1 + 0.5) / 3600, rel=1e-3) and m["source"] == "ingest"


def test_manifests_and_librispeech_tree(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    for i in range(3):
        sf.write(d / f"c{i}.wav", _tone(16000, 0.5 + i * 0.1, 300 + 100 * i), 16000)
    (tmp_path / "m.tsv").write_text("path\ttranscript\nclips/c0.wav\tzero words\nclips/c1.wav\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": "clips/c2.wav", "text": "two"}) + "\n\n")
    ls = tmp_path / "LibriSpeech" / "dev" / "19" / "198"
    ls.mkdir(parents=True)
    for u in ("19-198-0000", "19-198-0001"):
        sf.write(ls / f"{u}.flac", _tone(16000, 0.7), 16000)
    sf.write(ls / "19-198-9999.flac", _tone(16000, 0.7), 16000)  # not listed: not ingested
    (ls / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 THE FIRST CHAPTER\n")
    cfg = IngestConfig(inputs=[str(tmp_path / "m.tsv"), str(tmp_path / "m.jsonl"), str(tmp_path / "LibriSpeech")],
                       out_dir=str(tmp_path / "out"))
    ingest(cfg)
    got = _read(tmp_path / "out")
    assert {k: s.get("transcript") for k, s in got.items()} == {
        "c0": "zero words", "c1": None, "c2": "two", "19-198-0000": "NORTHANGER ABBEY",
        "19-198-0001": "THE FIRST CHAPTER"}
    assert len(decode_audio(got["c2"]["audio.flac"])) == 11200
    assert got["c0"]["source"] == f"{tmp_path / 'm.tsv'}:2"


def _bad_folder(d: Path) -> None:
    d.mkdir(parents=True)
    sf.write(d / "good.wav", _tone(16000), 16000)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(200)))
    sf.write(d / "empty.flac", np.zeros(0, np.float32), 16000)  # a 0-byte file
    sf.write(d / "empty.wav", np.zeros(0, np.float32), 16000)  # a header, no samples
    sf.write(d / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(d / "long.flac", _tone(8000, 31.0), 8000)
    sf.write(d / "latin1.wav", _tone(16000), 16000)
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))


def test_bad_files_raise_naming_the_file(tmp_path):
    _bad_folder(tmp_path / "in")
    cfg = IngestConfig(inputs=[str(tmp_path / "in")], out_dir=str(tmp_path / "out"))
    with pytest.raises(IngestError, match=r"corrupt\.wav: cannot decode.*on_error=skip"):
        ingest(cfg)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob("*.tar"))  # the part never looks complete
    for name, pat in [("empty.flac", "0 bytes"), ("empty.wav", "no samples"), ("silent.wav", "silent"),
                      ("long.flac", "31.0 s > ingest.max_"),
                      ("latin1.wav", "latin1.txt: transcript is not UTF-8")]:
        with pytest.raises(IngestError, match=pat):
            ingest(IngestConfig(inputs=[str(tmp_path / "in" / name)], out_dir=str(tmp_path / name)))


def test_bad_files_skipped_and_counted(tmp_path):
    _bad_folder(tmp_path / "in")
    (tmp_path / "m.tsv").write_bytes(b"in/good.wav\tok\nin/gone.wav\tmissing file\nin/good.wav\tna\xefve\n")
    cfg = IngestConfig(inputs=[str(tmp_path / "in"), str(tmp_path / "m.tsv")], out_dir=str(tmp_path / "out"),
                       on_error="skip", files_per_part=3)
    r = ingest(cfg)
    assert r["samples"] == 2 and r["bad"] == {"unreadable": 1, "missing": 1, "empty": 3, "too_long": 1,
                                              "transcript_not_utf8": 2}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["meta"]["bad"] == r["bad"]
    reports = [json.loads(x) for f in sorted((tmp_path / "out").glob("bad_audio.*.jsonl"))
               for x in f.read_text().splitlines()]
    assert sorted(Path(b["source"]).name for b in reports) == sorted(
        ["corrupt.wav", "empty.flac", "empty.wav", "silent.wav", "long.flac", "latin1.wav", "m.tsv:2", "m.tsv:3"])
    got = _read(tmp_path / "out")
    assert sorted(got) == [k for k in sorted(got) if k.startswith("good")] and len(got) == 2  # same stem: hashed keys


def test_resume_and_job_array_workers_give_identical_bytes(tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(7):
        sf.write(d / f"u{i}.wav", _tone(22050, 0.3 + 0.05 * i, 200 + 50 * i), 22050)
    ref = IngestConfig(inputs=[str(d)], out_dir=str(tmp_path / "ref"), files_per_part=2)
    ingest(ref)
    want = json.loads((tmp_path / "ref" / "manifest.json").read_text())

    # a crash in the middle of part 2: parts 0-1 done, part 2 left no shard or manifest
    real, calls = ing.load_entry, {"n": 0}

    def flaky(e, cfg):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(e, cfg)
    monkeypatch.setattr(ing, "load_entry", flaky)
    cfg = IngestConfig(inputs=[str(d)], out_dir=str(tmp_path / "out"), files_per_part=2)
    with pytest.raises(KeyboardInterrupt):
        ingest(cfg)
    monkeypatch.setattr(ing, "load_entry", real)
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*.manifest.json")) == [
        "part-00000.manifest.json", "part-00001.manifest.json"]
    assert not list((tmp_path / "out").glob(".*tmp*")) and not (tmp_path / "out" / "manifest.json").exists()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-0000[01]-*.tar")}
    r = ingest(cfg)
    assert r["skipped_parts"] == 2 and r["parts"] == 4
    assert {p: (tmp_path / "out" / p).stat().st_mtime_ns for p in before} == before  # finished parts untouched
    got = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert got["shards"] == want["shards"]  # same names, sizes, sha256

    # a job array of 2 workers (the command line), then the merge
    out2 = tmp_path / "arr"
    base = [sys.executable, str(ROOT / "launch" / "ingest_audio.py"), "--config", str(ROOT / "configs/ingest_audio.yaml"),
            f"ingest.inputs=[{d}]", f"ingest.out_dir={out2}", "ingest.files_per_part=2"]
    p = subprocess.run(base + ["--worker", "1", "--num_workers", "2"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "manifest pending" in p.stdout, p.stderr
    p = subprocess.run(base + ["--worker", "0", "--num_workers", "2"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "7 utterances" in p.stdout, p.stderr
    assert json.loads((out2 / "manifest.json").read_text())["shards"] == want["shards"]


def test_pseudo_labels_on_real_speech(tmp_path):
    """Files without transcripts get Whisper tiny.en's, marked as ASR output; reference ones are kept."""
    items = librivox_items()[:2]
    d = tmp_path / "in"
    d.mkdir()
    for i, (wav, _) in enumerate(items):
        a, sr = sf.read(wav)
        sf.write(d / f"r{i}.flac", np.stack([a, a], 1), sr)  # stereo flac
    (d / "r1.txt").write_text(items[1][1])
    r = ingest(IngestConfig(inputs=[str(d)], out_dir=str(tmp_path / "out"), pseudo_label=True))
    assert r["pseudo_labels"] == 1 and r["transcripts"] == 2
    got = _read(tmp_path / "out")
    assert got["r0"]["transcript_source"].startswith("asr:whisper-tiny.en")
    assert got["r1"]["transcript_source"] == "reference" and got["r1"]["transcript"] == items[1][1]
    assert wer([items[0][1]], [got["r0"]["transcript"]]) < 15.0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["meta"]["pseudo_label_model"] \
        == got["r0"]["transcript_source"]
