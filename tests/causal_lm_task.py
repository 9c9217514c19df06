"""A test-only task: causal language modelling (next-token loss) on a text column.

It shows what adding a task takes: this one class and its registration
(:func:`fedhello.tasks.register_task`); nothing in the package changes. Its data is
one text per row (``data.text_column``, no label: every row gets label 0 and the
one label name ``text``); its model is the transformers ``AutoModelForCausalLM``
with LoRA and no classification head; its loss is the mean next-token
cross-entropy over the real tokens; its metrics are the next-token accuracy
(``accuracy``, what the records and the best-round selection read) and the
perplexity; its Fisher log-likelihood is each sample's summed next-token
log-probability.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fedhello.data.batching import collate, encode
from fedhello.tasks import Task, check_column

IGNORE = -100  # labels of padding: no loss, no metric

NAME = "causal-lm-test"


class TokenData:
    """A split's token ids (a :class:`fedhello.data.batching.Encoded`), collated with every
    token as its own label (padding ``IGNORE``): the model is asked for the next token."""

    def __init__(self, enc):
        self.enc = enc
        self.labels = enc.labels  # one per row (all 0): partitions and class counts read it
        self.features = enc.features

    def __len__(self) -> int:
        return len(self.enc)

    @property
    def lengths(self) -> np.ndarray:
        return self.enc.lengths

    def collate(self, idx, device="cpu") -> dict[str, torch.Tensor]:
        batch = collate(self.enc, idx, device)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
        return batch


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of positions 0..T-2, their next tokens): position t predicts token t+1."""
    return logits[:, :-1].float(), labels[:, 1:]


class CausalLM(Task):
    """Next-token prediction on one text per row."""

    name = NAME
    auto_class = "AutoModelForCausalLM"
    per_class_head = False
    peft_task_type = "CAUSAL_LM"
    head_modules = ()  # LoRA only: the output layer stays frozen
    formats = ("auto", "csv", "jsonl", "parquet")
    encoding = "tokens"
    row_inputs = "a text"
    metric_names = ("accuracy", "perplexity")  # perplexity is lower-better: the best round is by accuracy

    def check_columns(self, cfg) -> None:
        if cfg.data.text_pair_column or cfg.data.choices_columns:
            raise ValueError(f"config key 'data.text_pair_column': task {self.name} reads one text per row")

    def read_columns(self, ds, cfg, where):
        check_column(ds, cfg.text_column, "text_column", where)
        return {"text": ds[cfg.text_column]}

    def read_labels(self, ds, cfg, where):
        return [0] * len(ds)

    def fixed_label_names(self, cfg):
        return ["text"]

    def make_encoder(self, cfg, backbone):
        tok, ml = backbone.tokenizer, cfg.model.max_length

        def enc(ds, train: bool = False):
            data = encode(tok, ds["text"], ds["label"], ml)
            data.features.pop("token_type_ids", None)  # a decoder takes none
            return TokenData(data)

        return enc

    def loss(self, logits, labels):
        lg, y = _shifted(logits, labels)
        return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1), ignore_index=IGNORE)

    def log_likelihood(self, model, inputs, labels):
        lg, y = _shifted(model(**inputs).logits, labels)
        keep = y != IGNORE
        logp = torch.log_softmax(lg, dim=-1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)
        return (logp * keep).sum(dim=1)

    def batch_outputs(self, logits, labels):
        lg, y = _shifted(logits, labels)
        keep = y != IGNORE
        nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1), ignore_index=IGNORE, reduction="sum")
        correct = ((lg.argmax(-1) == y) & keep).sum()
        return {"nll": np.array([float(nll)]), "correct": np.array([int(correct)]), "tokens": np.array([int(keep.sum())])}

    def metrics(self, outputs, positive_class: int = 1):
        tokens = int(outputs["tokens"].sum())
        if tokens == 0:
            return {"accuracy": math.nan, "perplexity": math.nan}
        return {"accuracy": float(outputs["correct"].sum()) / tokens,
                "perplexity": math.exp(float(outputs["nll"].sum()) / tokens)}
