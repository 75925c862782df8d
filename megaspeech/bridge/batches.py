"""Micro-batches for the bridge model (task: bridge): ASR and SALM spoken QA from an `audio` dataset,
plus, for LaSyn dual-modality training, rows whose encoder latents are synthesized from text only.

Row kinds (text = bos + prefix + target + eos; loss on target + eos):
  asr  speech of the utterance, prefix = bridge.asr_prompt, target = its transcript
  qa   speech of the utterance as the context, prefix = a question on what is said (SALM's extractive
       templates + filter of megaspeech/synth/speech_qa.py, from the transcript), target = the answer
  syn  LaSyn latents of a sentence of `bridge.lasyn_text` (no audio), prefix/target as asr
The CTC target of every row is the character units of what its speech (or latents) says.

Order: the dataset's utterances in a seeded permutation per epoch, as one global stream dealt out
round-robin to the data-parallel ranks; `state_dict()` is this rank's position (rows read from each
stream), so a resumed run reads exactly the rows it would have read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from megaspeech.config.bridge import BridgeConfig
from megaspeech.bridge.model import CTC_CHARS, ctc_units, unit_token_ids
from megaspeech.speech.audio import HOP, decode_audio, log_mel


class TextCodec:
    """The LM's text tokenizer: encode(str) -> ids, decode(ids) -> str, bos / eos ids."""

    def __init__(self, encode, decode, bos: int, eos: int):
        self.encode, self.decode, self.bos, self.eos = encode, decode, bos, eos


class CTCUnits:
    """The CTC head's label set (bridge.ctc_units; 0 is the blank):
      chars  the characters of speech_lm.CTC_CHARS (lowercase letters, space, apostrophe)
      lm     the LM's own text tokens (token id + 1): each compressed run then stands for an LM token, and
             bridge.ctc_embed gives the LM its own embedding of it
    encode(transcript) -> labels, decode(greedy frame labels) -> text (runs merged, blanks dropped),
    token_ids: the LM token of each label for bridge.ctc_embed (-1: none)."""

    def __init__(self, kind: str, codec: TextCodec, text_size: int):
        self.kind, self.codec = kind, codec
        if kind == "chars":
            self.size, self.token_ids = len(CTC_CHARS) + 1, unit_token_ids(codec.encode)
        elif kind == "lm":
            self.size, self.token_ids = text_size + 1, [-1, *range(text_size)]
        else:
            raise ValueError(f"bridge.ctc_units={kind!r}: use chars or lm")

    def encode(self, text: str) -> list[int]:
        if self.kind == "chars":
            return ctc_units(text)
        return [i + 1 for i in self.codec.encode(" " + text.strip())]

    def decode(self, frame_labels: list[int]) -> str:
        out, prev = [], 0
        for t in frame_labels:
            if t != prev and t != 0:
                out.append(t - 1)
            prev = t
        if self.kind == "chars":
            return "".join(CTC_CHARS[i] for i in out).strip()
        return self.codec.decode(out).strip()


def ctc_units_for(bridge: BridgeConfig, vocab) -> CTCUnits:
    return CTCUnits(bridge.ctc_units, text_codec(bridge, vocab), vocab.text_size)


def text_codec(bridge: BridgeConfig, vocab) -> TextCodec:
    """bridge.text_tokenizer: an HF tokenizer dir (e.g. SmolLM2's, when the LM comes from it), or ""
    for the project's SentencePiece model (vocab.sp_model) with the vocabulary's bos/eos specials."""
    if bridge.text_tokenizer:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(Path(bridge.text_tokenizer).expanduser()))
        eos = tok.eos_token_id
        bos = tok.bos_token_id if tok.bos_token_id is not None else eos
        if eos is None:
            raise ValueError(f"bridge.text_tokenizer={bridge.text_tokenizer}: the tokenizer has no eos token")
        return TextCodec(lambda s: tok.encode(s, add_special_tokens=False), lambda ids: tok.decode(ids), bos, eos)
    from megaspeech.data.text import TextTokenizer
    tok = TextTokenizer(vocab)
    return TextCodec(lambda s: tok.sp.encode(s), lambda ids: tok.sp.decode([int(i) for i in ids if int(i) < vocab.text_size]),
                     vocab.special("<|bos|>"), vocab.special("<|eos|>"))


def load_utterances(path: str, max_seconds: float) -> tuple[list[bytes], list[str], list[str], int]:
    """(encoded audio, transcripts, keys, skipped) of an `audio` dataset; utterances without a transcript
    or longer than max_seconds are skipped (counted)."""
    from megaspeech.data.shards import Dataset
    from megaspeech.speech.audio_shards import audio_bytes
    ds = Dataset(path, kind="audio")
    audio, texts, keys, skipped = [], [], [], 0
    for key, smp in ds:
        text = (smp.get("transcript") or "").strip()
        if not text or not ctc_units(text) or float(smp.get("duration", 0.0)) > max_seconds:
            skipped += 1
            continue
        audio.append(audio_bytes(smp, f"{path} {key}"))
        texts.append(text)
        keys.append(key)
    if not audio:
        raise ValueError(f"bridge.train={path}: no utterance with a transcript and <= {max_seconds} s "
                         f"(bridge.max_seconds); write one with launch/make_speech_corpus.py")
    return audio, texts, keys, skipped


