"""Train a LaSyn latent synthesizer (text -> speech-encoder latents) for dual-modality bridge training:
`python launch/train_lasyn.py --config configs/lasyn_tiny.yaml data=DIR out=PATH [synth.kind=diffusion ...]`,
then train the bridge with `bridge.lasyn=PATH bridge.lasyn_ratio=0.25`.
"""
from __future__ import annotations

import sys

from megaspeech.config.cli import parse_args
from megaspeech.bridge.lasyn_training import LaSynTrainConfig, train_lasyn


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_args(LaSynTrainConfig, __doc__, argv)
    print(train_lasyn(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
