"""Real local servers for remote-shard tests (issue #38): nginx for HTTP, moto's standalone server
for S3, and a delaying / faulting proxy. The implementation is benchmarks/net_servers.py, shared with
benchmarks/data_throughput.py (benchmarks may not import tests/); this module re-exports it and adds
pytest fixtures. A missing nginx or moto fails the test (RuntimeError naming the install), never skips.

    with nginx_server(root_dir) as base_url: ...                   # http://127.0.0.1:PORT
    with s3_server() as (endpoint_url, storage_options): ...       # bucket BUCKET exists
        upload_dir(local_dir, f"s3://{BUCKET}/prefix", storage_options)
    with FaultProxy(base_url, delay_s=0.0) as proxy: proxy.url, proxy.storm(3, 503), proxy.truncate(1, 1000),
        proxy.stop(); proxy.start()
"""
from __future__ import annotations

import pytest

from benchmarks.net_servers import BUCKET, FaultProxy, free_port, nginx_server, s3_server, upload_dir

__all__ = ["BUCKET", "FaultProxy", "free_port", "nginx_server", "s3_server", "upload_dir", "s3", "http_root"]


@pytest.fixture(scope="module")
def s3():
    """One moto server per test module: (endpoint_url, storage_options)."""
    with s3_server() as server:
        yield server


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """One nginx per test module serving a fresh directory: (root_dir, base_url)."""
    root = tmp_path_factory.mktemp("www")
    with nginx_server(root) as url:
        yield root, url