def text_sentences(spec: str, min_words: int = 6, max_words: int = 24) -> list[str]:
    """Sentences of a text-only corpus for LaSyn rows. `sotu` means the training addresses only (the
    held-out TTS test set of launch/make_speech_corpus.py reads the last addresses)."""
    if spec == "sotu":
        from megaspeech.speech.corpus import CorpusConfig, sotu_sentences
        c = CorpusConfig()
        return [s for _, s in sotu_sentences("train", c.heldout_addresses, min_words, max_words)]
    from megaspeech.data.corpora import iter_corpus
    from megaspeech.synth.speech_qa import sentences
    out = [s for _, doc in iter_corpus(spec) for s in sentences(" ".join(doc.split()))
           if min_words <= len(s.split()) <= max_words]
    if not out:
        raise ValueError(f"bridge.lasyn_text={spec}: no sentence of {min_words}-{max_words} words")
    return out


def text_row(codec: TextCodec, prefix: str, target: str, max_tokens: int) -> tuple[list[int], list[float]]:
    """-> (ids, loss mask) of one row's text: bos + prefix (no loss), then the target's first `max_tokens`
    tokens + eos (loss)."""
    pre = [codec.bos] + list(codec.encode(prefix))
    tgt = list(codec.encode(" " + target.strip()))[:max_tokens] + [codec.eos]
    return pre + tgt, [0.0] * len(pre) + [1.0] * len(tgt)


