"""The CPU peak that MFU divides by is the best GEMM rate ever measured here, never a stale low one."""
import json

from megaspeech.train import metrics
from megaspeech.train.metrics import measure_cpu_peak_tflops


def _key_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGASPEECH_CACHE", str(tmp_path))
    measure_cpu_peak_tflops()
    cache = tmp_path / "cpu_peak.json"
    (key,) = json.loads(cache.read_text())
    return key, cache


def test_a_peak_cached_under_load_is_replaced_by_a_higher_measurement(tmp_path, monkeypatch):
    key, cache = _key_and_cache(tmp_path, monkeypatch)
    cache.write_text(json.dumps({key: 1e-9, "other-cpu": 5.0}))  # measured while the CPU was busy
    peak = measure_cpu_peak_tflops()
    table = json.loads(cache.read_text())
    assert peak > 1e-6 and table[key] == peak
    assert table["other-cpu"] == 5.0


def test_a_higher_cached_peak_is_kept(tmp_path, monkeypatch):
    key, cache = _key_and_cache(tmp_path, monkeypatch)
    cache.write_text(json.dumps({key: 1e6}))
    assert measure_cpu_peak_tflops() == 1e6
    assert json.loads(cache.read_text()) == {key: 1e6}


def test_keys_written_by_another_process_while_measuring_are_kept(tmp_path, monkeypatch):
    key, cache = _key_and_cache(tmp_path, monkeypatch)
    cache.write_text(json.dumps({key: 1e-9}))
    gemm = metrics._gemm_tflops

    def measure_while_another_process_writes(trials):
        cache.write_text(json.dumps({key: 1e-9, "other-threads": 5.0}))  # a concurrent writer
        return gemm(trials)

    monkeypatch.setattr(metrics, "_gemm_tflops", measure_while_another_process_writes)
    peak = measure_cpu_peak_tflops()
    assert json.loads(cache.read_text()) == {key: peak, "other-threads": 5.0}
