"""The SmolLM2-135M transformers dir for tests: the library function (megaspeech.model.smollm2), cached."""
from megaspeech.model.smollm2 import default_dir, gguf_file, smollm2_dir

CACHE = default_dir()
__all__ = ["CACHE", "gguf_file", "smollm2_dir"]

if __name__ == "__main__":
    print(smollm2_dir())