class BridgeLoader:
    """Iterable of micro-batch dicts (see megaspeech/bridge/model.py BridgeLM.forward):
    feats float32 [B, n_mels, F], feat_lengths int64 [B]; latents [B, T, D], latent_lengths [B] (LaSyn
    rows, else 0); text_ids int64 [B, U], text_lengths [B], loss_mask float32 [B, U]; ctc_targets int64
    [B, C], ctc_lengths [B]; sample_ids int64 [B, 1] (utterance index, -1 - sentence index for syn rows)."""

    def __init__(self, cfg: BridgeConfig, codec: TextCodec, *, micro_batch: int, dp_rank: int, dp_size: int,
                 seed: int, n_mels: int = 80, synthesizer=None, utterances=None, units: CTCUnits | None = None):
        self.cfg, self.codec, self.B, self.seed, self.n_mels = cfg, codec, micro_batch, seed, n_mels
        self.units = units  # the CTC labels of each row (None: characters)
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.audio, self.texts, self.keys, self.skipped = utterances or load_utterances(cfg.train, cfg.max_seconds)
        self.n_syn = int(round(cfg.lasyn_ratio * micro_batch)) if synthesizer is not None else 0
        if cfg.lasyn_ratio > 0 and synthesizer is not None and self.n_syn == 0:
            raise ValueError(f"bridge.lasyn_ratio={cfg.lasyn_ratio} gives no synthesized row in a micro-batch of "
                             f"{micro_batch}; raise it to >= {0.5 / micro_batch:.3f} or the micro-batch")
        self.synth = synthesizer
        self.sentences = text_sentences(cfg.lasyn_text) if self.n_syn else []
        self.pos = self.syn_pos = 0  # rows of each stream this rank has read
        self._mel: dict[int, np.ndarray] = {}
        self._perm: dict[tuple[str, int], np.ndarray] = {}
        self.counts = {"asr": 0, "qa": 0, "syn": 0}

    # ---- resumable position --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"pos": self.pos, "syn_pos": self.syn_pos, "dp_size": self.dp_size, "counts": dict(self.counts)}

    def load_state_dict(self, sd) -> None:
        if isinstance(sd, list) or sd.get("dp_size") != self.dp_size:
            raise ValueError("task: bridge resumes with the data-parallel size it was saved with "
                             "(its loader position is per rank); relaunch with that many ranks")
        self.pos, self.syn_pos, self.counts = int(sd["pos"]), int(sd["syn_pos"]), dict(sd["counts"])

    def stats(self) -> dict:
        return {f"rows_{k}": v for k, v in self.counts.items()} | {"skipped_utterances": self.skipped}

    # ---- streams --------------------------------------------------------------------------------
    def _item(self, stream: str, n: int, k: int) -> int:
        """The k-th item of a stream of n items: epoch k // n in its own seeded permutation."""
        epoch = k // n
        if (stream, epoch) not in self._perm:
            self._perm = {key: v for key, v in self._perm.items() if key[1] >= epoch - 1}
            tag = 0 if stream == "utt" else 1
            self._perm[(stream, epoch)] = np.random.default_rng([self.seed, tag, epoch]).permutation(n)
        return int(self._perm[(stream, epoch)][k % n])

    def mel(self, i: int) -> np.ndarray:
        if i not in self._mel:
            a = decode_audio(self.audio[i], self.keys[i])
            frames = int(np.ceil(a.shape[0] / HOP))
            self._mel[i] = log_mel(a, self.n_mels, self.keys[i], frames=frames + frames % 2).astype(np.float16)
        return self._mel[i]

    def _text_row(self, prefix: str, target: str) -> tuple[list[int], list[float]]:
        return text_row(self.codec, prefix, target, self.cfg.max_text_tokens)

    def _real_row(self, k: int) -> dict:
        i = self._item("utt", len(self.audio), k)
        text = self.texts[i]
        prefix, target, kind = self.cfg.asr_prompt, text, "asr"
        rng = np.random.default_rng([self.seed, 2, k])
        if self.cfg.qa_fraction > 0 and rng.random() < self.cfg.qa_fraction:
            from megaspeech.synth.speech_qa import QAConfig, filter_pair, template_pairs
            qa = QAConfig()
            pairs = [(q, a) for q, a in template_pairs(text, 2, self.seed + k) if filter_pair(text, q, a, qa, set()) is None]
            if pairs:
                (prefix, target), kind = pairs[int(rng.integers(len(pairs)))], "qa"
                prefix = prefix + " Answer:"
        ids, mask = self._text_row(prefix, target)
        return {"mel": self.mel(i), "ids": ids, "mask": mask, "ctc": self._ctc(text), "id": i, "kind": kind}

    def _ctc(self, text: str) -> list[int]:
        return self.units.encode(text) if self.units is not None else ctc_units(text)

    def _syn_row(self, k: int) -> dict:
        j = self._item("txt", len(self.sentences), k)
        text = self.sentences[j]
        ids, mask = self._text_row(self.cfg.asr_prompt, text)
        lat = self.synth.synthesize([ctc_units(text)], seed=self.seed * 1_000_003 + k)[0]  # it reads characters
        return {"latent": lat, "ids": ids, "mask": mask, "ctc": self._ctc(text), "id": -1 - j, "kind": "syn"}

    def next_batch(self) -> dict:
        rows = []
        for _ in range(self.B - self.n_syn):
            rows.append(self._real_row(self.pos * self.dp_size + self.dp_rank))
            self.pos += 1
        for _ in range(self.n_syn):
            rows.append(self._syn_row(self.syn_pos * self.dp_size + self.dp_rank))
            self.syn_pos += 1
        for r in rows:
            self.counts[r["kind"]] += 1
        return collate(rows, self.n_mels, self.synth.dim if self.synth is not None else 0)

    def __iter__(self):
        while True:
            yield self.next_batch()


def collate(rows: list[dict], n_mels: int, latent_dim: int) -> dict:
    B = len(rows)
    F = max([r["mel"].shape[1] for r in rows if "mel" in r] or [2])
    feats = torch.zeros(B, n_mels, F)
    f_len = torch.zeros(B, dtype=torch.long)
    T = max([r["latent"].shape[0] for r in rows if "latent" in r] or [1])
    latents = torch.zeros(B, T, max(latent_dim, 1))
    l_len = torch.zeros(B, dtype=torch.long)
    U = max(len(r["ids"]) for r in rows)
    ids = torch.zeros(B, U, dtype=torch.long)
    mask = torch.zeros(B, U)
    C = max(len(r["ctc"]) for r in rows)
    ctc = torch.zeros(B, C, dtype=torch.long)
    for b, r in enumerate(rows):
        if "mel" in r:
            feats[b, :, :r["mel"].shape[1]] = torch.from_numpy(r["mel"].astype(np.float32))
            f_len[b] = r["mel"].shape[1]
        else:
            latents[b, :r["latent"].shape[0]] = r["latent"]
            l_len[b] = r["latent"].shape[0]
        ids[b, :len(r["ids"])] = torch.tensor(r["ids"])
        mask[b, :len(r["mask"])] = torch.tensor(r["mask"])
        ctc[b, :len(r["ctc"])] = torch.tensor(r["ctc"])
    out = {"feats": feats, "feat_lengths": f_len, "text_ids": ids,
           "text_lengths": torch.tensor([len(r["ids"]) for r in rows]), "loss_mask": mask,
           "ctc_targets": ctc, "ctc_lengths": torch.tensor([len(r["ctc"]) for r in rows]),
           "sample_ids": torch.tensor([[r["id"]] for r in rows])}
    if latent_dim:
        out |= {"latents": latents, "latent_lengths": l_len}
    return out
